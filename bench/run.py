"""The benchmark of issue 5: tracing overhead, capture throughput, start-up,
analysis and memory, on the lab. `sudo make bench` (full, ~12 min) or
`sudo make bench-quick` (the same measurements, shorter, under 2 min).

    .venv/bin/python bench/run.py [--quick] [--json FILE]

Progress goes to stderr; the last line of stdout is one JSON object (keys in
bench/stats.py REQUIRED_KEYS, plus the details). The lab is shared: each
lab phase holds /run/lock/tracer-lab-session.lock only while it runs
(bench/lab_env.py), and leaves the lab in its default state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import stats  # noqa: E402
from bench.memory import run_memory  # noqa: E402
from bench.noise import Noise  # noqa: E402
from bench.overhead import run_overhead  # noqa: E402
from bench.throughput import ladder, overload  # noqa: E402

SERVICE, NETNS = "nginx-demo-1", "lab-node-a"


@dataclass(frozen=True)
class Plan:
    rounds: int  # overhead: alternating rounds (off, hist, events) x placements
    wrk_s: int  # seconds per wrk run
    rates: tuple[float, ...]  # capture throughput ladder, offered events/s
    rung_s: float  # seconds per rung
    memory_rate: float
    memory_s: float
    overload_packets: int  # per blaster


FULL = Plan(rounds=5, wrk_s=8, rates=(5e5, 1e6, 1.25e6, 1.5e6, 1.75e6, 2e6, 2.25e6, 2.5e6), rung_s=10,
            memory_rate=1e6, memory_s=60, overload_packets=4_000_000)
QUICK = Plan(rounds=3, wrk_s=1, rates=(5e5, 1e6, 1.5e6, 2e6), rung_s=3,
             memory_rate=1e6, memory_s=15, overload_packets=1_000_000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    return {"kernel": platform.release(), "cpu": model, "cores": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version()}


def analysis() -> dict:
    """bench/analysis_bench.py in its own process (no lab, no lock)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "analysis_bench.py")],
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup_summary(docs: list[dict]) -> dict:
    first = [d["harness"].get("first_attach_s") for d in docs]
    every = [d["harness"].get("all_attached_s") for d in docs]
    compile_s = [d.get("startup", {}).get("compile_s") for d in docs]
    session = [d["harness"].get("session_start_s") for d in docs]
    def r(x):
        return None if x is None else round(x, 3)
    return {
        "runs": len(docs),
        "first_attach_s_median": r(stats.median(first)),
        "all_attached_s_median": r(stats.median(every)),
        "all_attached_s_max": r(max((v for v in every if v is not None), default=None)),
        "compile_s_median": r(stats.median(compile_s)),
        "python_and_imports_s_median": r(stats.median(session)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs (under two minutes)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if os.geteuid() != 0:
        sys.exit("bench: needs root (BPF, network namespaces): sudo make bench")
    t0 = time.monotonic()
    noise = Noise()

    log(f"bench: overhead, {plan.rounds} alternating rounds of {plan.wrk_s}s wrk runs")
    runs, overhead_docs = run_overhead(rounds=plan.rounds, seconds=plan.wrk_s, service=SERVICE,
                                       netns=NETNS, log=log)
    overhead = stats.overhead_summary(runs)

    log(f"bench: capture throughput ladder, {plan.rung_s:g}s per rate")
    steps, ladder_docs = ladder(rates=plan.rates, seconds=plan.rung_s, service=SERVICE, netns=NETNS,
                                log=log)
    throughput = stats.ladder_summary(steps)
    over = overload(packets=plan.overload_packets, service=SERVICE, netns=NETNS, log=log)
    if throughput["loss_above"] is None and over["lost"]:
        throughput["loss_above"] = {"offered_per_s": over["offered_per_s"],
                                    "loss_fraction": over["loss_fraction"], "lost": over["lost"],
                                    "note": "overload run: a second blaster on the tracer's CPU"}
    throughput["accounting_ok"] = throughput["accounting_ok"] and over["accounted"]

    log(f"bench: memory, {plan.memory_s:g}s at {plan.memory_rate:,.0f} events/s")
    memory, memory_doc = run_memory(rate=plan.memory_rate, seconds=plan.memory_s, service=SERVICE,
                                    netns=NETNS, log=log)

    log("bench: analysis of 1M events")
    analysis_result = analysis()

    startup = startup_summary(overhead_docs + ladder_docs + [memory_doc])
    events_docs = [d for d in overhead_docs if d.get("summary", {}).get("events")]
    report = stats.final_report(
        overhead=overhead, ladder=throughput, startup=startup, analysis=analysis_result,
        memory=memory,
        extra={
            "mode": "quick" if args.quick else "full",
            "ladder": steps,
            "overload": over,
            "memory": memory,
            "analysis": analysis_result,
            "events_mode_loss": [
                {"placement": d["placement"], "round": d["round"], "events": d["stats"]["events"],
                 "lost": d["stats"]["lost"]} for d in events_docs],
            "machine": machine(),
            "noise": noise.report(),
            "plan": plan.__dict__,
            "bench_s": round(time.monotonic() - t0, 1),
        },
    )
    missing = stats.missing_keys(report)
    if missing:
        raise SystemExit(f"bench: result lacks {missing}")
    line = json.dumps(report, default=str)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(line, flush=True)
    return report


if __name__ == "__main__":
    main()
