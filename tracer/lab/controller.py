"""`tracer lab up / down / status / exec`: build, reconcile, inspect and tear
down the lab.

up is declarative: it plans the lab from the manifest and the replica count,
compares with what runs (state.json plus live checks: namespaces, daemons,
BGP sessions, links, rules) and does the least that gets there:
  - nothing, when all matches (a second `up` is a fast no-op);
  - pods added/removed and rules reloaded, when only the pods changed;
  - teardown by name and a full build, when the infrastructure (ToR, client,
    nodes, BIRD) is missing or broken, e.g. after a half-failed `up`.

Every step runs inside lab namespaces (see netdev.py); the host's own
network namespace is never changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tracer.errors import LabError, UsageError
from tracer.kube.manifest import load_manifest
from tracer.kube.model import Manifest
from tracer.lab import bird, kubeproxy, netdev, nginx, plan, procs
from tracer.lab import encap as lab_encap
from tracer.lab.state import (
    POD_NETNS_PREFIX,
    RUN_DIR,
    LabState,
    Node,
    Pod,
    save_state,
    try_load_state,
)
from tracer.system import require_program, require_root

# Serialises concurrent up/down (two shells, two test sessions). /run/lock is
# the place for such files; it is the one file the lab keeps after `down`.
LOCK_FILE = Path("/run/lock/tracer-lab.lock")

INFRA_NETNS = (
    plan.netns_name("tor"),
    plan.netns_name("client"),
    *(plan.netns_name(n.name) for n in plan.NODE_SPECS),
)

PROGRAMS = ("ip", "bird", "birdc", "nginx")

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


@dataclass(frozen=True)
class UpResult:
    state: LabState
    action: str  # "created", "unchanged" or "reconciled"
    seconds: float
    changes: tuple[str, ...] = ()
    bgp_seconds: float | None = None


@dataclass(frozen=True)
class DownResult:
    namespaces: tuple[str, ...]
    processes: tuple[int, ...]
    run_dir_removed: bool
    seconds: float

    @property
    def was_up(self) -> bool:
        return bool(self.namespaces or self.processes or self.run_dir_removed)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_environment(what: str, encap_mode: str = "none") -> None:
    require_root(what)
    for program in PROGRAMS:
        require_program(program)
    if encap_mode == "vxlan":
        require_program("bridge")  # FDB entries (iproute2)
    for program in kubeproxy.REQUIRED_PROGRAMS:
        kubeproxy._require(program)


def _load(manifest: str | os.PathLike[str] | None) -> tuple[Path, Manifest, str]:
    path = Path(manifest) if manifest is not None else plan.DEFAULT_MANIFEST
    parsed = load_manifest(path)  # ManifestError (one line) passes through
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return path.resolve(), parsed, sha


# --- up ---------------------------------------------------------------------


def up(
    manifest: str | os.PathLike[str] | None = None,
    replicas: int | None = None,
    *,
    timeout: float = 30.0,
    proxy_mode: str = "iptables",
    encap: str = "none",
) -> UpResult:
    """Bring the lab to the state the manifest (and replicas, kube-proxy mode
    and Calico encapsulation) describe. Changing only the proxy mode reloads
    the rules; changing only the encapsulation reprograms the tunnels, BIRD's
    kernel filter and the pods' MTU (tracer/lab/encap.py)."""
    started = time.monotonic()
    if proxy_mode not in plan.PROXY_MODES:
        raise UsageError(
            f"--proxy-mode must be one of {', '.join(plan.PROXY_MODES)}, not {proxy_mode!r}"
        )
    if encap not in plan.ENCAP_MODES:
        raise UsageError(f"--encap must be one of {', '.join(plan.ENCAP_MODES)}, not {encap!r}")
    _check_environment("tracer lab up", encap)
    lab_encap.require_kernel_support(encap)
    path, parsed, sha = _load(manifest)
    want = plan.make_plan(
        parsed, replicas=replicas, run_dir=RUN_DIR, manifest_path=str(path), manifest_sha256=sha,
        proxy_mode=proxy_mode, encap=encap,
    )
    # Render before touching anything: a manifest the renderer rejects fails
    # with nothing built.
    rules = {n.name: kubeproxy.render(parsed, want, n) for n in want.nodes}

    with _locked():
        have = try_load_state()
        problem = "no lab state" if have is None else _infra_problem(have, want)
        if problem is None:
            assert have is not None
            state, changes = _reconcile(have, want, rules, timeout=timeout)
            if not changes:
                return UpResult(state, "unchanged", time.monotonic() - started)
            save_state(state)
            return UpResult(state, "reconciled", time.monotonic() - started, tuple(changes))
        _teardown(have)
        try:
            state, bgp_seconds = _build(want, rules, timeout=timeout)
        except BaseException:
            # Leave no half-built lab behind; the error says what failed.
            # The run dir stays (bird and nginx logs, for a look); the next
            # `up` or `down` removes it.
            with contextlib.suppress(Exception):
                _teardown(None, keep_run_dir=True)
            raise
        save_state(state)
        return UpResult(
            state, "created", time.monotonic() - started,
            (f"built ({problem})",), bgp_seconds,
        )


def _build(want: LabState, rules: dict[str, str], *, timeout: float) -> tuple[LabState, float]:
    run_dir = Path(want.run_dir)
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    run_dir.chmod(0o755)  # nginx workers (nobody) read the pages under it

    netdev.add_netns([want.tor.netns, want.client.netns, *(n.netns for n in want.nodes)])
    netdev.set_sysctls(want.tor.netns, _ROUTER)
    netdev.set_sysctls(want.tor.netns, _NO_BRIDGE_NETFILTER, optional=_NO_BRIDGE_NETFILTER)
    netdev.set_sysctls(want.client.netns, _QUIET)
    for n in want.nodes:
        netdev.set_sysctls(n.netns, _ROUTER)
    _wire_lan(want)

    # BIRD first: its sessions come up while the pods and rules are made.
    tor_pid = bird.start(
        want.tor.netns, want.tor.bird,
        bird.render_tor_config(want.tor, want.nodes, asn=want.asn, cluster_cidr=want.cluster_cidr),
    )
    nodes = []
    for n in want.nodes:
        pid = bird.start(n.netns, n.bird, _node_bird_config(want, n))
        nodes.append(replace(n, bird=replace(n.bird, pid=pid)))
    state = replace(
        want, tor=replace(want.tor, bird=replace(want.tor.bird, pid=tor_pid)), nodes=tuple(nodes)
    )

    _add_pods(state, state.pods)
    pids = nginx.start_many(state.pods)
    state = replace(state, pods=tuple(_with_pid(p, pids[p.name]) for p in state.pods))
    state = _load_rules(state, rules, state.nodes)
    if state.encap != "none":
        lab_encap.apply(state)
    bgp_seconds = bird.wait_converged(state.tor, state.nodes, timeout=timeout, encap=state.encap)
    return state, bgp_seconds


def _node_bird_config(s: LabState, n: Node) -> str:
    return bird.render_node_config(n, tor_ip=s.tor.ip, asn=s.asn, cluster_cidr=s.cluster_cidr,
                                   encap=s.encap)


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


def _add_pods(s: LabState, pods: Sequence[Pod]) -> None:
    """Pod namespaces, their Calico-style veths, addresses and routes, and
    the MTU Calico's CNI plugin gives them (the tunnel's, with encapsulation)."""
    if not pods:
        return
    mtu = lab_encap.mtu(s.encap)
    set_mtu = mtu != lab_encap.HOST_MTU
    netdev.add_netns([p.netns for p in pods])
    for p in pods:
        netdev.set_sysctls(p.netns, _QUIET)
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
        netdev.ip_batch(node.netns, lines)
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
        ])


def _with_pid(p: Pod, pid: int | None) -> Pod:
    return replace(p, nginx=replace(p.nginx, pid=pid))


def _load_rules(s: LabState, rules: dict[str, str], nodes: Sequence[Node]) -> LabState:
    reload = {n.name for n in nodes}
    new_nodes = tuple(
        replace(n, rules_digest=kubeproxy.load(s, n, rules[n.name])) if n.name in reload else n
        for n in s.nodes
    )
    return replace(s, nodes=new_nodes)


# --- checks -------------------------------------------------------------------


def _sans_runtime(s: LabState) -> tuple:
    """The parts of the infrastructure a plan fixes (no pids, no digests)."""
    return (
        s.run_dir,
        s.lan_cidr,
        s.cluster_cidr,
        s.asn,
        s.pod_gateway,
        replace(s.tor, bird=replace(s.tor.bird, pid=None)),
        s.client,
        tuple(replace(n, bird=replace(n.bird, pid=None), rules_digest=None) for n in s.nodes),
    )


def _daemon_ok(pid: int | None, netns: str) -> bool:
    return procs.runs_in(pid, netdev.inode_of(netns))


def _infra_problem(have: LabState, want: LabState) -> str | None:
    """Why the running infrastructure cannot be kept (None: it can)."""
    if _sans_runtime(have) != _sans_runtime(want):
        return "topology changed"
    present = netdev.existing_netns()
    for ns in (have.tor.netns, have.client.netns, *(n.netns for n in have.nodes)):
        if ns not in present:
            return f"namespace {ns} is missing"
    for who, b, ns in [(have.tor.name, have.tor.bird, have.tor.netns),
                       *((n.name, n.bird, n.netns) for n in have.nodes)]:
        if not _daemon_ok(b.pid, ns):
            return f"bird of {who} is not running"
    tor_links = netdev.links(have.tor.netns)
    for port in (have.client.lan_port, *(n.lan_port for n in have.nodes)):
        if port not in tor_links or "UP" not in tor_links[port].get("flags", []):
            return f"LAN port {port} is missing or down"
    for n in have.nodes:
        try:
            sessions = bird.bgp_sessions(n.bird)
        except LabError as exc:
            return str(exc)
        if not sessions or not all(x.established for x in sessions):
            return f"BGP session of {n.name} is not Established"
    return None


def _pod_problem(
    p: Pod, want: Pod | None, present: set[str], node_links: dict[str, dict]
) -> str | None:
    if want is None:
        return "not wanted"
    if _with_pid(p, None) != want:
        return "spec changed"
    if p.netns not in present:
        return "namespace missing"
    if p.veth not in node_links.get(p.node, {}):
        return f"{p.veth} missing"
    if not _daemon_ok(p.nginx.pid, p.netns):
        return "nginx not running"
    return None


# --- reconcile ------------------------------------------------------------------


def _reconcile(
    have: LabState, want: LabState, rules: dict[str, str], *, timeout: float = 30.0
) -> tuple[LabState, list[str]]:
    """Infrastructure is fine: make the pods and rules match. Returns the new
    state and what changed (empty: nothing)."""
    changes: list[str] = []
    wanted = {p.name: p for p in want.pods}
    present = netdev.existing_netns()
    node_links = {n.name: netdev.links(n.netns) for n in have.nodes}
    keep: dict[str, Pod] = {}
    remove: list[Pod] = []
    for p in have.pods:
        why = _pod_problem(p, wanted.get(p.name), present, node_links)
        if why is None:
            keep[p.name] = p
        else:
            remove.append(p)
            changes.append(f"removed pod {p.name} ({why})")
    # Pods removed out of band (netns deleted by hand) may be missing from
    # state too; any lab-pod-* namespace not kept goes.
    stray = sorted(
        ns for ns in present
        if ns.startswith(POD_NETNS_PREFIX) and ns not in {p.netns for p in keep.values()}
        and ns not in {p.netns for p in remove}
    )
    _remove_pods(have, remove, stray)
    changes += [f"removed stray namespace {ns}" for ns in stray]

    add = [p for p in want.pods if p.name not in keep]
    _add_pods(want, add)
    pids = nginx.start_many(add)
    changes += [f"added pod {p.name} on {p.node} ({p.ip})" for p in add]

    pods = tuple(keep[p.name] if p.name in keep else _with_pid(p, pids[p.name]) for p in want.pods)
    state = replace(
        want,
        tor=have.tor,
        nodes=tuple(replace(w, bird=h.bird, rules_digest=h.rules_digest)
                    for w, h in zip(want.nodes, have.nodes, strict=True)),
        pods=pods,
        created=have.created,
    )
    # Rules: reload a node whose rendered rules changed, whose loaded rules no
    # longer are what was loaded, or whose kube-proxy mode changed (the other
    # mode's rules must go). Otherwise leave them (and their counters).
    stale = []
    for n in state.nodes:
        path = kubeproxy.rules_file(state, n)
        old = path.read_text() if path.exists() else None
        mode_changed = state.proxy_mode != have.proxy_mode
        if mode_changed or old != rules[n.name] or n.rules_digest != kubeproxy.digest(n.netns):
            stale.append(n)
    if stale:
        state = _load_rules(state, rules, stale)
        changes += [f"reloaded kube-proxy rules on {n.name}" for n in stale]
    if state.replicas != have.replicas or state.manifest_sha256 != have.manifest_sha256:
        changes.append("manifest or replicas changed")
    if state.proxy_mode != have.proxy_mode:
        changes.append(f"kube-proxy mode {have.proxy_mode} -> {state.proxy_mode}")
    changes += _sync_encap(have, state, timeout=timeout)
    return state, changes


def _sync_encap(have: LabState, state: LabState, *, timeout: float) -> list[str]:
    """Calico's encapsulation as state.encap wants it: BIRD's kernel filter,
    the tunnels Felix programs and the pods' MTU. A no-op when the nodes
    already match (checked live, so a tunnel deleted by hand is put back)."""
    problem = lab_encap.problem(state)
    configs = {n.name: _node_bird_config(state, n) for n in state.nodes}

    def reconfigure_birds() -> list[str]:
        return [f"reconfigured BIRD on {n.name} for {state.encap} mode" for n in state.nodes
                if bird.reconfigure(n.bird, configs[n.name])]

    changes: list[str] = []
    if problem is None:
        changes += reconfigure_birds()
    elif state.encap == "none":
        # Tunnels off first, then BIRD routes the blocks again.
        lab_encap.clear(state)
        changes += reconfigure_birds()
    else:
        # BIRD lets go of the pool's routes, then the tunnels take them.
        changes += reconfigure_birds()
        lab_encap.apply(state)
    if problem is not None:
        lab_encap.set_pod_mtu(state, state.pods)
        changes.append(f"encapsulation {have.encap} -> {state.encap}" if have.encap != state.encap
                       else f"encapsulation {state.encap} reprogrammed ({problem})")
    if changes:
        bird.wait_converged(state.tor, state.nodes, timeout=timeout, encap=state.encap)
    return changes


def _remove_pods(have: LabState, pods: Sequence[Pod], stray_netns: Sequence[str] = ()) -> None:
    if not pods and not stray_netns:
        return
    inodes = {i for i in (netdev.inode_of(p.netns) for p in pods) if i is not None}
    inodes |= {i for i in (netdev.inode_of(ns) for ns in stray_netns) if i is not None}
    inodes.discard(_own_netns_inode())
    victims = set(procs.running_in(inodes))
    for p in pods:
        if procs.is_ours(p.nginx.pid, netns_inodes=inodes, run_dir=have.run_dir):
            victims.add(p.nginx.pid)  # type: ignore[arg-type]
    procs.stop(victims)
    # Delete the node side of each veth first: synchronous, while a deleted
    # namespace is freed asynchronously and its veth would linger a moment,
    # in the way of a pod re-created with the same interface name.
    for n in have.nodes:
        netdev.delete_links(n.netns, [p.veth for p in pods if p.node == n.name])
    netdev.delete_netns([*(p.netns for p in pods), *stray_netns])
    for p in pods:
        shutil.rmtree(Path(p.nginx.root).parent, ignore_errors=True)


# --- down -------------------------------------------------------------------------


def _own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _lab_netns_present(state: LabState | None) -> list[str]:
    present = netdev.existing_netns()
    names = {n for n in present if n in INFRA_NETNS or n.startswith(POD_NETNS_PREFIX)}
    if state is not None:
        names |= set(state.namespaces) & present
    # Pods first, infrastructure last (the reverse of building).
    return sorted(names, key=lambda n: (not n.startswith(POD_NETNS_PREFIX), n))


def _teardown(state: LabState | None, *, keep_run_dir: bool = False) -> DownResult:
    started = time.monotonic()
    run_dir = Path(state.run_dir if state else RUN_DIR)
    names = _lab_netns_present(state)
    inodes = {i for i in (netdev.inode_of(n) for n in names) if i is not None}
    host = _own_netns_inode()
    inodes.discard(host)

    # Our daemons by pid (state and pid files), checked before they are
    # signalled; their namespaces join the sweep even if no longer named.
    candidates: set[int] = set()
    if state is not None:
        candidates |= {b.pid for b in (state.tor.bird, *(n.bird for n in state.nodes)) if b.pid}
        candidates |= {p.nginx.pid for p in state.pods if p.nginx.pid}
    for pid_file in [*run_dir.glob("bird/*.pid"), *run_dir.glob("pods/*/nginx.pid")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            candidates.add(int(pid_file.read_text().split()[0]))
    daemons = {p for p in candidates if procs.is_ours(p, netns_inodes=inodes, run_dir=str(run_dir))}
    for pid in daemons:
        ino = procs.netns_inode(pid)
        if ino is not None and ino != host:
            inodes.add(ino)

    victims = daemons | set(procs.running_in(inodes))
    stopped = procs.stop(victims)
    left = procs.running_in(inodes)  # e.g. workers of a master that needed SIGKILL
    if left:
        stopped += procs.stop(left)

    netdev.delete_netns(names)
    removed = False
    if not keep_run_dir and run_dir.exists():
        shutil.rmtree(run_dir)
        removed = True
    return DownResult(
        tuple(names), tuple(sorted(set(stopped))), removed, time.monotonic() - started
    )


def down() -> DownResult:
    """Remove everything the lab made: processes, namespaces (and with them
    every veth, bridge, route and rule inside), the run dir. Idempotent."""
    require_root("tracer lab down")
    require_program("ip")
    with _locked():
        return _teardown(try_load_state())


# --- status / exec ------------------------------------------------------------------


def exec_in(name: str, argv: Sequence[str]) -> int:
    """Run argv inside a lab namespace with the caller's stdio; its exit code."""
    require_root("tracer lab exec")
    if not argv:
        raise UsageError("nothing to run: tracer lab exec NAME -- CMD [ARGS...]")
    state = try_load_state()
    if state is not None:
        netns = state.netns_of(name)
    elif name.startswith("lab-"):
        netns = name
    else:
        raise LabError("the lab is not up: run `tracer lab up`")
    if netns not in netdev.existing_netns():
        raise LabError(f"namespace {netns} does not exist (is the lab up? `tracer lab status`)")
    ip = require_program("ip")
    try:
        return subprocess.run([ip, "netns", "exec", netns, *argv], check=False).returncode
    except KeyboardInterrupt:
        return 130
