"""What the lab is made of, as typed objects and as JSON in the run dir.

`plan.make_plan` builds a LabState describing what to create (no pids yet);
the controller fills in the process ids and writes it to
/run/tracer-lab/state.json once the lab is up. `up`, `down`, `exec` and
`status` read it back with `try_load_state()` (no lab is no error there);
traffic, the access-log reader, the lab tests and bench/lab_env.py with
`load_state()`. The capture engine never reads it: it is given a namespace
(`tracer capture --netns`) like any other.

The JSON is stable for scripts: field names only ever get added, and
`schema` changes if a field changes meaning.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tracer.errors import LabError, UsageError

SCHEMA = 1
RUN_DIR = Path("/run/tracer-lab")
STATE_FILE = "state.json"

# Every lab namespace name starts with this; pods use POD_NETNS_PREFIX.
NETNS_PREFIX = "lab-"
POD_NETNS_PREFIX = "lab-pod-"


@dataclass(frozen=True)
class Bird:
    """One BIRD daemon: where its files are and which process runs it."""

    config: str
    socket: str
    pid_file: str
    log: str
    pid: int | None = None


@dataclass(frozen=True)
class Host:
    """The external client: a plain host on the LAN."""

    name: str  # "client"
    netns: str  # "lab-client"
    ip: str
    lan_port: str  # its bridge port in the ToR namespace
    # Further addresses on eth0 (secondary, same LAN): more client sources.
    extra_ips: tuple[str, ...] = ()
    ip6: str | None = None  # with --ip-family dual (tracer/lab/plan6.py)

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip, *self.extra_ips)


@dataclass(frozen=True)
class Router:
    """The top-of-rack router: owns the LAN bridge, BGP route reflector."""

    name: str  # "tor"
    netns: str  # "lab-tor"
    ip: str
    bridge: str
    bird: Bird
    ip6: str | None = None


@dataclass(frozen=True)
class Node:
    """A Kubernetes worker node: kube-proxy rules, BIRD, pods behind cali*."""

    name: str  # "node-a" (its namespace: "lab-node-a")
    netns: str  # "lab-node-a"
    ip: str
    pod_cidr: str  # the Calico IPAM block this node owns and announces
    lan_port: str
    bird: Bird
    # sha256 of the nat rules as `iptables-save` gives them back once loaded
    # (lets a second `up` tell that the rules are still in place).
    rules_digest: str | None = None
    ip6: str | None = None
    pod_cidr6: str | None = None  # its IPv6 block, announced like pod_cidr


@dataclass(frozen=True)
class Nginx:
    config: str
    pid_file: str
    access_log: str
    error_log: str
    root: str
    pid: int | None = None


@dataclass(frozen=True)
class Dnsmasq:
    """One dnsmasq of a pod (tracer/lab/dnsmasq.py): its UDP port, files and
    process, as nginx's for TCP."""

    port: int
    config: str
    pid_file: str
    query_log: str
    pid: int | None = None


@dataclass(frozen=True)
class Pod:
    name: str  # Kubernetes-like: nginx-demo-1-<10 hex>-<5 chars>
    namespace: str  # the Kubernetes namespace ("default")
    deployment: str
    index: int  # replica index within its Deployment
    node: str  # node name ("node-a")
    ip: str
    netns: str  # "lab-pod-<name>"
    veth: str  # node-side interface, "cali" + 11 hex chars
    ports: tuple[int, ...]  # where nginx listens
    labels: tuple[tuple[str, str], ...]
    nginx: Nginx
    # One dnsmasq per UDP port the pod serves (none for TCP-only pods).
    dns: tuple[Dnsmasq, ...] = ()
    ip6: str | None = None


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    pod: str
    node: str
    # The pod's IPv6 address when the Service is IPv6 in this lab (its IPv6
    # EndpointSlice's address); None otherwise.
    ip6: str | None = None


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int  # resolved to a number
    node_port: int | None = None
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    external_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...]
    # status.loadBalancer.ingress IPs; Calico advertises them to the ToR by
    # BGP (tracer/lab/bird.py), from every node or, under
    # externalTrafficPolicy Local, from the nodes with a local endpoint.
    load_balancer_ips: tuple[str, ...] = ()
    external_policy: str = "Cluster"
    # The families kube-proxy programs this Service in, in this lab
    # (tracer/lab/service_families.py): ("ipv4",) on an IPv4 lab; on a dual
    # lab the Service's ipFamilies. cluster_ip, external_ips and
    # load_balancer_ips are the IPv4 ones (cluster_ip None for an IPv6-only
    # Service), these the IPv6 ones. Older state files: IPv4 only.
    ip_families: tuple[str, ...] = ("ipv4",)
    cluster_ip6: str | None = None
    external_ips6: tuple[str, ...] = ()
    load_balancer_ips6: tuple[str, ...] = ()

    @property
    def node_port(self) -> int | None:
        """The first port's nodePort (the usual single-port case)."""
        return next((p.node_port for p in self.ports if p.node_port), None)

    @property
    def port(self) -> int:
        return self.ports[0].port


@dataclass(frozen=True)
class LabState:
    run_dir: str
    manifest: str
    manifest_sha256: str
    replicas: int | None  # the --replicas override, None = the manifest's own
    lan_cidr: str
    cluster_cidr: str
    asn: int
    pod_gateway: str
    tor: Router
    client: Host
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    services: tuple[Service, ...]
    created: float = 0.0
    schema: int = SCHEMA
    # kube-proxy's mode on every node: "iptables" (nat table) or "nftables"
    # (table ip kube-proxy). Older state files have no field: iptables.
    proxy_mode: str = "iptables"
    # Calico's encapsulation between the nodes: "none" (BGP routes only),
    # "vxlan" or "ipip" (tracer/lab/encap.py). Older state files: none.
    encap: str = "none"
    # "ipv4", or "dual": every host, node and pod also has an IPv6 address,
    # and BGP carries the IPv6 blocks too (tracer/lab/plan6.py).
    ip_family: str = "ipv4"

    # --- lookups -------------------------------------------------------------

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every network namespace of the lab, infrastructure first."""
        return (
            self.tor.netns,
            self.client.netns,
            *(n.netns for n in self.nodes),
            *(p.netns for p in self.pods),
        )

    def node(self, name: str) -> Node:
        """A node by name ("node-a"), short name ("a"), netns ("lab-node-a") or IP."""
        for n in self.nodes:
            if name in (n.name, n.netns, n.ip, *_short_names(n.name)):
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise UsageError(f"no lab node {name!r} (nodes: {known})")

    def pod(self, name: str) -> Pod:
        """A pod by name, netns name or IP."""
        for p in self.pods:
            if name in (p.name, p.netns, p.ip):
                return p
        known = ", ".join(p.name for p in self.pods) or "none"
        raise UsageError(f"no lab pod {name!r} (pods: {known})")

    def pods_on(self, node: str) -> tuple[Pod, ...]:
        n = self.node(node)
        return tuple(p for p in self.pods if p.node == n.name)

    def service(self, name: str) -> Service:
        for s in self.services:
            if name in (s.name, f"{s.namespace}/{s.name}"):
                return s
        known = ", ".join(s.name for s in self.services) or "none"
        raise UsageError(f"no lab service {name!r} (services: {known})")

    def netns_of(self, name: str) -> str:
        """Namespace for a user-given name: client, tor, node-a, a, a pod name,
        or any lab namespace name itself."""
        if name in self.namespaces:
            return name
        if name in (self.client.name, self.client.netns):
            return self.client.netns
        if name in (self.tor.name, self.tor.netns):
            return self.tor.netns
        for n in self.nodes:
            if name in (n.name, *_short_names(n.name)):
                return n.netns
        for p in self.pods:
            if name == p.name:
                return p.netns
        known = ", ".join(
            ["client", "tor", *(n.name for n in self.nodes), *(p.name for p in self.pods)]
        )
        raise UsageError(f"no lab namespace for {name!r} (known: {known})")

    # --- JSON ------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        return _build(cls, data)


def _short_names(node_name: str) -> tuple[str, ...]:
    """"node-a" -> ("a",): what users type besides the name."""
    return (node_name.removeprefix("node-"),)


# Nested dataclass types by (class, field) so from_dict can rebuild the tree
# from plain JSON without a schema library.
_NESTED: dict[tuple[type, str], tuple[type, bool]] = {
    (Router, "bird"): (Bird, False),
    (Node, "bird"): (Bird, False),
    (Pod, "nginx"): (Nginx, False),
    (ServicePort, "endpoints"): (Endpoint, True),
    (Service, "ports"): (ServicePort, True),
    (LabState, "tor"): (Router, False),
    (LabState, "client"): (Host, False),
    (LabState, "nodes"): (Node, True),
    (LabState, "pods"): (Pod, True),
    (Pod, "dns"): (Dnsmasq, True),
    (LabState, "services"): (Service, True),
}


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue  # a newer field absent from an older file: keep its default
        value = data[f.name]
        nested = _NESTED.get((cls, f.name))
        if nested is not None and value is not None:
            sub, many = nested
            value = tuple(_build(sub, v) for v in value) if many else _build(sub, value)
        else:
            value = _tuplify(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def state_path(run_dir: str | os.PathLike[str] = RUN_DIR) -> Path:
    return Path(run_dir) / STATE_FILE


def save_state(state: LabState) -> Path:
    """Write state.json atomically (a reader never sees half a file)."""
    path = state_path(state.run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)
    return path


def try_load_state(run_dir: str | os.PathLike[str] = RUN_DIR) -> LabState | None:
    """The saved state, or None when there is none (or it is unreadable)."""
    path = state_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    try:
        return LabState.from_dict(data)
    except (TypeError, KeyError, ValueError):
        return None


def load_state(run_dir: str | os.PathLike[str] = RUN_DIR) -> LabState:
    """The running lab's state; LabError when the lab is not up."""
    state = try_load_state(run_dir)
    if state is None:
        raise LabError(
            f"the lab is not up (no readable {state_path(run_dir)}): run `tracer lab up`"
        )
    return state


__all__ = [
    "NETNS_PREFIX",
    "POD_NETNS_PREFIX",
    "RUN_DIR",
    "Bird",
    "Endpoint",
    "Host",
    "LabState",
    "Nginx",
    "Node",
    "Pod",
    "Router",
    "Service",
    "ServicePort",
    "load_state",
    "save_state",
    "state_path",
    "try_load_state",
]
