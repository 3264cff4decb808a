"""Data-path overhead: HTTP through the Service's external IP with wrk from
the lab's client, tracer off vs `--mode hist` vs full event mode, in
alternating rounds.

CPU placement. The machine has two CPUs for wrk, both nginx pods, the
kernel's packet processing and the tracer. Two placements are measured:
  isolated  wrk and nginx (and with them all packet processing and the BPF
            programs, which run in the softirq of the CPU that sends) on CPU
            0; the tracer process on CPU 1, idle when the tracer is off. The
            ratio is the cost the probes add to the data path.
  shared    nothing pinned: the tracer's user-space consumer competes with
            wrk and nginx for the same two CPUs, as on a saturated node.
The two vCPUs are not independent, though: with wrk and nginx on CPU 0, a
plain busy loop on CPU 1 costs them ~8% of keep-alive throughput and 2-4%
of new-connection throughput (measured on these VMs; the vCPUs seem to share
a physical core). So the isolated event-mode ratio also carries the
consumer's indirect cost; the histogram mode's consumer is idle.

New connections: bench/lab_env.py no_time_wait() says why TIME_WAIT is off
in the client and the pods during these runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from bench.empty_probes import empty_probes
from bench.lab_env import access_logs_kept, ensure_lab, lab_lock, nginx_pids, no_time_wait, pinned
from bench.tracer_proc import TracerRun

PLACEMENTS: dict[str, tuple[set[int] | None, set[int] | None]] = {
    # placement -> (CPUs of wrk and nginx, CPUs of the tracer)
    "isolated": ({0}, {1}),
    "shared": (None, None),
}
CONNECTIONS = {"close": 16, "keepalive": 16}
# What each placement runs per round, in order. The empty-program floors
# (bench/empty_probes.py) only where the ratio is the data path's cost.
STATES_RUN = {
    "isolated": ("off", "empty_hist", "hist", "empty_events", "events"),
    "shared": ("off", "hist", "events"),
}


def wrk_run(state, traffic: str, seconds: int, cpus: set[int] | None) -> dict[str, Any]:
    from tracer.lab.traffic import parse_wrk
    from tracer.system import run

    svc = next(s for s in state.services if s.external_ips)
    url = f"http://{svc.external_ips[0]}:{svc.port}/"
    argv = ["wrk", "-t", "2", "-c", str(CONNECTIONS[traffic]), "-d", f"{seconds}s",
            "--latency", "--timeout", "5s"]
    if traffic == "close":
        argv += ["-H", "Connection: close"]
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    t0 = time.monotonic()
    proc = run([*argv, url], netns=state.client.netns, timeout=seconds + 30)
    t = (t0 + time.monotonic()) / 2  # when it ran, for untraced_at() in bench/stats.py
    report = parse_wrk(proc.stdout)
    errors = sum(report["errors"].values()) + report["non2xx"]
    return {"rps": report["requests"] / report["seconds"], "p99_ms": report["latency_ms"].get("p99"),
            "p50_ms": report["latency_ms"].get("p50"), "requests": report["requests"],
            "errors": errors, "t": t}


def run_overhead(*, rounds: int, seconds: int, service: str, netns: str,
                 placements: tuple[str, ...] = ("isolated", "shared"),
                 log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(wrk runs, tracer runs' summaries). One round = for each placement:
    its STATES_RUN (off, hist, events, and in the isolated placement the
    empty-program floors), each running both traffic shapes; one more off run
    per placement closes the last round, so that every traced run lies
    between two untraced ones (bench/stats.py compares it with the untraced
    throughput of its own time). The lock is held per round, so others can
    use the lab between rounds."""
    runs: list[dict[str, Any]] = []
    tracers: list[dict[str, Any]] = []
    for rnd in range(rounds + 1):
        with lab_lock():
            state = ensure_lab()
            pids = nginx_pids(state)
            for placement in placements:
                load_cpus, tracer_cpus = PLACEMENTS[placement]
                with access_logs_kept(state), no_time_wait(state), pinned(pids, load_cpus):
                    for tracer_state in STATES_RUN[placement] if rnd < rounds else ("off",):
                        tracer = None
                        floor = contextlib.nullcontext()
                        if tracer_state.startswith("empty_"):
                            floor = empty_probes(netns, tracer_state.removeprefix("empty_"))
                        elif tracer_state != "off":
                            tracer = TracerRun(service=service, netns=netns, mode=tracer_state,
                                               cpus=tracer_cpus, output=tracer_state == "events")
                            tracer.start()
                        try:
                            with floor:
                                for traffic in ("close", "keepalive"):
                                    r = wrk_run(state, traffic, seconds, load_cpus)
                                    r.update(round=rnd, placement=placement, state=tracer_state,
                                             traffic=traffic)
                                    runs.append(r)
                                    log(f"  round {rnd} {placement:<8} {tracer_state:<12} {traffic:<9} "
                                        f"{r['rps']:9.0f} req/s  p99 {r['p99_ms']} ms")
                            if tracer is not None:
                                doc = tracer.stop()
                                doc["placement"], doc["round"] = placement, rnd
                                tracers.append(doc)
                                stats = doc["stats"]
                                log(f"    tracer {tracer_state}: {stats['events']} events, "
                                    f"lost {stats['lost']}")
                        finally:
                            if tracer is not None:
                                tracer.cleanup()
                time.sleep(0.2)
    return runs, tracers
