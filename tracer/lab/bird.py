"""BIRD 2: the BGP routing of the lab, as Calico deploys it peered with a ToR.

Each node runs its own bird with a config shaped like Calico's bird.cfg: its
IPAM block as a static blackhole route, exported to the kernel and over iBGP
(AS 64512) to the top-of-rack router, which is a route reflector so the next
hop of every block stays the node that owns it. The ToR installs what it
learns too, so the client can reach pod IPs directly, as the corporate
network does in the seed article.

Rendering is pure; start/query/wait run bird and birdc inside the lab
namespaces.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import LabError, TracerError
from tracer.lab import bird6, netdev
from tracer.lab.state import Bird, Node, Router
from tracer.system import require_program, run

# Timers short enough that `lab up` does not wait on BIRD's defaults (5 s
# connect delay, 120 s retry, 60 s error wait). BIRD waits at least 1 s
# (minus up to a quarter, RFC 4271 jitter) before it dials: BGP takes ~0.9 s.
_TIMERS = """\
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 4;
  error forget time 10;"""


def _kernel_programming(encap: str) -> str:
    """Calico's calico_kernel_programming filter for the pool. With
    encapsulation the pool's routes are Felix's (tracer/lab/encap.py), as in
    Calico's bird_ipam.cfg template for a VXLAN pool."""
    if encap == "none":
        return """\
filter calico_kernel_programming {
  if ( net ~ POOL ) then accept;
  reject;
}"""
    return f"""\
# {encap} mode: don't program the pool's routes into the kernel; Felix does
# (each other node's block through the tunnel, a blackhole for this node's).
filter calico_kernel_programming {{
  if ( net ~ POOL ) then reject;
  reject;
}}"""


def render_node_config(
    node: Node, *, tor_ip: str, asn: int, cluster_cidr: str, encap: str = "none",
    service_ips: Sequence[str] = (), tor: Router | None = None,
) -> str:
    """bird.cfg for one node (Calico's template, trimmed to one ToR peer).
    service_ips: the load-balancer IPs this node advertises."""
    return f"""\
# BIRD config of lab {node.name}, rendered by `tracer lab up` (Calico-style).
log "{node.bird.log}" all;
timeformat protocol "%F %T";
router id {node.ip};

# Calico's IP pool; only routes inside it go to BGP peers or to the kernel.
define POOL = {cluster_cidr};

filter calico_export_to_bgp_peers {{
  # Calico's reject_tunnel_routes: a tunnel device's own routes (the
  # vxlan.calico address) stay on the node; Felix programs the tunnels.
  if ( (ifname ~ "*.cali") || (ifname ~ "*.calico") ) then reject;
  if ( net ~ POOL ) then accept;
  if ( proto = "service_ips" ) then accept;
  reject;
}}

{_kernel_programming(encap)}

{_service_ips(service_ips)}

# This node's IPAM block: a blackhole for the whole block; each pod's /32
# route via its cali* interface is more specific and wins.
protocol static {{
  ipv4;
  route {node.pod_cidr} blackhole;
}}

protocol kernel {{
  merge paths on;
  ipv4 {{ import none; export filter calico_kernel_programming; }};
}}

protocol device {{
  scan time 2;
}}

# Interface routes (not the pods' cali*) so next hops resolve.
protocol direct {{
  ipv4;
  interface -"cali*", "*";
}}

protocol bgp tor {{
  description "ToR route reflector {tor_ip}";
  local {node.ip} as {asn};
  neighbor {tor_ip} as {asn};
  direct;
{_TIMERS}
  ipv4 {{ import all; export filter calico_export_to_bgp_peers; }};
}}
""" + (bird6.node_config(node, tor=tor, asn=asn, timers=_TIMERS) if tor is not None else "")


def _service_ips(ips: Sequence[str]) -> str:
    """Calico's advertisement of Service load-balancer IPs
    (BGPConfiguration serviceLoadBalancerIPs): a /32 per IP, sent to the ToR
    only (calico_kernel_programming keeps it out of the node's own table,
    where a blackhole would swallow the node's own connections to the IP
    before kube-proxy's OUTPUT DNAT)."""
    routes = "".join(f"  route {ip}/32 blackhole;\n" for ip in ips)
    return "protocol static service_ips {\n  ipv4;\n" + routes + "}"


def bgp_name(node: Node) -> str:
    """BIRD protocol name on the ToR for a node ("node_a")."""
    return node.name.removeprefix("lab-").replace("-", "_")


def render_tor_config(tor: Router, nodes: Iterable[Node], *, asn: int, cluster_cidr: str) -> str:
    """The top-of-rack router: iBGP route reflector for every node."""
    nodes = tuple(nodes)
    peers = "\n".join(
        f"""\
protocol bgp {bgp_name(n)} {{
  description "{n.name} {n.ip}";
  local {tor.ip} as {asn};
  neighbor {n.ip} as {asn};
  rr client;
  direct;
  # Nodes dial in (as Calico nodes do); the ToR only listens.
  passive on;
{_TIMERS}
  ipv4 {{ import all; export all; }};
}}
"""
        for n in nodes
    )
    return f"""\
# BIRD config of the lab's top-of-rack router, rendered by `tracer lab up`.
log "{tor.bird.log}" all;
timeformat protocol "%F %T";
router id {tor.ip};

define POOL = {cluster_cidr};

filter pod_blocks {{
  if ( net ~ POOL ) then accept;
  # Service load-balancer IPs the nodes advertise (ECMP over the nodes).
  if ( source = RTS_BGP && net.len = 32 ) then accept;
  reject;
}}

protocol kernel {{
  merge paths on;
  ipv4 {{ import none; export filter pod_blocks; }};
}}

protocol device {{
  scan time 2;
}}

protocol direct {{
  ipv4;
  interface "*";
}}

{peers}""" + bird6.tor_config(tor, nodes, asn=asn, timers=_TIMERS)


def start(netns: str, files: Bird, config: str) -> int:
    """Write the config and start bird inside netns; returns its pid.

    bird daemonizes after parsing its config, so a syntax error comes back as
    this command's failure, and the pid file exists once it returns.
    """
    require_program("bird")
    Path(files.config).parent.mkdir(parents=True, exist_ok=True)
    Path(files.config).write_text(config)
    for stale in (files.socket, files.pid_file):
        Path(stale).unlink(missing_ok=True)
    try:
        run(["bird", "-c", files.config, "-s", files.socket, "-P", files.pid_file], netns=netns)
    except TracerError as exc:
        raise LabError(f"bird in {netns} did not start: {exc}") from exc
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            return int(Path(files.pid_file).read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            time.sleep(0.01)
    raise LabError(f"bird in {netns} wrote no pid file {files.pid_file}")


def reconfigure(files: Bird, config: str) -> bool:
    """Give a running bird a new config (`birdc configure`: sessions stay up,
    channels whose filters changed are re-fed). False when it has it already."""
    path = Path(files.config)
    if path.exists() and path.read_text() == config:
        return False
    require_program("birdc")
    path.write_text(config)
    proc = run(["birdc", "-s", files.socket, "configure"], check=False, timeout=10)
    if proc.returncode != 0 or "Reconfigur" not in proc.stdout:
        detail = (proc.stdout + proc.stderr).strip().splitlines()
        raise LabError(f"bird did not take {files.config}: {detail[-1] if detail else 'failed'}")
    return True


@dataclass(frozen=True)
class Protocol:
    """One line of `birdc show protocols`."""

    name: str
    proto: str
    table: str
    state: str  # up / start / down
    since: str
    info: str  # for BGP: Established, Active, Connect, ... plus an error text

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.split()[:1] == ["Established"]


_PROTO_LINE = re.compile(
    r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
    r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s*(?P<info>.*)$"
)


def parse_protocols(text: str) -> list[Protocol]:
    out = []
    for line in text.splitlines():
        m = _PROTO_LINE.match(line.strip())
        if m:
            out.append(Protocol(**{k: v.strip() for k, v in m.groupdict().items()}))
    return out


def show_protocols(files: Bird) -> list[Protocol]:
    """The protocols of a running bird, through its control socket."""
    require_program("birdc")
    proc = run(["birdc", "-s", files.socket, "show", "protocols"], check=False, timeout=5)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"birdc -s {files.socket}: {detail[-1] if detail else 'failed'}")
    return parse_protocols(proc.stdout)


def bgp_sessions(files: Bird) -> list[Protocol]:
    return [p for p in show_protocols(files) if p.proto == "BGP"]


def learned_routes(netns: str, *, six: bool = False) -> list[dict]:
    """Routes bird installed in netns's kernel table (`ip route proto bird`)."""
    return netdev.routes(netns, "proto", "bird", six=six)


def expected_routes(nodes: Iterable[Node], encap: str = "none") -> dict[str, set[tuple[str, str]]]:
    """netns -> {(block, next hop)} that BGP must have put into its kernel table:
    every other node's block via that node; on the ToR (netns "tor" key filled
    by the caller) every block. With encapsulation none on the nodes: Felix
    routes the blocks there (tracer/lab/encap.py)."""
    nodes = tuple(nodes)
    out: dict[str, set[tuple[str, str]]] = {}
    for n in nodes:
        out[n.netns] = {(o.pod_cidr, o.ip) for o in nodes if o is not n} if encap == "none" else set()
    return out


def installed(netns: str, *, six: bool = False) -> set[tuple[str, str]]:
    """(destination, next hop) of BIRD's routes in netns; an ECMP route (a
    load-balancer IP that several nodes advertise) gives one per next hop.
    iproute2 names a host route "a.b.c.d", not "a.b.c.d/32": normalised."""
    out = set()
    for r in learned_routes(netns, six=six):
        dst = r["dst"] if "/" in r["dst"] else f"{r['dst']}/{128 if six else 32}"
        hops = [r] if r.get("gateway") else r.get("nexthops", [])
        out |= {(dst, h["gateway"]) for h in hops if h.get("gateway")}
    return out


def wait_converged(
    tor: Router, nodes: Iterable[Node], timeout: float = 30.0, encap: str = "none",
    service_routes: Iterable[tuple[str, str]] = (),
) -> float:
    """Wait until every BGP session is Established and every pod block is in
    the kernel tables of the other nodes and the ToR (with encapsulation: the
    nodes' tables hold no route of BIRD's), and the ToR routes exactly
    service_routes ({(lb_ip/32, node ip)}) of the advertised Service IPs.
    Returns seconds waited."""
    nodes = tuple(nodes)
    want = expected_routes(nodes, encap)
    bare = frozenset(n.netns for n in nodes) if encap != "none" else frozenset()
    want[tor.netns] = {(n.pod_cidr, n.ip) for n in nodes} | set(service_routes)
    want6 = bird6.expected_routes(tor, nodes)
    start_t = time.monotonic()
    deadline = start_t + timeout
    problem = "no answer yet"
    while True:
        problem = _not_converged(tor, nodes, want, bare) or _missing6(want6)
        if problem is None:
            return time.monotonic() - start_t
        if time.monotonic() >= deadline:
            raise LabError(
                f"BGP did not converge within {timeout:.0f}s: {problem} "
                f"(bird logs in {Path(tor.bird.log).parent})"
            )
        time.sleep(0.05)


def _missing6(want6: dict[str, set[tuple[str, str]]]) -> str | None:
    for netns, routes in want6.items():
        missing = routes - installed(netns, six=True)
        if missing:
            block, via = sorted(missing)[0]
            return f"{netns} has no route {block} via {via} proto bird yet"
    return None


def _in_blocks(dst: str, nodes: tuple[Node, ...]) -> bool:
    address = ipaddress.ip_network(dst).network_address
    return any(address in ipaddress.ip_network(n.pod_cidr) for n in nodes)


def _not_converged(
    tor: Router, nodes: tuple[Node, ...], want: dict[str, set[tuple[str, str]]],
    bare: frozenset[str] = frozenset(),
) -> str | None:
    for who, files in [(tor.name, tor.bird), *((n.name, n.bird) for n in nodes)]:
        try:
            sessions = bgp_sessions(files)
        except LabError as exc:
            return str(exc)
        for s in sessions:
            if not s.established:
                return f"{who}: BGP session {s.name} is {s.info or s.state}"
    for netns, routes in want.items():
        missing = routes - installed(netns)
        if missing:
            block, via = sorted(missing)[0]
            return f"{netns} has no route {block} via {via} proto bird yet"
        # A /32 outside every node's block that nobody advertises any more: a
        # withdrawn load-balancer IP. (A /32 inside a block is a tunnel
        # address, e.g. IPIP's tunl0, which BIRD exports as Calico's does.)
        stale = {(d, v) for d, v in installed(netns) - routes
                 if d.endswith("/32") and not _in_blocks(d, nodes)}
        if netns == tor.netns and stale:
            dst, via = sorted(stale)[0]
            return f"{netns} still routes {dst} via {via} (no longer advertised)"
        if netns in bare:
            left = learned_routes(netns)
            if left:
                return f"{netns} still has BIRD's route {left[0].get('dst')} (encapsulation on)"
    return None
