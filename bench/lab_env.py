"""The benchmark's use of the shared lab: the session lock, the lab itself
(brought to its default state), and CPU placement of its nginx processes.

The lab on a machine is shared between engineers and test runs, so every
phase that touches it holds /run/lock/tracer-lab-session.lock (flock, the
same lock `flock(1)` takes), only for that phase. Set
TRACER_LAB_LOCK_HELD=1 when the caller already holds it (a second flock from
a child would wait for its own parent)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_PATH = Path("/run/lock/tracer-lab-session.lock")


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    if os.environ.get("TRACER_LAB_LOCK_HELD") == "1":
        yield
        return
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench: waiting for {LOCK_PATH} (someone else is using the lab)",
                  file=sys.stderr, flush=True)
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            print(f"bench: got the lab after {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_lab():
    """The lab in its default state (shipped manifest, its replicas): taken
    as it is when a live check finds it healthy and default, else brought
    there by `up` (a repair or a build)."""
    from tracer.lab import controller, plan, status
    from tracer.lab.state import load_state

    st = status.status()
    default = st.manifest is not None and Path(st.manifest).resolve() == plan.DEFAULT_MANIFEST.resolve()
    state = load_state() if st.up else None
    if st.up and st.healthy and default and state is not None and state.replicas is None:
        return state
    return controller.up().state


def nginx_pids(state) -> list[int]:
    """Every nginx process of the lab's pods: masters and their workers."""
    masters = {p.nginx.pid for p in state.pods if p.nginx.pid}
    out = set(masters)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) in masters:  # ppid
                out.add(int(entry.name))
    return sorted(out)


TW_SYSCTL = "net.ipv4.tcp_max_tw_buckets"


def _sysctl(netns: str, key: str, value: str | None = None) -> str:
    from tracer.system import run

    if value is None:
        return run(["sysctl", "-n", key], netns=netns).stdout.strip()
    run(["sysctl", "-q", "-w", f"{key}={value}"], netns=netns)
    return value


@contextlib.contextmanager
def no_time_wait(state) -> Iterator[None]:
    """No TIME_WAIT sockets in the client and the pods for the body.

    With one client address, kube-proxy's `--random-fully` masquerade picks
    random source ports, and at ~25k new connections/s a SYN soon lands on a
    tuple that the pod (or, for connections wrk closes first, the client)
    still holds in TIME_WAIT. The pod then answers with an ACK, the client
    resets, and the SYN is retried 1 s later: throughput falls by 10x within
    seconds and the comparison measures that, not the tracer. Production
    load comes from many addresses; here tcp_max_tw_buckets=0 (closing
    sockets skip TIME_WAIT) stands in for that, and the TIME_WAIT sockets
    earlier traffic left are closed. The setting is restored afterwards."""
    from tracer.system import run

    namespaces = [state.client.netns, *(p.netns for p in state.pods)]
    before = {ns: _sysctl(ns, TW_SYSCTL) for ns in namespaces}
    try:
        for ns in namespaces:
            _sysctl(ns, TW_SYSCTL, "0")
            # Those left by earlier traffic (someone's test a minute ago)
            # would still collide: close them (SOCK_DESTROY, as `ss -K`).
            run(["ss", "-K", "state", "time-wait"], netns=ns, check=False)
        yield
    finally:
        for ns, value in before.items():
            with contextlib.suppress(Exception):
                _sysctl(ns, TW_SYSCTL, value)


@contextlib.contextmanager
def access_logs_kept(state) -> Iterator[None]:
    """Give the pods' access logs back as they were: a full benchmark sends
    tens of millions of requests, and nginx logs each one (~300 bytes), so
    the lines the body's traffic added are cut off again (nginx appends,
    O_APPEND; nothing else writes while the lab lock is held)."""
    logs = [Path(p.nginx.access_log) for p in state.pods]
    sizes = {}
    for log in logs:
        with contextlib.suppress(OSError):
            sizes[log] = log.stat().st_size
    try:
        yield
    finally:
        for log, size in sizes.items():
            with contextlib.suppress(OSError):
                if log.stat().st_size > size:
                    os.truncate(log, size)


@contextlib.contextmanager
def pinned(pids: list[int], cpus: set[int] | None) -> Iterator[None]:
    """Run the body with pids restricted to cpus (None: leave them be), and
    give every process its own affinity back afterwards."""
    if cpus is None:
        yield
        return
    before = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, cpus)
    try:
        yield
    finally:
        for pid, mask in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, mask)
