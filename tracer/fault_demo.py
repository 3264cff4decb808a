"""`tracer demo --fault KIND`: the broken-Service story, whole, on the lab.

1. the lab in the mode the fault needs (`tracer lab up`, `--encap vxlan` for
   mtu-blackhole), with no other fault in effect;
2. the fault injected (`tracer lab fault add KIND`);
3. a capture of Service nginx-demo-1 on each node, with --rules (the
   netfilter rules its packets walk), while the lab client sends
   requests to the external IP, one connection each, with a short timeout
   (a broken connection costs 1.5 s, not five);
4. the captures stopped one by one, the last node first (a packet still in
   flight is then whole in node A's capture or missing from node B's, never
   cut short), after the settle time `diagnose` needs to call a connection
   unanswered (tracer.analysis.outcomes.SETTLE_NS);
5. `tracer diagnose` on both captures: diagnosis.txt and diagnosis.json;
6. the fault cleared, always, and the same requests sent again: what the
   client sees once it is gone.

Output directory (default out/demo-fault-KIND): captures/<node>/ and
captures/<node>.log, diagnosis.txt, diagnosis.json, summary.json."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.analysis.commands import to_json
from tracer.analysis.diagnose import Diagnosis, diagnose
from tracer.analysis.diagnose_text import format_text
from tracer.analysis.outcomes import FAILED, SETTLE_NS
from tracer.demo import (
    SERVICE,
    TARGET,
    Steps,
    check_exits,
    prepare,
    start_captures,
    stop_last_first,
)
from tracer.errors import UsageError
from tracer.lab import controller
from tracer.lab.fault_kinds import KINDS
from tracer.lab.faults import Fault, FaultKind
from tracer.lab.state import LabState
from tracer.lab.traffic import TrafficResult, run_traffic
from tracer.safe_output import write_text
from tracer.system import require_root, run

# Between TCP's SYN retransmissions (1 s, then 3 s later): an ICMP error for
# the retransmitted SYN reaches the client before it gives up, so the client
# and the capture tell the same story.
REQUEST_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class FaultDemoOptions:
    kind: str
    out: Path | None = None  # default out/demo-fault-KIND
    requests: int = 40
    concurrency: int = 4
    ready_timeout_s: float = 90.0

    @property
    def out_dir(self) -> Path:
        return self.out or Path(f"out/demo-fault-{self.kind}")


@dataclass
class FaultDemoResult:
    kind: FaultKind
    fault: Fault
    out: Path
    captures: dict[str, Path]
    broken: TrafficResult
    diagnosis: Diagnosis
    after_clear: TrafficResult
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def diagnosed_failures(self) -> int:
        return sum(self.diagnosis.connections.get(o, 0) for o in FAILED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": {"kind": self.kind.name, "family": self.kind.family, "node": self.fault.node,
                      "pod": self.fault.pod, "detail": self.fault.detail},
            "out": str(self.out),
            "captures": {k: str(v) for k, v in self.captures.items()},
            "traffic_with_fault": self.broken.to_dict(),
            "diagnosis": self.diagnosis.to_dict(),
            "traffic_after_clear": self.after_clear.to_dict(),
            "steps_s": {k: round(v, 3) for k, v in self.steps.items()},
        }


def _kind(name: str) -> FaultKind:
    if name not in KINDS:
        raise UsageError(f"unknown fault {name!r} (one of {', '.join(KINDS)})")
    return KINDS[name]


def _forget_connections(state: LabState) -> None:
    """Empty every node's conntrack table: a client port reused from an
    earlier run whose entry still holds its NAT binding would take the old
    path past the fault's rules (conntrack sends an established flow's
    packets by its entry, not by the rules), and the story would not be
    the fault's alone."""
    for node in state.nodes:
        run(["conntrack", "-F"], netns=node.netns, check=False)


def _traffic(opts: FaultDemoOptions, kind: FaultKind) -> TrafficResult:
    return run_traffic(requests=opts.requests, concurrency=opts.concurrency, target=TARGET,
                       timeout=REQUEST_TIMEOUT_S, path=kind.demo_path)


def _captured_traffic(opts: FaultDemoOptions, kind: FaultKind, state: LabState, out: Path,
                      step: Steps) -> TrafficResult:
    with step("attach", f"starting captures of {SERVICE} on each node, with --rules"):
        procs = start_captures(state, out, opts.ready_timeout_s, extra=("--rules",))
    try:
        with step("traffic", f"traffic: {opts.requests} requests to {kind.demo_path} "
                             f"(timeout {REQUEST_TIMEOUT_S:g} s each)"):
            broken = _traffic(opts, kind)
            time.sleep(SETTLE_NS / 1e9 + 0.5)
    finally:
        with step("stop", "stopping the captures, the last node first"):
            codes = stop_last_first(procs)
    check_exits(procs, codes)
    return broken


def run_fault_demo(opts: FaultDemoOptions,
                   progress: Callable[[str], None] = lambda s: None) -> FaultDemoResult:
    kind = _kind(opts.kind)
    if opts.requests < 1:
        raise UsageError("--requests must be at least 1")
    require_root("tracer demo")
    out = prepare(opts.out_dir)
    step = Steps(progress)
    with step("lab", f"lab up (encapsulation: {kind.demo_encap}), no fault in effect"):
        state = controller.up(encap=kind.demo_encap).state
        controller.clear_faults()
    captures = {n.netns: out / "captures" / n.netns for n in state.nodes}
    with step("inject", f"injecting {kind.name}: {kind.summary}"):
        fault = controller.add_fault(kind.name)
    try:
        _forget_connections(state)
        broken = _captured_traffic(opts, kind, state, out, step)
    finally:
        with step("clear", f"clearing {kind.name}"):
            controller.clear_faults(kind.name)
    with step("diagnose", "tracer diagnose on both captures"):
        found = diagnose(list(captures.values()))
        write_text(out / "diagnosis.txt", format_text(found) + "\n")
        write_text(out / "diagnosis.json", to_json(found.to_dict(), indent=1) + "\n")
    with step("after", "the same requests with the fault cleared"):
        after = _traffic(opts, kind)
    result = FaultDemoResult(kind=kind, fault=fault, out=out, captures=captures, broken=broken,
                             diagnosis=found, after_clear=after, steps=step.seconds)
    write_text(out / "summary.json", to_json(result.to_dict(), indent=1) + "\n")
    return result


def _client_line(t: TrafficResult) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(t.errors.items()))
    return f"{t.requested} requests to {t.url}: {t.ok} answered, {t.failed} failed" + (
        f" ({errors})" if errors else "")


def format_fault_result(r: FaultDemoResult) -> str:
    agree = ("agrees with the client" if r.diagnosed_failures == r.broken.failed
             else f"<- the client saw {r.broken.failed}")
    caps = " ".join(str(p) for p in r.captures.values())
    lines = [
        f"tracer demo --fault {r.kind.name}: {r.kind.summary}",
        f"  injected: {r.fault.describe()}",
        f"client, with the fault: {_client_line(r.broken)}",
        f"tracer diagnose {caps}   ({r.diagnosed_failures} failed connections: {agree})",
        *("  " + line for line in format_text(r.diagnosis).splitlines()),
        f"client, after `tracer lab fault clear {r.kind.name}`: {_client_line(r.after_clear)}",
        f"diagnosis: {r.out / 'diagnosis.txt'} (and .json); captures: {caps}",
        f"took {sum(r.steps.values()):.1f} s; the lab stays up (`tracer lab down` removes it)",
    ]
    return "\n".join(lines)
