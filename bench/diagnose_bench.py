"""Benchmark (not a test): `tracer diagnose` on about one million synthetic events.

The seed scenario of bench/analysis_bench.py (two nodes, node B's clock off,
keep-alive clients, drops on B with retransmissions, wire duplicates),
written as two capture directories; prints one JSON line with the seconds
diagnose took (load + packets + diagnosis):

    .venv/bin/python bench/diagnose_bench.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.analysis_bench import _synthetic, scenario  # noqa: E402
from tracer.analysis.diagnose import diagnose  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    synthetic = _synthetic()
    connections = max(1, args.events // 53)  # ~53 events a connection in this scenario
    sim = synthetic.simulate(scenario(synthetic, connections))
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(sim.write(Path(tmp)).values())
        t0 = time.perf_counter()
        d = diagnose(paths)
        seconds = time.perf_counter() - t0
    print(json.dumps({
        "events": d.capture["events"], "connections": d.connections["total"],
        "failed_groups": len(d.failures), "diagnose_s": round(seconds, 2),
    }))


if __name__ == "__main__":
    main()
