"""Pure planning: manifest + replica override -> the LabState to build.

No I/O here (beyond hashing strings): the fixed topology of the seed article,
Kubernetes-like pod names, Calico-like interface names and per-node address
blocks, where every file of every daemon goes, and which pod backs which
service port.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tracer.errors import ManifestError, UsageError
from tracer.kube.model import Deployment, Manifest
from tracer.kube.model import Service as KubeService
from tracer.kube.proxy_plan import of_family
from tracer.lab import plan6
from tracer.lab.dnsmasq import files as dnsmasq_files
from tracer.lab.service_families import lab_families
from tracer.lab.state import (
    POD_NETNS_PREFIX,
    RUN_DIR,
    Bird,
    Endpoint,
    Host,
    LabState,
    Nginx,
    Node,
    Pod,
    Router,
    Service,
    ServicePort,
)

DEFAULT_MANIFEST = Path(__file__).parent / "manifests" / "nginx-demo.yaml"

# The seed article's addresses: a /24 LAN behind a top-of-rack router, node A
# is 192.168.64.57 (also the Service's external IP), the pod 10.217.120.72.
LAN_CIDR = "192.168.64.0/24"
LAN_PREFIXLEN = 24
TOR_IP = "192.168.64.1"
CLIENT_IP = "192.168.64.10"
# The client's further addresses (.11-.24): session affinity and
# loadBalancerSourceRanges act per client address, so "several clients" are
# several source addresses on the one client host (`lab traffic --clients`).
CLIENT_EXTRA_IPS = tuple(f"192.168.64.{i}" for i in range(11, 25))
CLUSTER_CIDR = "10.217.0.0/16"
ASN = 64512  # Calico's default AS number
POD_GATEWAY = "169.254.1.1"  # what every Calico pod routes to
CALICO_MAC = "ee:ee:ee:ee:ee:ee"  # Calico's host-side veth MAC
BRIDGE = "br-lan"
# kube-proxy's --proxy-mode values the lab renders (tracer/lab/kubeproxy.py).
PROXY_MODES = ("iptables", "nftables")
# Calico's encapsulation between nodes (tracer/lab/encap.py): none (BGP only,
# the seed), vxlan (IPPool vxlanMode: Always), ipip (ipipMode: Always).
ENCAP_MODES = ("none", "vxlan", "ipip")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: str
    pod_cidr: str


# Node names; each node's namespace is "lab-" + its name.
NODE_SPECS = (
    NodeSpec("node-a", "192.168.64.57", "10.217.120.64/26"),
    NodeSpec("node-b", "192.168.64.58", "10.217.121.0/26"),
)

# Pods get addresses from offset 8 of their node's block, so replica 0 on
# node A is 10.217.120.72, the pod IP of the seed article.
FIRST_POD_OFFSET = 8

# Kubernetes' rand.SafeEncodeString alphabet (no vowels, no 0/1/3): what the
# 5-character suffix of a ReplicaSet's pod names is drawn from.
K8S_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def netns_name(short: str) -> str:
    return f"lab-{short}"


def pod_netns(pod_name: str) -> str:
    return f"{POD_NETNS_PREFIX}{pod_name}"


def lan_port(name: str) -> str:
    """The ToR-side bridge port of a host on the LAN ("lan-node-a")."""
    return f"lan-{name.removeprefix('lab-')}"[:15]


def template_hash(namespace: str, deployment: str) -> str:
    """Stand-in for the pod-template-hash: the same for every replica of a
    Deployment, as in Kubernetes. Here: 10 hex chars of a sha256."""
    return hashlib.sha256(f"{namespace}/{deployment}".encode()).hexdigest()[:10]


def pod_suffix(namespace: str, deployment: str, index: int, salt: int = 0) -> str:
    digest = hashlib.sha256(f"{namespace}/{deployment}/{index}/{salt}".encode()).digest()
    return "".join(K8S_SUFFIX_ALPHABET[b % len(K8S_SUFFIX_ALPHABET)] for b in digest[:5])


def pod_name(namespace: str, deployment: str, index: int, salt: int = 0) -> str:
    """Deterministic Kubernetes-like pod name: <deploy>-<10 hex>-<5 chars>."""
    return (
        f"{deployment}-{template_hash(namespace, deployment)}-"
        f"{pod_suffix(namespace, deployment, index, salt)}"
    )


def veth_name(namespace: str, pod: str) -> str:
    """Calico's host-side interface name: "cali" + sha1("<ns>.<pod>")[:11]."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def block_capacity(cidr: str) -> int:
    """How many pods fit in a node's block from FIRST_POD_OFFSET on (the
    broadcast address of the block is left out)."""
    return ipaddress.ip_network(cidr).num_addresses - FIRST_POD_OFFSET - 1


def pod_ip(cidr: str, slot: int) -> str:
    """The address of the slot-th pod (0-based) on a node with block cidr."""
    if not 0 <= slot < block_capacity(cidr):
        raise UsageError(
            f"node block {cidr} has room for {block_capacity(cidr)} pods, asked for {slot + 1}"
        )
    net = ipaddress.ip_network(cidr)
    return str(net.network_address + FIRST_POD_OFFSET + slot)


def bird_files(run_dir: Path, name: str) -> Bird:
    d = run_dir / "bird"
    return Bird(
        config=str(d / f"{name}.conf"),
        socket=str(d / f"{name}.ctl"),
        pid_file=str(d / f"{name}.pid"),
        log=str(d / f"{name}.log"),
    )


def nginx_files(run_dir: Path, pod: str) -> Nginx:
    d = run_dir / "pods" / pod
    return Nginx(
        config=str(d / "nginx.conf"),
        pid_file=str(d / "nginx.pid"),
        access_log=str(d / "access.log"),
        error_log=str(d / "error.log"),
        root=str(d / "html"),
    )


def resolve_target_port(
    service: KubeService, port_target: int | str, deployment: Deployment
) -> int:
    """A Service's targetPort as a number: numbers as they are, names looked
    up among the Deployment's named container ports."""
    if isinstance(port_target, int):
        return port_target
    named = dict(deployment.named_ports)
    if port_target in named:
        return named[port_target]
    if port_target.isdigit():
        return int(port_target)
    raise ManifestError(
        f"{service.full_name}: targetPort {port_target!r} names no containerPort of "
        f"Deployment {deployment.namespace}/{deployment.name}"
    )


def check_modes(proxy_mode: str, encap: str) -> None:
    """UsageError unless proxy_mode is one of PROXY_MODES and encap one of ENCAP_MODES."""
    if proxy_mode not in PROXY_MODES:
        raise UsageError(f"--proxy-mode must be one of {', '.join(PROXY_MODES)}, not {proxy_mode!r}")
    if encap not in ENCAP_MODES:
        raise UsageError(f"--encap must be one of {', '.join(ENCAP_MODES)}, not {encap!r}")


def make_plan(
    manifest: Manifest,
    *,
    replicas: int | None = None,
    run_dir: str | Path = RUN_DIR,
    manifest_path: str = "",
    manifest_sha256: str = "",
    proxy_mode: str = "iptables",
    encap: str = "none",
    ip_family: str = "ipv4",
) -> LabState:
    """Everything to build, with no process ids yet.

    Replica i of every Deployment goes to node i % 2 (round-robin, replica 0
    on node A); each node hands out addresses sequentially from its block.
    `replicas` overrides every Deployment's replica count.
    """
    if replicas is not None and replicas < 0:
        raise UsageError(f"--replicas must be >= 0, got {replicas}")
    check_modes(proxy_mode, encap)
    plan6.check_family(ip_family, encap)
    run_dir = Path(run_dir)

    nodes = _nodes(run_dir)
    tor = Router(name="tor", netns=netns_name("tor"), ip=TOR_IP, bridge=BRIDGE,
                 bird=bird_files(run_dir, "tor"))
    client = Host(name="client", netns=netns_name("client"), ip=CLIENT_IP,
                  lan_port=lan_port("client"), extra_ips=CLIENT_EXTRA_IPS)
    pods = _pods(manifest, nodes, replicas, run_dir)
    state = LabState(
        run_dir=str(run_dir),
        manifest=manifest_path or manifest.source,
        manifest_sha256=manifest_sha256,
        replicas=replicas,
        lan_cidr=LAN_CIDR,
        cluster_cidr=CLUSTER_CIDR,
        asn=ASN,
        pod_gateway=POD_GATEWAY,
        tor=tor,
        client=client,
        nodes=nodes,
        pods=tuple(pods),
        services=(),
        created=time.time(),
        proxy_mode=proxy_mode,
        encap=encap,
    )
    if ip_family == "dual":
        state = with_ipv6(state)
    # After with_ipv6: a Service's IPv6 endpoints are its pods' IPv6 twins.
    return replace(state, services=tuple(
        _service(manifest, svc, state.pods, ip_family) for svc in manifest.services))


def with_ipv6(s: LabState) -> LabState:
    """The plan with every host, node and pod given its IPv6 twin address."""
    cidr = {n.name: n.pod_cidr for n in s.nodes}
    return replace(
        s, ip_family="dual",
        tor=replace(s.tor, ip6=plan6.lan6(s.tor.ip)),
        client=replace(s.client, ip6=plan6.lan6(s.client.ip)),
        nodes=tuple(replace(n, ip6=plan6.lan6(n.ip), pod_cidr6=plan6.block6(n.pod_cidr))
                    for n in s.nodes),
        pods=tuple(replace(p, ip6=plan6.pod_ip6(p.ip, cidr[p.node])) for p in s.pods),
    )


def _nodes(run_dir: Path) -> tuple[Node, ...]:
    return tuple(
        Node(
            name=spec.name,
            netns=netns_name(spec.name),
            ip=spec.ip,
            pod_cidr=spec.pod_cidr,
            lan_port=lan_port(spec.name),
            bird=bird_files(run_dir, spec.name),
        )
        for spec in NODE_SPECS
    )


def _listen_ports(manifest: Manifest, protocol: str = "TCP") -> dict[tuple[str, str], set[int]]:
    """Ports a Deployment's pods must serve over protocol (TCP: nginx, UDP:
    dnsmasq): its container ports of that protocol and every resolved
    targetPort of the Services' ports of that protocol that select it."""
    listen: dict[tuple[str, str], set[int]] = {
        (d.namespace, d.name): set(d.container_ports if protocol == "TCP" else d.udp_ports)
        for d in manifest.deployments
    }
    for svc in manifest.services:
        for d in manifest.backing_deployments(svc):
            for sp in svc.ports:
                if sp.protocol == protocol:
                    listen[(d.namespace, d.name)].add(resolve_target_port(svc, sp.target_port, d))
    return listen


def _udp_ports(manifest: Manifest, tcp: dict[tuple[str, str], set[int]]
               ) -> dict[tuple[str, str], tuple[int, ...]]:
    """UDP ports per Deployment, checked: dnsmasq also listens on TCP at its
    port, so a port cannot be both nginx's and dnsmasq's."""
    udp = _listen_ports(manifest, "UDP")
    for key, ports in udp.items():
        both = ports & (tcp[key] or {80})
        if both:
            raise ManifestError(
                f"Deployment {key[0]}/{key[1]}: port {min(both)} is served over TCP (nginx) and "
                "UDP (dnsmasq, which listens on TCP too); the lab cannot render both")
    return {key: tuple(sorted(ports)) for key, ports in udp.items()}


def _pods(
    manifest: Manifest, nodes: tuple[Node, ...], replicas: int | None, run_dir: Path
) -> list[Pod]:
    """Every replica of every Deployment, round-robin over the nodes."""
    listen = _listen_ports(manifest)
    udp = _udp_ports(manifest, listen)
    pods: list[Pod] = []
    used_slots = {n.name: 0 for n in nodes}
    names: set[str] = set()
    for d in manifest.deployments:
        count = d.replicas if replicas is None else replicas
        ports = tuple(sorted(listen[(d.namespace, d.name)] or {80}))
        for i in range(count):
            node = nodes[i % len(nodes)]
            ip = pod_ip(node.pod_cidr, used_slots[node.name])
            used_slots[node.name] += 1
            salt = 0
            name = pod_name(d.namespace, d.name, i)
            while name in names:  # a 1-in-14-million suffix clash: draw again
                salt += 1
                name = pod_name(d.namespace, d.name, i, salt)
            names.add(name)
            pods.append(
                Pod(
                    name=name,
                    namespace=d.namespace,
                    deployment=d.name,
                    index=i,
                    node=node.name,
                    ip=ip,
                    netns=pod_netns(name),
                    veth=veth_name(d.namespace, name),
                    ports=ports,
                    labels=d.pod_labels,
                    nginx=nginx_files(run_dir, name),
                    dns=tuple(dnsmasq_files(run_dir / "pods" / name, port)
                              for port in udp[(d.namespace, d.name)]),
                )
            )
    return pods


def _service(
    manifest: Manifest, svc: KubeService, pods: tuple[Pod, ...], ip_family: str
) -> Service:
    families = lab_families(svc, ip_family)
    ipv6 = "ipv6" in families
    backing = {(d.namespace, d.name): d for d in manifest.backing_deployments(svc)}
    ports = []
    for sp in svc.ports:
        endpoints = []
        target = sp.target_port if isinstance(sp.target_port, int) else 0
        for p in pods:
            d = backing.get((p.namespace, p.deployment))
            if d is None:
                continue
            target = resolve_target_port(svc, sp.target_port, d)
            endpoints.append(Endpoint(ip=p.ip, port=target, pod=p.name, node=p.node,
                                      ip6=p.ip6 if ipv6 else None))
        ports.append(
            ServicePort(
                name=sp.name,
                protocol=sp.protocol,
                port=sp.port,
                target_port=target,
                node_port=sp.node_port,
                endpoints=tuple(endpoints),
            )
        )
    return Service(
        namespace=svc.namespace,
        name=svc.name,
        type=svc.type,
        cluster_ip=svc.cluster_ip_for("ipv4") if "ipv4" in families else None,
        external_ips=tuple(of_family(svc.external_ips, "ipv4")),
        ports=tuple(ports),
        selector=tuple(svc.selector),
        load_balancer_ips=tuple(of_family(svc.load_balancer_ips, "ipv4")),
        external_policy=svc.external_traffic_policy,
        ip_families=families,
        cluster_ip6=svc.cluster_ip_for("ipv6") if ipv6 else None,
        external_ips6=tuple(of_family(svc.external_ips, "ipv6")) if ipv6 else (),
        load_balancer_ips6=tuple(of_family(svc.load_balancer_ips, "ipv6")) if ipv6 else (),
    )

