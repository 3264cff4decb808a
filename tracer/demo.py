"""`tracer demo`: the whole job once, on the built-in lab.

1. the lab, as the shipped manifest describes it (`tracer lab up`);
2. a capture of Service nginx-demo-1 on each node, as two `tracer capture`
   processes (each enters its node's network namespace), awaited until both
   say their probes are attached;
3. real HTTP traffic from the lab's client to the Service's external IP (the
   seed article's path: node A DNATs, half the connections cross to node B):
   one new connection per request, then a few keep-alive connections;
4. the captures stopped with SIGINT (always, whatever failed), merged on one
   clock (`tracer correlate`) and written up (`tracer report`);
5. a summary: requests, DNAT choices per endpoint against the promised share
   and against the lab's own counts (KUBE-SEP rule counters, nginx access
   logs), NAT hook time first vs established, the clock offset estimate.

Output directory (default out/demo): captures/<node>/ and captures/<node>.log,
merged/, report/report.html (+ .md, PNGs), summary.json."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.analysis.commands import to_json
from tracer.analysis.correlate import MergeResult, merge
from tracer.analysis.key_figures import Summary, fmt_us, summarize
from tracer.analysis.report import build as build_report
from tracer.capture.child_process import CaptureProcess
from tracer.errors import TracerError, UsageError
from tracer.lab import controller, witness
from tracer.lab.state import LabState
from tracer.lab.traffic import TrafficResult, run_traffic
from tracer.safe_output import output_dir, write_text
from tracer.system import require_root

DEFAULT_OUT = Path("out/demo")
SERVICE = "nginx-demo-1"
TARGET = "external-ip"


class DemoError(TracerError):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True)
class DemoOptions:
    out: Path = DEFAULT_OUT
    requests: int = 400  # one new connection each
    keepalive_requests: int = 100
    keepalive_connections: int = 4  # fewer when there are fewer keep-alive requests
    concurrency: int = 4
    ready_timeout_s: float = 90.0


@dataclass
class DemoResult:
    out: Path
    captures: dict[str, Path]
    merged: MergeResult
    report: Path  # report.html
    summary: Summary
    traffic: list[TrafficResult]
    witnessed: witness.Witnessed
    target: str
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds

    @property
    def seconds(self) -> float:
        return sum(self.steps.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "captures": {k: str(v) for k, v in self.captures.items()},
            "merged": str(self.merged.path),
            "report": str(self.report),
            "target": self.target,
            "summary": self.summary.to_dict(),
            "correlation": self.merged.to_dict(),
            "traffic": [t.to_dict() for t in self.traffic],
            "witnesses": {"kube_sep_dnat": self.witnessed.dnat, "nginx_served": self.witnessed.served,
                          "nginx_served_by_pod": self.witnessed.served_by_pod},
            "steps_s": {k: round(v, 3) for k, v in self.steps.items()},
        }


def _validate(opts: DemoOptions) -> None:
    if opts.requests < 1:
        raise UsageError("--requests must be at least 1")
    if opts.keepalive_requests < 0:
        raise UsageError("--keepalive-requests must be 0 or more")
    if opts.keepalive_connections < 1:
        raise UsageError("keep-alive connections must be at least 1")


def prepare(out: Path) -> Path:
    """out/ and out/captures/: created 0700, or existing ones of the caller's
    that nobody else can write (tracer.safe_output); each run's files replace
    the last run's only when complete."""
    with output_dir(out) as d, d.subdir("captures"):
        pass
    return out


class Steps:
    """Times each step and reports it as it starts."""

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, text: str):
        self.progress(f"demo: {text}")
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - t0


def start_captures(state: LabState, out: Path, timeout_s: float,
                   extra: tuple[str, ...] = ()) -> list[CaptureProcess]:
    procs: list[CaptureProcess] = []
    try:
        for node in state.nodes:
            procs.append(CaptureProcess(
                node.netns, ["--svc", SERVICE, "--netns", node.netns, *extra],
                out / "captures" / node.netns, out / "captures" / f"{node.netns}.log",
            ))
        deadline = time.monotonic() + timeout_s
        for p in procs:  # they attach in parallel; wait for the slower
            p.wait_ready(deadline)
    except BaseException:
        _stop_all(procs)
        raise
    return procs


def _stop_all(procs: list[CaptureProcess]) -> list[int]:
    for p in procs:  # signal all first: they finish in parallel
        p.signal()
    return [p.wait() for p in procs]


def stop_last_first(procs: list[CaptureProcess]) -> list[int]:
    """Stop the captures one by one, the last node first, each ended before
    the next is signalled: a packet in flight between the nodes as they stop
    is then whole in the first node's capture or missing from the last's,
    never seen leaving one and cut short on the other (tracer diagnose would
    call it lost). Exit statuses in procs' order."""
    codes = {}
    for p in reversed(procs):
        p.signal()
        codes[id(p)] = p.wait()
    return [codes[id(p)] for p in procs]


def check_exits(procs: list[CaptureProcess], codes: list[int]) -> None:
    failed = [(p, c) for p, c in zip(procs, codes, strict=True) if c != 0]
    if failed:
        p, code = failed[0]
        raise DemoError(f"capture on {p.name} ended with exit status {code}: {p.last_error()} "
                        f"(log: {p.log})")


def _traffic(opts: DemoOptions, state: LabState) -> list[TrafficResult]:
    runs = [run_traffic(requests=opts.requests, concurrency=opts.concurrency, target=TARGET,
                        state=state)]
    if opts.keepalive_requests:
        runs.append(run_traffic(requests=opts.keepalive_requests, target=TARGET, keepalive=True,
                                concurrency=min(opts.keepalive_connections, opts.keepalive_requests),
                                state=state))
    return runs


def run_demo(opts: DemoOptions, progress: Callable[[str], None] = lambda s: None) -> DemoResult:
    _validate(opts)
    require_root("tracer demo")
    out = prepare(opts.out)
    step = Steps(progress)

    with step("lab", "lab up (the seed's two nodes, shipped manifest)"):
        state = controller.up().state
    captures = {n.netns: out / "captures" / n.netns for n in state.nodes}
    with step("attach", f"starting captures of {SERVICE} on {', '.join(captures)}"):
        procs = start_captures(state, out, opts.ready_timeout_s)
    try:
        mark = witness.mark(state, SERVICE)
        with step("traffic", f"traffic: {opts.requests} requests on new connections + "
                             f"{opts.keepalive_requests} keep-alive requests to the external IP"):
            traffic = _traffic(opts, state)
            time.sleep(0.3)  # the last packets' events reach the ring buffers
    finally:
        with step("stop", "stopping captures (SIGINT)"):
            codes = _stop_all(procs)
    check_exits(procs, codes)
    witnessed = witness.since(state, SERVICE, mark)

    with step("correlate", "correlating the captures on one clock"):
        merged = merge(list(captures.values()), out / "merged", overwrite=True)
    with step("report", "writing the report"):
        md = build_report([merged.path], out / "report", force=True)
        summary = summarize([merged.path])
    result = DemoResult(
        out=out, captures=captures, merged=merged, report=md.with_suffix(".html"),
        summary=summary, traffic=traffic, witnessed=witnessed, steps=step.seconds,
        target=traffic[0].url,
    )
    write_text(out / "summary.json", to_json(result.to_dict(), indent=1) + "\n")
    return result


# ---------------------------------------------------------------- text


def _agree(a: int, b: int) -> str:
    return "" if a == b else "  <- differs"


def format_result(r: DemoResult) -> str:
    s = r.summary
    sent = sum(t.requested or 0 for t in r.traffic)
    ok = sum(t.ok for t in r.traffic)
    conns = sum(t.connections for t in r.traffic)
    served = sum(r.witnessed.served.values())
    lines = [
        f"tracer demo: Service {s.service}, {r.target} from the lab client, "
        f"captured on {' and '.join(s.nodes)}",
        f"  events {s.events}, lost {s.lost}",
        f"requests: {sent} sent, {ok} answered; seen in the capture {s.requests}; "
        f"nginx access logs {served}",
        f"connections: {conns} opened by the client; {s.client_connections} client connections and "
        f"{s.dnat_choices} DNAT choices in the capture; KUBE-SEP counters "
        f"{sum(r.witnessed.dnat.values())}",
    ]
    if s.rebound:
        lines.append(
            f"  {s.rebound} connection(s) chosen twice: MASQUERADE --random-fully picked a source "
            "port the pod still held in TIME_WAIT, the pod answered the SYN with an ACK, the "
            "client reset, and its retried SYN got a new NAT binding"
        )
    lines.append("DNAT choices per endpoint (capture vs KUBE-SEP counters; share vs promised):")
    width = max((len(e.endpoint) for e in s.endpoints), default=8)
    for e in s.endpoints:
        sep = r.witnessed.dnat.get(e.endpoint, 0)
        nginx = r.witnessed.served.get(e.endpoint, 0)
        lines.append(
            f"  {e.endpoint:<{width}}  {e.node or '?':<10}  dnat {e.dnat_choices:>5} "
            f"(rules {sep:>5})  share {100 * e.share:5.1f}% (promised {100 * e.promised_share:5.1f}%)"
            f"  requests {e.requests:>5} (nginx {nginx:>5}){_agree(e.dnat_choices, sep)}"
            f"{_agree(e.requests, nginx)}"
        )
    verdict = "consistent with" if s.chi_square_p >= 0.05 else "deviates from"
    lines.append(f"  chi-square p = {s.chi_square_p:.3g}, Jain index {s.jain_index:.4f}: "
                 f"{verdict} the promised shares")
    lines.append(
        f"  requests per DNAT choice: mean {s.requests_per_connection_mean:.2f}, max "
        f"{s.requests_per_connection_max:g} (a keep-alive connection takes all its requests to "
        "the endpoint chosen for its first packet)"
    )
    lines.append("NAT hook time (p50 / p99), first packet of a connection vs established:")
    for n in s.nat:
        lines.append(
            f"  {n.node} {n.kind.upper():<4} {n.hook:<11}  first {fmt_us(n.first_p50_ns)} / "
            f"{fmt_us(n.first_p99_ns)} (n={n.first_count})  established "
            f"{fmt_us(n.established_p50_ns)} / {fmt_us(n.established_p99_ns)} "
            f"(n={n.established_count})"
        )
    for c in s.clocks:
        if c.reference:
            continue
        ref = next((x.node for x in s.clocks if x.reference), "the reference")
        lines.append(
            f"clock: {c.node} offset {c.offset_ns / 1e3:+.2f} us +/- {fmt_us(c.uncertainty_ns)} "
            f"relative to {ref} (estimated from {c.crossing_packets} crossing packets)"
        )
    lines += [
        f"report: {r.report}  (and report.md, PNGs)",
        f"captures: {', '.join(str(p) for p in r.captures.values())}; merged: {r.merged.path}",
        f"took {r.seconds:.1f} s; the lab stays up (`tracer lab down` removes it)",
    ]
    return "\n".join(lines)
