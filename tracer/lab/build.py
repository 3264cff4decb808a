"""Making the lab's pieces from a plan: namespaces and their sysctls, the LAN,
the pods and their Calico-style veths, BIRD, nginx and the kube-proxy rules.

`build_lab` makes a whole lab from nothing (controller.up, when no running
infrastructure can be kept); reconcile.py reuses `add_pods` and `load_rules`
to change a running one. Every step runs inside lab namespaces (netdev.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tracer.lab import bird, build6, dnsmasq, kubeproxy, netdev, nginx, plan
from tracer.lab import encap as lab_encap
from tracer.lab.state import LabState, Node, Pod

# Deterministic namespaces: rp_filter off unless an interface sets it (new
# namespaces copy the host's IPv4 values, whatever they are), and no ICMP
# redirects from routers that forward back out of the interface a packet came
# in on (the LAN is one segment). IPv6 stays as the kernel makes it (link-local
# addresses only), as on a real IPv4 cluster's nodes: the tracer must cope.
_QUIET = {
    "net/ipv4/conf/all/rp_filter": 0,
    "net/ipv4/conf/default/rp_filter": 0,
}
_ROUTER = {
    **_QUIET,
    "net/ipv4/ip_forward": 1,
    "net/ipv4/conf/all/send_redirects": 0,
    "net/ipv4/conf/default/send_redirects": 0,
}

# The ToR's LAN is a bridge; a real ToR switches frames without showing them
# to its IP firewall. br_netfilter (built into some kernels) would pass every
# bridged frame through the ToR's netfilter hooks: off, where it exists.
_NO_BRIDGE_NETFILTER = {
    "net/bridge/bridge-nf-call-iptables": 0,
    "net/bridge/bridge-nf-call-ip6tables": 0,
    "net/bridge/bridge-nf-call-arptables": 0,
}


def _cali_sysctls(veth: str) -> dict[str, int]:
    """What Calico's Felix sets on a pod's host-side interface: answer ARP for
    169.254.1.1 (any address, really) with the node's MAC, at once (the
    default proxy_delay holds the first answer back up to 0.8 s), and strict
    reverse-path filtering."""
    return {
        f"net/ipv4/conf/{veth}/proxy_arp": 1,
        f"net/ipv4/neigh/{veth}/proxy_delay": 0,
        f"net/ipv4/conf/{veth}/rp_filter": 1,
    }


def build_lab(want: LabState, rules: dict[str, str], *, timeout: float) -> tuple[LabState, float]:
    """Build the planned lab from nothing; returns it with its daemons' pids
    and the seconds BGP took to converge."""
    run_dir = Path(want.run_dir)
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    run_dir.chmod(0o755)  # nginx workers (nobody) read the pages under it

    netdev.add_netns([want.tor.netns, want.client.netns, *(n.netns for n in want.nodes)])
    netdev.set_sysctls(want.tor.netns, {**_ROUTER, **build6.namespace_sysctls(want, router=True)})
    netdev.set_sysctls(want.tor.netns, _NO_BRIDGE_NETFILTER, optional=_NO_BRIDGE_NETFILTER)
    netdev.set_sysctls(want.client.netns, {**_QUIET, **build6.namespace_sysctls(want, router=False)})
    for n in want.nodes:
        netdev.set_sysctls(n.netns, {**_ROUTER, **build6.namespace_sysctls(want, router=True)})
    _wire_lan(want)
    build6.wire_lan(want)

    # BIRD first: its sessions come up while the pods and rules are made.
    state = _start_birds(want)
    add_pods(state, state.pods)
    pids = nginx.start_many(state.pods)
    state = replace(state, pods=tuple(with_dns_started(with_nginx_pid(p, pids[p.name]))
                                      for p in state.pods))
    state = load_rules(state, rules, state.nodes)
    if state.encap != "none":
        lab_encap.apply(state)
    bgp_seconds = wait_converged(state, timeout=timeout)
    return state, bgp_seconds


def _start_birds(want: LabState) -> LabState:
    """The ToR's and every node's BIRD, started; the state with their pids."""
    tor_pid = bird.start(
        want.tor.netns, want.tor.bird,
        bird.render_tor_config(want.tor, want.nodes, asn=want.asn, cluster_cidr=want.cluster_cidr),
    )
    nodes = []
    for n in want.nodes:
        pid = bird.start(n.netns, n.bird, node_bird_config(want, n))
        nodes.append(replace(n, bird=replace(n.bird, pid=pid)))
    return replace(
        want, tor=replace(want.tor, bird=replace(want.tor.bird, pid=tor_pid)), nodes=tuple(nodes)
    )


def node_bird_config(s: LabState, n: Node) -> str:
    return bird.render_node_config(n, tor_ip=s.tor.ip, asn=s.asn, cluster_cidr=s.cluster_cidr,
                                   encap=s.encap, service_ips=advertised_ips(s, n), tor=s.tor)


def advertised_ips(s: LabState, n: Node) -> tuple[str, ...]:
    """The load-balancer IPs node n advertises, as Calico does: every
    Service's from every node, but under externalTrafficPolicy Local only
    from the nodes that run one of its endpoints (so the ToR never sends
    such traffic to a node that would drop it)."""
    ips: list[str] = []
    for svc in s.services:
        if svc.external_policy == "Local" and not any(
            e.node == n.name for p in svc.ports for e in p.endpoints
        ):
            continue
        ips += [ip for ip in svc.load_balancer_ips if ip not in ips]
    return tuple(ips)


def wait_converged(s: LabState, *, timeout: float) -> float:
    """bird.wait_converged for the lab: pod blocks and advertised Service IPs."""
    routes = {(f"{ip}/32", n.ip) for n in s.nodes for ip in advertised_ips(s, n)}
    return bird.wait_converged(s.tor, s.nodes, timeout=timeout, encap=s.encap,
                               service_routes=routes)


def _wire_lan(s: LabState) -> None:
    """The LAN: a bridge in the ToR namespace, one veth per host on it (eth0
    on the host's side, created straight into the host's namespace)."""
    hosts = [(s.client.netns, s.client.ip, s.client.lan_port)]
    hosts += [(n.netns, n.ip, n.lan_port) for n in s.nodes]
    lines = [
        "link set lo up",
        f"link add {s.tor.bridge} type bridge",
        f"addr add {s.tor.ip}/{plan.LAN_PREFIXLEN} dev {s.tor.bridge}",
        f"link set {s.tor.bridge} up",
    ]
    for netns, _, port in hosts:
        lines += [
            f"link add {port} type veth peer name eth0 netns {netns}",
            f"link set {port} master {s.tor.bridge}",
            f"link set {port} up",
        ]
    netdev.ip_batch(s.tor.netns, lines)
    for netns, ip, _ in hosts:
        netdev.ip_batch(netns, [
            "link set lo up",
            f"addr add {ip}/{plan.LAN_PREFIXLEN} dev eth0",
            "link set eth0 up",
            # Nodes need this for more than leaving the LAN: proxy ARP on
            # cali* answers for 169.254.1.1 only if the node has a route to
            # it through another interface, as a real node's default route.
            f"route add default via {s.tor.ip} dev eth0",
        ])
    netdev.ip_batch(s.client.netns, [
        f"addr add {ip}/{plan.LAN_PREFIXLEN} dev eth0" for ip in s.client.extra_ips
    ])


def add_pods(s: LabState, pods: Sequence[Pod]) -> None:
    """Pod namespaces, their Calico-style veths, addresses and routes, and
    the MTU Calico's CNI plugin gives them (the tunnel's, with encapsulation)."""
    if not pods:
        return
    mtu = lab_encap.mtu(s.encap)
    set_mtu = mtu != lab_encap.HOST_MTU
    netdev.add_netns([p.netns for p in pods])
    for p in pods:
        netdev.set_sysctls(p.netns, {**_QUIET, **build6.namespace_sysctls(s, router=False)})
    for node in s.nodes:
        mine = [p for p in pods if p.node == node.name]
        if not mine:
            continue
        lines = []
        for p in mine:
            lines += [
                f"link add {p.veth} address {plan.CALICO_MAC} type veth "
                f"peer name eth0 netns {p.netns}",
                *([f"link set {p.veth} mtu {mtu}"] if set_mtu else []),
                f"link set {p.veth} up",
                f"route add {p.ip}/32 dev {p.veth} scope link",
            ]
        netdev.ip_batch(node.netns, lines + build6.node_pod_routes(s, mine))
        sysctls: dict[str, int] = {}
        for p in mine:
            sysctls.update(_cali_sysctls(p.veth))
        netdev.set_sysctls(node.netns, sysctls)
    for p in pods:
        netdev.ip_batch(p.netns, [
            "link set lo up",
            f"addr add {p.ip}/32 dev eth0",
            *([f"link set eth0 mtu {mtu}"] if set_mtu else []),
            "link set eth0 up",
            f"route add {s.pod_gateway} dev eth0 scope link",
            f"route add default via {s.pod_gateway} dev eth0",
            *build6.pod_lines(s, p),
        ])


def with_nginx_pid(p: Pod, pid: int | None) -> Pod:
    return replace(p, nginx=replace(p.nginx, pid=pid))


def with_dns_started(p: Pod) -> Pod:
    """The pod with a dnsmasq started for each of its UDP ports (their pids)."""
    return replace(p, dns=tuple(
        replace(f, pid=dnsmasq.start(netns=p.netns, pod=p.name, ip=p.ip, node=p.node, files=f))
        for f in p.dns))


def without_pids(p: Pod) -> Pod:
    """The pod as a plan describes it (no process ids)."""
    return replace(with_nginx_pid(p, None), dns=tuple(replace(f, pid=None) for f in p.dns))


def load_rules(s: LabState, rules: dict[str, str], nodes: Sequence[Node]) -> LabState:
    """Load the rendered kube-proxy rules on `nodes`; the state with their digests."""
    reload = {n.name for n in nodes}
    new_nodes = tuple(
        replace(n, rules_digest=kubeproxy.load(s, n, rules[n.name])) if n.name in reload else n
        for n in s.nodes
    )
    return replace(s, nodes=new_nodes)
