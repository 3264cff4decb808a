"""Helpers for capture tests against the real lab: run `tracer capture` as a
separate process (it enters a node's namespace for good), and read the
independent witnesses (kube-proxy rule counters, conntrack, BPF objects)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tracer.capture.live import READY_PREFIX

TRACER = [sys.executable, "-m", "tracer"]


@dataclass
class CaptureRun:
    proc: subprocess.Popen
    output: Path | None
    stderr_lines: list[str] = field(default_factory=list)
    stdout: str = ""
    returncode: int | None = None
    summary: dict | None = None

    def stop(self, sig: int | None = signal.SIGINT, timeout: float = 60) -> None:
        """Signal the capture (unless sig is None: already signalled) and wait."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.stdout = out or ""
        self.returncode = self.proc.returncode


def _pump(stream, lines: list[str], ready: threading.Event) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line.rstrip("\n"))
        if line.startswith(READY_PREFIX):
            ready.set()
    ready.set()


def _start(args: list[str], output: Path | None, summary_json: Path | None
           ) -> tuple[CaptureRun, threading.Event, threading.Thread]:
    argv = [*TRACER, "capture", *args, "--quiet"]
    if output is not None:
        argv += ["-o", str(output), "--force"]
    if summary_json is not None:
        argv += ["--summary-json", str(summary_json)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = CaptureRun(proc, output)
    ready = threading.Event()
    pump = threading.Thread(target=_pump, args=(proc.stderr, run.stderr_lines, ready), daemon=True)
    pump.start()
    return run, ready, pump


def _wait_ready(run: CaptureRun, ready: threading.Event, deadline: float) -> None:
    started = time.monotonic()
    if not ready.wait(max(0.0, deadline - started)) or run.proc.poll() is not None:
        exited = run.proc.poll()
        run.stop(signal.SIGKILL)
        # Say which it was: a capture that exited (its code; a negative one is
        # the signal that killed it, e.g. -9 from the OOM killer) or one still
        # compiling when the deadline passed.
        how = (f"exited {exited}" if exited is not None
               else f"not ready after {time.monotonic() - started:.0f} s")
        pytest.fail(f"capture did not start ({how}): " + "\n".join(run.stderr_lines), pytrace=False)


def _end(run: CaptureRun, pump: threading.Thread, stop_signal: int | None, summary_json: Path | None
         ) -> None:
    run.stop(stop_signal)
    pump.join(5)
    if summary_json is not None and summary_json.exists():
        run.summary = json.loads(summary_json.read_text())


@contextlib.contextmanager
def capture(args: list[str], output: Path | None = None, *, ready_timeout: float = 60,
            stop_signal: int = signal.SIGINT, summary_json: Path | None = None) -> Iterator[CaptureRun]:
    """`tracer capture ARGS -o output --quiet` in the background, ready when
    its probes are attached; stopped (SIGINT) when the block ends."""
    run, ready, pump = _start(args, output, summary_json)
    _wait_ready(run, ready, time.monotonic() + ready_timeout)
    try:
        yield run
    finally:
        _end(run, pump, stop_signal, summary_json)


@contextlib.contextmanager
def captures(specs: dict[str, tuple[list[str], Path | None]], *, ready_timeout: float = 60,
             stop_last_first: bool = False) -> Iterator[dict[str, CaptureRun]]:
    """Several captures started at once, so that their compiles overlap; the
    block runs when all are ready. All are stopped (SIGINT) when it ends:
    signalled together, once (a second SIGINT would cut a capture's shutdown
    short, as a second Ctrl-C does), then waited for.

    stop_last_first: stop them one by one instead, the last spec first, each
    ended before the next is signalled. Captures on a packet's path (node A
    then node B) want this: a packet still in flight as they stop (a late
    FIN or ACK from B back to A) is then either missing from B's capture or
    whole in A's, never seen leaving B and cut short on A."""
    started = {name: _start(args, output, None) for name, (args, output) in specs.items()}
    try:
        deadline = time.monotonic() + ready_timeout
        for run, ready, _ in started.values():
            _wait_ready(run, ready, deadline)
        yield {name: run for name, (run, _, _) in started.items()}
    finally:
        if stop_last_first:
            for run, _, pump in reversed(list(started.values())):
                _end(run, pump, signal.SIGINT, None)
        else:
            for run, _, _ in started.values():
                if run.proc.poll() is None:
                    run.proc.send_signal(signal.SIGINT)
            for run, _, pump in started.values():
                _end(run, pump, None, None)


def sh(netns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], check=True,
                          capture_output=True, text=True).stdout


def nstat(netns: str, counter: str) -> int:
    """A kernel SNMP counter of netns, absolute (nstat -a, no history kept)."""
    for line in sh(netns, "nstat", "-a", "-s", "-z", counter).splitlines():
        if line.split()[:1] == [counter]:
            return int(line.split()[1])
    raise AssertionError(f"{netns}: nstat has no {counter}")


_COUNTER = re.compile(r"^\[(\d+):(\d+)\] -A (KUBE-SEP-\w+) .*-j DNAT")


def sep_counters(netns: str) -> dict[str, int]:
    """Packets counted by each KUBE-SEP-* DNAT rule: one per new connection."""
    out = {}
    for line in sh(netns, "iptables-save", "-c", "-t", "nat").splitlines():
        m = _COUNTER.match(line)
        if m:
            out[m.group(3)] = int(m.group(1))
    return out


# A client connection, as a capture's DNAT choices show it: its pre-NAT tuple
# and the sequence number of its SYN. A retried SYN (after a TIME_WAIT clash
# behind MASQUERADE) repeats the number: one connection chosen twice. The
# client also gives a closed connection's source port to a new one within
# milliseconds, with a new number: two connections (tracer/analysis/key_figures.py).
CLIENT_TUPLE = ["saddr", "sport", "daddr", "dport"]
CONNECTION = [*CLIENT_TUPLE, "seq"]


def last_bindings(dnat):
    """Each client connection's last DNAT choice (rows with nat_kind dnat and
    nat_first): the binding that carried its request. In time order."""
    return dnat.sort_values("ts_ns").groupby(CONNECTION, observed=True).tail(1)


def client_connections(dnat) -> int:
    return len(last_bindings(dnat))


def in_conntrack(last):
    """Of last_bindings(), those conntrack still holds: one per client tuple,
    since a new SYN on a tuple whose entry is in TIME_WAIT replaces it."""
    return last.groupby(CLIENT_TUPLE, observed=True).tail(1)


_CT = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def conntrack_entries(netns: str, port: int) -> set[tuple[tuple, tuple]]:
    """(orig tuple, reply tuple) of every TCP conntrack entry whose original
    destination port is port."""
    text = subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-L", "-p", "tcp",
                           "--dport", str(port)], capture_output=True, text=True).stdout
    out = set()
    for line in text.splitlines():
        found = _CT.findall(line)
        if len(found) >= 2:
            orig, reply = found[0], found[1]
            out.add(((orig[0], int(orig[2]), orig[1], int(orig[3])),
                     (reply[0], int(reply[2]), reply[1], int(reply[3]))))
    return out


def netfilter_links() -> list[dict]:
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], check=True,
                                      capture_output=True, text=True).stdout or "[]")
    # Debian's bpftool 7.1 predates the name and prints BPF_LINK_TYPE_NETFILTER (10).
    return [link for link in links if link.get("type") in ("netfilter", 10)]


def bpf_objects() -> tuple[set[int], set[int]]:
    """Ids of every BPF program and link on the machine."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True, text=True).stdout or "[]")
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], check=True,
                                      capture_output=True, text=True).stdout or "[]")
    return {p["id"] for p in progs}, {link["id"] for link in links}


def wait_until(predicate, timeout: float = 10.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
