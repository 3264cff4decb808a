"""Benchmark of the analysis layer on one million synthetic events.

Generates the seed scenario (two nodes, node B's clock 7.3 ms off, keep-alive
clients, drops, wire duplicates) with tests/analysis/synthetic.py, writes it as
two capture directories through the capture engine's writer, then times each
analysis step on the loaded captures and prints one JSON line:

    .venv/bin/python bench/analysis_bench.py [--events N] [--keep DIR]

`analysis_1m_events_s` is the total of load + packet timelines + latency +
fairness, in seconds, for (slightly over) one million events.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracer.analysis import fairness, latency  # noqa: E402
from tracer.analysis.events import load_events  # noqa: E402
from tracer.analysis.packets import assemble  # noqa: E402
from tracer.analysis.timeline import summary_table  # noqa: E402


def _synthetic():
    spec = importlib.util.spec_from_file_location(
        "synthetic", ROOT / "tests" / "analysis" / "synthetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["synthetic"] = module
    spec.loader.exec_module(module)
    return module


def scenario(synthetic, connections: int):
    return synthetic.Scenario(
        connections=connections,
        rate_per_s=2500.0,
        clients=tuple(f"192.168.64.{i}" for i in range(10, 30)),
        pinned_clients={"192.168.64.29": 12},
        requests_per_connection=1,
        actual_shares=(0.55, 0.45),
        drop_fraction=0.002,
        duplicate_fraction=0.001,
        clock_error_ns={"lab-node-a": 0, "lab-node-b": 7_300_000},
        delay_ab_ns=(18_000, 6_000),
        delay_ba_ns=(22_000, 6_000),
        seed=42,
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (about)")
    parser.add_argument("--keep", type=Path, help="write the captures here and keep them")
    args = parser.parse_args(argv)
    synthetic = _synthetic()

    t0 = time.perf_counter()
    probe = synthetic.simulate(scenario(synthetic, 1000))
    per_conn = sum(len(f) for f in probe.events.values()) / 1000
    # A little over the target, so the figure is for at least that many events.
    sim = synthetic.simulate(scenario(synthetic, int(args.events * 1.02 / per_conn) + 1))
    generate_s = time.perf_counter() - t0
    n_events = sum(len(f) for f in sim.events.values())

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        paths = sim.write(root)
        write_s = time.perf_counter() - t0

        timings = {}
        t0 = time.perf_counter()
        events = load_events([paths["lab-node-a"], paths["lab-node-b"]])
        timings["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        packets = assemble(events)
        summary_table(packets)
        timings["timeline_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        latency.analyze(packets)
        timings["latency_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fairness.analyze(packets)
        timings["fairness_s"] = time.perf_counter() - t0

    clock = packets.clocks.nodes["lab-node-b"]
    result = {
        "events": n_events,
        "packets": packets.count,
        "cross_node_links": len(packets.links),
        "generate_s": round(generate_s, 3),
        "write_s": round(write_s, 3),
        **{k: round(v, 3) for k, v in timings.items()},
        # Total seconds for all of it (>= --events events, 1M by default).
        "analysis_1m_events_s": round(sum(timings.values()), 3),
        "clock_offset_error_ns": round(clock.offset_ns - 7_300_000, 1),
        "clock_uncertainty_ns": clock.uncertainty_ns,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
