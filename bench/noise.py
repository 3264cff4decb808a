"""How busy the machine was with other people's work during a benchmark.

The machines are shared: another engineer's test run or VM on the same two
CPUs moves every figure. The harness cannot prevent that, so it reports it:
CPU seconds used by processes that are neither the harness (and its
children), the lab's daemons nor kernel threads, between two snapshots of
/proc (processes that start and end in between are not seen), and, for one
CPU, the time it spent on anything but a given process (cpu_foreign)."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _snapshot() -> dict[int, tuple[str, int, float]]:
    """pid -> (command, parent pid, CPU seconds so far)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry.name)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def _ours(snap: dict[int, tuple[str, int, float]], root: int) -> set[int]:
    mine = {root}
    changed = True
    while changed:
        changed = False
        for pid, (_, ppid, _) in snap.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return mine


class Noise:
    LAB = ("nginx", "bird")

    def __init__(self) -> None:
        self.start = _snapshot()
        self.load_start = os.getloadavg()[0]

    def report(self) -> dict:
        end = _snapshot()
        mine = _ours(end, os.getpid())
        others: dict[str, float] = {}
        for pid, (comm, ppid, cpu) in end.items():
            # Kernel threads (children of kthreadd, pid 2) are left out: much
            # of their work (softirqs, writeback) is the benchmark's own.
            if pid in mine or comm.startswith(self.LAB) or pid == 2 or ppid == 2:
                continue
            # A process started since the first snapshot: all its time is ours to count.
            used = cpu - self.start[pid][2] if pid in self.start else cpu
            if used > 0.05:
                others[comm] = others.get(comm, 0.0) + used
        top = sorted(others.items(), key=lambda kv: -kv[1])[:5]
        return {"other_cpu_s": round(sum(others.values()), 1),
                "top_other": {k: round(v, 1) for k, v in top},
                "loadavg_1m_start": round(self.load_start, 2),
                "loadavg_1m_end": round(os.getloadavg()[0], 2)}


def cpu_busy_s(cpu: int) -> float:
    """Seconds CPU `cpu` was not idle since boot (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / TICK  # all but idle and iowait
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process (all its threads) so far; 0 once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuForeign:
    """Time a CPU spent on anything but one process, between start() and
    stop(): how much of the tracer's CPU somebody else took."""

    def __init__(self, cpu: int, pid: int):
        self.cpu, self.pid = cpu, pid
        self.busy0 = cpu_busy_s(cpu)
        self.own0 = process_cpu_s(pid)

    def seconds(self) -> float:
        return max(0.0, (cpu_busy_s(self.cpu) - self.busy0) - (process_cpu_s(self.pid) - self.own0))
