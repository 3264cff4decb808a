"""Tearing the lab down: its processes, its namespaces (and with them every
veth, bridge, route and rule inside) and its run dir.

Found by name as well as from state.json, so that a half-built lab or one
whose state file is gone still goes entirely. Pids are checked before they
are signalled (procs.py).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tracer.lab import netdev, plan, procs
from tracer.lab.state import POD_NETNS_PREFIX, RUN_DIR, LabState

# The infrastructure's namespaces, whatever state.json says (or if it is gone).
INFRA_NETNS = (
    plan.netns_name("tor"),
    plan.netns_name("client"),
    *(plan.netns_name(n.name) for n in plan.NODE_SPECS),
)


@dataclass(frozen=True)
class DownResult:
    namespaces: tuple[str, ...]
    processes: tuple[int, ...]
    run_dir_removed: bool
    seconds: float

    @property
    def was_up(self) -> bool:
        return bool(self.namespaces or self.processes or self.run_dir_removed)


def _lab_netns_present(state: LabState | None) -> list[str]:
    present = netdev.existing_netns()
    names = {n for n in present if n in INFRA_NETNS or n.startswith(POD_NETNS_PREFIX)}
    if state is not None:
        names |= set(state.namespaces) & present
    # Pods first, infrastructure last (the reverse of building).
    return sorted(names, key=lambda n: (not n.startswith(POD_NETNS_PREFIX), n))


def _daemons(state: LabState | None, run_dir: Path, inodes: set[int]) -> set[int]:
    """Our daemons by pid (state and pid files), checked before they are
    signalled."""
    candidates: set[int] = set()
    if state is not None:
        candidates |= {b.pid for b in (state.tor.bird, *(n.bird for n in state.nodes)) if b.pid}
        candidates |= {p.nginx.pid for p in state.pods if p.nginx.pid}
        candidates |= {f.pid for p in state.pods for f in p.dns if f.pid}
    for pid_file in [*run_dir.glob("bird/*.pid"), *run_dir.glob("pods/*/nginx.pid"),
                     *run_dir.glob("pods/*/dnsmasq/*.pid")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            candidates.add(int(pid_file.read_text().split()[0]))
    return {p for p in candidates if procs.is_ours(p, netns_inodes=inodes, run_dir=str(run_dir))}


def teardown(state: LabState | None, *, keep_run_dir: bool = False) -> DownResult:
    """Stop every lab process, delete every lab namespace and (unless
    keep_run_dir) the run dir. Idempotent."""
    started = time.monotonic()
    run_dir = Path(state.run_dir if state else RUN_DIR)
    names = _lab_netns_present(state)
    inodes = netdev.inodes_of(names)
    host = procs.own_netns_inode()
    inodes.discard(host)

    # The daemons' namespaces join the sweep even if no longer named.
    daemons = _daemons(state, run_dir, inodes)
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
