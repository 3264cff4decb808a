"""Capture throughput: the highest event rate the tracer records to its
capture file with zero loss, and the loss it reports above that rate.

The offered load comes from bench/blaster.py in the node's pod (a fixed path
that gives exactly EVENTS_PER_PACKET matching events per packet), so the
offered count is known without the tracer: offered = 3 x packets sent. Each
rung of the ladder is its own capture (fresh ring buffer and counters):
start the tracer, wait until attached, blast N packets at a paced rate, stop
the tracer, then compare offered with the rows in the capture file and the
loss the tracer's in-kernel counters report.

Placement: the blaster (and so the kernel's packet processing and the BPF
programs, which run on the sending CPU) on CPU 0, the tracer on CPU 1: the
figure is what one CPU of consumer can record.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.blaster import EVENTS_PER_PACKET
from bench.lab_env import ensure_lab, lab_lock
from bench.noise import CpuForeign
from bench.stats import ladder_step
from bench.tracer_proc import TracerRun

BLASTER = Path(__file__).resolve().parent / "blaster.py"
GEN_CPUS, TRACER_CPUS = {0}, {1}


def blast(state, rate_pps: float, packets: int, cpus: set[int] = GEN_CPUS) -> dict[str, Any]:
    from tracer.system import run

    pod = next(p for p in state.pods if p.node == state.nodes[0].name)
    argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), sys.executable, str(BLASTER),
            "--addr", pod.ip, "--port", str(pod.ports[0]), "--rate", str(rate_pps),
            "--packets", str(packets)]
    out = run(argv, netns=pod.netns, timeout=packets / rate_pps + 60).stdout
    return json.loads(out.strip().splitlines()[-1])


# A rung that lost events while another process took more than this share of
# the tracer's CPU is run again (up to ATTEMPTS times): the shared machines
# have other engineers' VMs and test runs on them, and what is measured here
# is what one CPU of consumer can do.
DISTURBED_SHARE = 0.10
ATTEMPTS = 3


def blast_traced(state, tracer: TracerRun, pps: float, packets: int
                 ) -> tuple[dict[str, Any], dict[str, Any], int, float]:
    """Start the tracer, blast `packets` at `pps`, stop it: (what the blaster
    sent, the tracer's summary document, events in its capture file, seconds
    other processes took on the tracer's CPU meanwhile)."""
    try:
        tracer.start()
        assert tracer.proc is not None
        foreign = CpuForeign(min(TRACER_CPUS), tracer.proc.pid)
        sent = blast(state, pps, packets)
        foreign_s = foreign.seconds()
        doc = tracer.stop()
        recorded = tracer.recorded_events()
    finally:
        tracer.cleanup()
    return sent, doc, recorded, foreign_s


def _rung(state, rate: float, seconds: float, service: str, netns: str,
          ringbuf_mb: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    pps = rate / EVENTS_PER_PACKET
    tracer = TracerRun(service=service, netns=netns, mode="events", cpus=TRACER_CPUS,
                       ringbuf_mb=ringbuf_mb)
    sent, doc, recorded, foreign_s = blast_traced(state, tracer, pps, int(pps * seconds))
    stats = doc["stats"]
    step = ladder_step(offered=sent["packets"] * EVENTS_PER_PACKET, recorded=recorded,
                       lost=stats["lost"], kernel_events=stats["events_kernel"],
                       seconds=sent["seconds"])
    step.update(target_per_s=rate, blaster=sent, lost_by_probe=stats["lost_by_probe"],
                by_probe=doc["summary"]["by_probe"], foreign_cpu_s=round(foreign_s, 2),
                disturbed=foreign_s > DISTURBED_SHARE * sent["seconds"])
    return step, doc


def ladder(*, rates: Sequence[float], seconds: float, service: str, netns: str,
           ringbuf_mb: int | None = None,
           log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """(steps, tracer summaries); rates are offered events per second. The
    ladder stops after the second lossy rung (higher rates only lose more)."""
    steps: list[dict[str, Any]] = []
    tracers: list[dict[str, Any]] = []
    lossy = 0
    for rate in rates:
        attempts = []
        for _ in range(ATTEMPTS):
            with lab_lock():
                step, doc = _rung(ensure_lab(), rate, seconds, service, netns, ringbuf_mb)
            tracers.append(doc)
            attempts.append({"lost": step["lost"], "foreign_cpu_s": step["foreign_cpu_s"]})
            log(f"  offered {step['offered_per_s']:>11,.0f}/s  recorded {step['recorded']:>10,}  "
                f"lost {step['lost']:>9,}  unaccounted {step['unaccounted']}  "
                f"(others on the tracer's CPU: {step['foreign_cpu_s']:.1f}s"
                f"{', disturbed' if step['disturbed'] else ''})")
            if not (step["lost"] and step["disturbed"]):
                break
        step["attempts"] = attempts
        steps.append(step)
        if step["lost"]:
            lossy += 1
            if lossy >= 2:
                break
    return steps, tracers


def overload(*, packets: int, service: str, netns: str,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """More than the tracer can take, to see the loss it reports and that
    offered = recorded + lost still holds: one unpaced blaster on CPU 0 as in
    the ladder, and a second on CPU 1, the tracer's own CPU, which leaves
    the consumer part of a CPU. (One blaster alone cannot outrun the tracer.)"""
    with lab_lock():
        state = ensure_lab()
        tracer = TracerRun(service=service, netns=netns, mode="events", cpus=TRACER_CPUS)
        try:
            tracer.start()
            with ThreadPoolExecutor(2) as pool:
                runs = list(pool.map(lambda cpu: blast(state, 1e9, packets, {cpu}), (0, 1)))
            doc = tracer.stop()
            recorded = tracer.recorded_events()
        finally:
            tracer.cleanup()
    sent = sum(r["packets"] for r in runs)
    seconds = max(r["seconds"] for r in runs)
    stats = doc["stats"]
    step = ladder_step(offered=sent * EVENTS_PER_PACKET, recorded=recorded, lost=stats["lost"],
                       kernel_events=stats["events_kernel"], seconds=seconds)
    step.update(blasters=runs, lost_by_probe=stats["lost_by_probe"])
    log(f"  overload: offered {step['offered_per_s']:,.0f}/s  recorded {step['recorded']:,}  "
        f"lost {step['lost']:,} ({100 * step['loss_fraction']:.1f}%)  unaccounted {step['unaccounted']}")
    return step
