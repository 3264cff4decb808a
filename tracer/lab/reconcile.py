"""Keeping a running lab: whether its infrastructure can stay
(`infra_problem`), and, when it can, the least change that makes its pods,
kube-proxy rules and encapsulation match a new plan (`reconcile`).

Everything is checked live (namespaces, daemons, links, BGP sessions, rule
digests, tunnels), not only against state.json: a piece removed by hand is
noticed and put back.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tracer.errors import LabError
from tracer.lab import bird, dnsmasq, kubeproxy, netdev, nginx, procs
from tracer.lab import encap as lab_encap
from tracer.lab.build import (
    add_pods,
    load_rules,
    node_bird_config,
    wait_converged,
    with_dns_started,
    with_nginx_pid,
    without_pids,
)
from tracer.lab.state import POD_NETNS_PREFIX, LabState, Node, Pod

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


def infra_problem(have: LabState, want: LabState) -> str | None:
    """Why the running infrastructure cannot be kept (None: it can)."""
    if _sans_runtime(have) != _sans_runtime(want):
        return "topology changed"
    present = netdev.existing_netns()
    for ns in (have.tor.netns, have.client.netns, *(n.netns for n in have.nodes)):
        if ns not in present:
            return f"namespace {ns} is missing"
    for who, b, ns in [(have.tor.name, have.tor.bird, have.tor.netns),
                       *((n.name, n.bird, n.netns) for n in have.nodes)]:
        if not procs.runs_in(b.pid, ns):
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
    if without_pids(p) != want:
        return "spec changed"
    if p.netns not in present:
        return "namespace missing"
    if p.veth not in node_links.get(p.node, {}):
        return f"{p.veth} missing"
    if not procs.runs_in(p.nginx.pid, p.netns):
        return "nginx not running"
    if any(dnsmasq.running(f) is None for f in p.dns):
        return "dnsmasq not running"
    return None


# --- reconcile ------------------------------------------------------------------


def reconcile(
    have: LabState, want: LabState, rules: dict[str, str], *, timeout: float = 30.0
) -> tuple[LabState, list[str]]:
    """Infrastructure is fine: make the pods and rules match. Returns the new
    state and what changed (empty: nothing)."""
    keep, changes = _drop_unwanted_pods(have, want)

    add = [p for p in want.pods if p.name not in keep]
    add_pods(want, add)
    pids = nginx.start_many(add)
    changes += [f"added pod {p.name} on {p.node} ({p.ip})" for p in add]

    pods = tuple(keep[p.name] if p.name in keep
                 else with_dns_started(with_nginx_pid(p, pids[p.name])) for p in want.pods)
    state = replace(
        want,
        tor=have.tor,
        nodes=tuple(replace(w, bird=h.bird, rules_digest=h.rules_digest)
                    for w, h in zip(want.nodes, have.nodes, strict=True)),
        pods=pods,
        created=have.created,
    )
    stale = _stale_rules(have, state, rules)
    if stale:
        state = load_rules(state, rules, stale)
        changes += [f"reloaded kube-proxy rules on {n.name}" for n in stale]
    if state.replicas != have.replicas or state.manifest_sha256 != have.manifest_sha256:
        changes.append("manifest or replicas changed")
    if state.proxy_mode != have.proxy_mode:
        changes.append(f"kube-proxy mode {have.proxy_mode} -> {state.proxy_mode}")
    changes += _sync_encap(have, state, timeout=timeout)
    return state, changes


def _drop_unwanted_pods(have: LabState, want: LabState) -> tuple[dict[str, Pod], list[str]]:
    """Remove the running pods that are not wanted as they are, or broken,
    and stray pod namespaces; returns the pods kept (by name) and what changed."""
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
    return keep, changes


def _stale_rules(have: LabState, state: LabState, rules: dict[str, str]) -> list[Node]:
    """Nodes to reload: whose rendered rules changed, whose loaded rules no
    longer are what was loaded, or whose kube-proxy mode changed (the other
    mode's rules must go). The others keep their rules (and counters)."""
    stale = []
    for n in state.nodes:
        path = kubeproxy.rules_file(state, n)
        old = path.read_text() if path.exists() else None
        mode_changed = state.proxy_mode != have.proxy_mode
        loaded = kubeproxy.digest(n.netns, six=state.ip_family == "dual")
        if mode_changed or old != rules[n.name] or n.rules_digest != loaded:
            stale.append(n)
    return stale


def _sync_encap(have: LabState, state: LabState, *, timeout: float) -> list[str]:
    """Calico's encapsulation as state.encap wants it: BIRD's kernel filter,
    the tunnels Felix programs and the pods' MTU. A no-op when the nodes
    already match (checked live, so a tunnel deleted by hand is put back)."""
    problem = lab_encap.problem(state)
    configs = {n.name: node_bird_config(state, n) for n in state.nodes}

    def reconfigure_birds() -> list[str]:
        return [f"reconfigured BIRD on {n.name}" for n in state.nodes
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
        wait_converged(state, timeout=timeout)
    return changes


def _remove_pods(have: LabState, pods: Sequence[Pod], stray_netns: Sequence[str] = ()) -> None:
    """Stop the pods' processes and delete their veths, namespaces and files."""
    if not pods and not stray_netns:
        return
    inodes = netdev.inodes_of([*(p.netns for p in pods), *stray_netns])
    inodes.discard(procs.own_netns_inode())
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
