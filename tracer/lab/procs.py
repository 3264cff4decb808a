"""The lab's processes: is a pid still our daemon, and stopping everything
that runs inside lab namespaces (named or already unnamed).

Pids are checked before they are signalled (a pid file can outlive its
process and the number be reused): a process is the lab's when its network
namespace is a lab namespace, or its command line names the lab run dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from tracer.lab import netdev


def status(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, Z, ...); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ..." where comm may contain spaces and parentheses.
    return stat[stat.rfind(")") + 2 :][:1] or None


def alive(pid: int | None) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    return pid is not None and pid > 0 and status(pid) not in (None, "Z", "X")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace"
        )
    except OSError:
        return ""


def netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def is_ours(pid: int | None, *, netns_inodes: Collection[int], run_dir: str) -> bool:
    if not alive(pid):
        return False
    assert pid is not None
    if pid == os.getpid():
        return False
    ino = netns_inode(pid)
    if ino is not None and ino in netns_inodes:
        return True
    return run_dir in cmdline(pid)


def running_in(netns_inodes: Collection[int]) -> list[int]:
    """Every live process whose network namespace is one of netns_inodes
    (what `ip netns pids` does, but also for namespaces no longer named)."""
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        ino = netns_inode(pid)
        if ino is not None and ino in netns_inodes and alive(pid):
            out.append(pid)
    return out


def stop(pids: Iterable[int], *, grace: float = 2.0) -> list[int]:
    """SIGTERM, wait up to grace seconds, then SIGKILL what is left.
    Returns the pids that were signalled."""
    todo = sorted({p for p in pids if alive(p)})
    for pid in todo:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = todo
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if alive(p)]
    for pid in left:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if alive(p)]
    return todo


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def own_netns_inode() -> int:
    """The inode of the network namespace tracer itself runs in (the host's):
    never one to sweep."""
    return os.stat("/proc/self/ns/net").st_ino


def runs_in(pid: int | None, netns: str) -> bool:
    """pid is alive and its network namespace is the lab namespace netns."""
    inode = netdev.inode_of(netns)
    return pid is not None and inode is not None and alive(pid) and netns_inode(pid) == inode
