"""`tracer lab status`: what the lab runs right now, checked live (namespaces,
daemons, BGP sessions and learned routes), next to what state.json says.

`to_dict()` is the stable JSON for scripts: keys are only ever added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tracer.errors import LabError
from tracer.lab import bird, dnsmasq, encap, netdev, procs
from tracer.lab.state import Bird, LabState, try_load_state
from tracer.system import require_root


@dataclass(frozen=True)
class Session:
    name: str
    state: str  # BIRD's protocol state: up / start / down
    info: str  # Established, Active, Connect, ... (plus BIRD's last error)
    since: str
    established: bool


@dataclass(frozen=True)
class Route:
    dst: str
    type: str  # unicast, or blackhole for the node's own block
    via: str | None
    dev: str | None
    proto: str | None


@dataclass(frozen=True)
class RouterStatus:
    name: str
    netns: str
    ip: str
    pod_cidr: str | None  # None for the ToR
    netns_present: bool
    bird_pid: int | None
    bird_running: bool
    sessions: tuple[Session, ...]
    bgp_routes: tuple[Route, ...]  # what BIRD installed into the kernel
    # What Felix programs with encapsulation (proto 80): blocks via the tunnel.
    tunnel_routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class PodStatus:
    name: str
    namespace: str
    node: str
    ip: str
    netns: str
    veth: str
    netns_present: bool
    nginx_pid: int | None
    nginx_running: bool
    access_log: str
    ip6: str | None = None
    # UDP ports served by dnsmasq -> whether it runs.
    dns: tuple[tuple[int, bool], ...] = ()


@dataclass(frozen=True)
class ServiceStatus:
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    external_ips: tuple[str, ...]
    node_port: int | None
    ports: tuple[dict, ...]  # name, protocol, port, target_port, node_port, endpoints
    load_balancer_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabStatus:
    up: bool
    healthy: bool  # every namespace there, every daemon running, BGP Established
    run_dir: str | None
    manifest: str | None
    replicas: int | None
    client: dict | None
    tor: RouterStatus | None
    nodes: tuple[RouterStatus, ...]
    pods: tuple[PodStatus, ...]
    services: tuple[ServiceStatus, ...]
    problems: tuple[str, ...]
    encap: str = "none"  # Calico's encapsulation between the nodes
    # Faults injected with `tracer lab fault add` (kind, node, pod, in effect).
    faults: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def _sessions(files: Bird, running: bool) -> tuple[Session, ...]:
    if not running:
        return ()
    try:
        protos = bird.bgp_sessions(files)
    except LabError:
        return ()
    return tuple(Session(p.name, p.state, p.info, p.since, p.established) for p in protos)


def _routes(netns: str, present: bool) -> tuple[Route, ...]:
    if not present:
        return ()
    return tuple(
        # Filtered by proto, `ip -j` leaves the protocol out: it is bird. An
        # ECMP route (a load-balancer IP several nodes advertise) has its
        # next hops in "nexthops": shown comma-separated.
        Route(r["dst"], r.get("type", "unicast"),
              r.get("gateway") or ", ".join(h["gateway"] for h in r.get("nexthops", [])
                                            if h.get("gateway")) or None,
              r.get("dev") or next((h.get("dev") for h in r.get("nexthops", [])), None),
              r.get("protocol", "bird"))
        for six in (False, True)
        for r in bird.learned_routes(netns, six=six)
    )


def _tunnel_routes(netns: str, present: bool) -> tuple[Route, ...]:
    if not present:
        return ()
    return tuple(
        Route(r["dst"], r.get("type", "unicast"), r.get("gateway"), r.get("dev"),
              str(encap.FELIX_ROUTE_PROTO))
        for r in netdev.routes(netns, "proto", str(encap.FELIX_ROUTE_PROTO))
    )


def _router(name, netns, ip, pod_cidr, files: Bird, present: set[str],
            node: bool = False) -> RouterStatus:
    here = netns in present
    running = here and procs.runs_in(files.pid, netns)
    return RouterStatus(
        name=name, netns=netns, ip=ip, pod_cidr=pod_cidr, netns_present=here,
        bird_pid=files.pid, bird_running=running,
        sessions=_sessions(files, running), bgp_routes=_routes(netns, here),
        tunnel_routes=_tunnel_routes(netns, here) if node else (),
    )


def status() -> LabStatus:
    require_root("tracer lab status")
    state = try_load_state()
    if state is None:
        leftovers = sorted(n for n in netdev.existing_netns() if n.startswith("lab-"))
        problems = (f"lab namespaces without state: {', '.join(leftovers)} "
                    "(run `tracer lab down` or `tracer lab up`)",) if leftovers else ()
        return LabStatus(False, False, None, None, None, None, None, (), (), (), problems)
    return _collect(state)


def _collect(state: LabState) -> LabStatus:
    present = netdev.existing_netns()
    tor = _router(state.tor.name, state.tor.netns, state.tor.ip, None, state.tor.bird, present)
    nodes = tuple(
        _router(n.name, n.netns, n.ip, n.pod_cidr, n.bird, present, node=True)
        for n in state.nodes
    )
    pods = tuple(
        PodStatus(
            name=p.name, namespace=p.namespace, node=p.node, ip=p.ip, netns=p.netns,
            veth=p.veth, netns_present=p.netns in present, nginx_pid=p.nginx.pid, ip6=p.ip6,
            nginx_running=procs.runs_in(p.nginx.pid, p.netns),
            access_log=p.nginx.access_log,
            dns=tuple((f.port, dnsmasq.running(f) is not None) for f in p.dns),
        )
        for p in state.pods
    )
    services = tuple(
        ServiceStatus(
            namespace=s.namespace, name=s.name, type=s.type, cluster_ip=s.cluster_ip,
            external_ips=s.external_ips, node_port=s.node_port,
            ports=tuple(asdict(p) for p in s.ports), load_balancer_ips=s.load_balancer_ips,
        )
        for s in state.services
    )
    problems = []
    for ns in state.namespaces:
        if ns not in present:
            problems.append(f"namespace {ns} is missing")
    for r in (tor, *nodes):
        if not r.bird_running:
            problems.append(f"bird of {r.name} is not running")
        for s in r.sessions:
            if not s.established:
                problems.append(f"{r.name}: BGP session {s.name} is {s.info or s.state}")
    for p in pods:
        if not p.nginx_running:
            problems.append(f"nginx of pod {p.name} is not running")
        problems += [f"dnsmasq of pod {p.name} (port {port}/udp) is not running"
                     for port, up in p.dns if not up]
    if all(n.netns_present for n in nodes):
        tunnels = encap.problem(state)
        if tunnels:
            problems.append(f"{state.encap} encapsulation: {tunnels}")
    client = {"name": state.client.name, "netns": state.client.netns, "ip": state.client.ip,
              "extra_ips": list(state.client.extra_ips), "ip6": state.client.ip6,
              "netns_present": state.client.netns in present}
    return LabStatus(
        up=True, healthy=not problems, run_dir=state.run_dir, manifest=state.manifest,
        replicas=state.replicas, client=client, tor=tor, nodes=nodes, pods=pods,
        services=services, problems=tuple(problems), encap=state.encap,
        faults=_faults(state),
    )


def _faults(state: LabState) -> tuple[dict, ...]:
    from tracer.lab import faults
    from tracer.lab.fault_kinds import KINDS

    return tuple({"kind": f.kind, "node": f.node, "pod": f.pod, "in_effect": live}
                 for f, live in faults.status(state, KINDS))


def _encap_text(mode: str) -> str:
    if mode == "vxlan":
        return (f"vxlan ({encap.VXLAN_DEVICE}, VNI {encap.VXLAN_VNI}, UDP {encap.VXLAN_PORT}, "
                f"MTU {encap.mtu(mode)})")
    if mode == "ipip":
        return f"ipip ({encap.IPIP_DEVICE}, MTU {encap.mtu(mode)})"
    return "none (BGP routes between the nodes)"


def format_status(st: LabStatus) -> str:
    """Human-readable status (the CLI prints it)."""
    if not st.up:
        lines = ["lab: down"]
        lines += [f"problem: {p}" for p in st.problems]
        return "\n".join(lines)
    lines = [
        f"lab: up, {'healthy' if st.healthy else 'UNHEALTHY'}  (run dir {st.run_dir}, "
        f"manifest {st.manifest}"
        + (f", replicas {st.replicas}" if st.replicas is not None else "") + ")",
        "",
        f"encapsulation: {_encap_text(st.encap)}",
        "",
        "routers (BGP sessions; routes BIRD installed in the kernel, and Felix's with "
        "encapsulation):",
    ]
    for r in (st.tor, *st.nodes):
        if r is None:
            continue
        block = f" block {r.pod_cidr}" if r.pod_cidr else ""
        bird_s = f"bird pid {r.bird_pid}" if r.bird_running else "bird NOT RUNNING"
        lines.append(f"  {r.netns:<11} {r.ip:<14}{block}  {bird_s}")
        for s in r.sessions:
            lines.append(f"      bgp {s.name:<8} {s.info or s.state} since {s.since}")
        for rt in (*r.bgp_routes, *r.tunnel_routes):
            where = f"via {rt.via} dev {rt.dev}" if rt.via else rt.type
            lines.append(f"      route {rt.dst} {where} proto {rt.proto}")
    if st.client:
        more = st.client.get("extra_ips") or []
        lines.append(f"  {st.client['netns']:<11} {st.client['ip']}"
                     + (f" (+{len(more)}: {more[0]}-{more[-1]})" if more else "")
                     + (f"  {st.client['ip6']}" if st.client.get("ip6") else ""))
    lines += ["", f"pods ({len(st.pods)}):"]
    for p in st.pods:
        ok = "nginx up" if p.nginx_running else "nginx DOWN"
        ok += "".join(f", dnsmasq {port}/udp {'up' if up else 'DOWN'}" for port, up in p.dns)
        lines.append(f"  {p.name:<32} {p.node:<11} {p.ip:<14} {p.veth}  {ok}"
                     + (f"  {p.ip6}" if p.ip6 else ""))
    lines += ["", "services:"]
    for s in st.services:
        addrs = [f"{s.cluster_ip}:{s.ports[0]['port']}" if s.cluster_ip and s.ports else ""]
        addrs += [f"{ip}:{s.ports[0]['port']}" for ip in (*s.external_ips, *s.load_balancer_ips)
                  if s.ports]
        if s.node_port:
            addrs.append(f"<node ip>:{s.node_port}")
        eps = sum(len(p["endpoints"]) for p in s.ports)
        proto = "/".join(sorted({p["protocol"].lower() for p in s.ports}))
        lines.append(f"  {s.namespace}/{s.name:<16} {s.type:<12} {' '.join(a for a in addrs if a)}"
                     f" {proto}  ({eps} endpoints)")
    if st.faults:
        lines += ["", "faults injected (tracer lab fault):"]
        lines += [f"  {f['kind']} on {f['node']}" + (f", pod {f['pod']}" if f["pod"] else "")
                  + ("" if f["in_effect"] else "  (no longer in effect)") for f in st.faults]
    if st.problems:
        lines += ["", "problems:"] + [f"  {p}" for p in st.problems]
    return "\n".join(lines)
