"""Benchmarks of long captures (issue 12), no lab needed; prints JSON lines.

    .venv/bin/python bench/long_capture.py reader [--parts 20000]
    .venv/bin/python bench/long_capture.py export [--events 5000000]

reader: the same rows as N one-row parts (what a quiet capture wrote before
parts were merged) and as one file, each loaded by tracer.capfile.load in a
fresh process: seconds and peak RSS.
export: `tracer export` of a synthetic capture of about N events in a fresh
process: seconds and peak RSS, against the load alone (so the ratio says
what the export itself costs)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's.
_MEASURE = """
import re, time
t = time.perf_counter()
{body}
hwm = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(time.perf_counter() - t, int(hwm) / 1024)
"""


def _measure(body: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(body=body)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    seconds, rss = out.stdout.split()[-2:]
    return {"seconds": round(float(seconds), 2), "peak_rss_mb": round(float(rss), 1)}


def reader(parts: int) -> dict:
    import pyarrow.parquet as pq

    from tracer.capfile import read_table, write_meta
    from tracer.capfile.writer import PARQUET_OPTIONS

    sample = read_table(ROOT / "notebooks/data/lab-sample/lab-node-a")
    with tempfile.TemporaryDirectory() as tmp:
        many, one = Path(tmp) / "many", Path(tmp) / "one"
        for d in (many, one):
            d.mkdir()
            write_meta(d, {"node": "bench"})
        rows = [sample.slice(i % len(sample), 1) for i in range(parts)]
        for i, row in enumerate(rows):
            pq.write_table(row, many / f"part-{i:06d}.parquet", **PARQUET_OPTIONS)
        import pyarrow as pa

        pq.write_table(pa.concat_tables(rows), one / "part-000000.parquet", **PARQUET_OPTIONS)
        del rows
        load = "from tracer.capfile import load; assert len(load({!r}).events) == {}"
        result = {"parts": parts, "many": _measure(load.format(str(many), parts)),
                  "one": _measure(load.format(str(one), parts))}
    result["time_ratio"] = round(result["many"]["seconds"] / max(result["one"]["seconds"], 1e-3), 1)
    result["rss_ratio"] = round(result["many"]["peak_rss_mb"] / result["one"]["peak_rss_mb"], 2)
    return result


def export(events: int) -> dict:
    from tests.analysis.synthetic import Scenario, simulate

    with tempfile.TemporaryDirectory() as tmp:
        # ~54 events per connection in the seed scenario (both nodes).
        paths = simulate(Scenario(connections=max(events // 54, 1), rate_per_s=5000.0,
                                  seed=7)).write(Path(tmp))
        cap = str(paths["lab-node-a"])
        n = len(__import__("tracer.capfile", fromlist=["load"]).load(cap).events)
        load = ("from tracer.analysis.packets import assemble\n"
                f"from tracer.analysis.events import load_events\nassemble(load_events([{cap!r}]))")
        run = (f"from tracer.analysis.pcap import export_pcapng\n"
               f"export_pcapng([{cap!r}], {tmp!r} + '/x.pcapng')")
        result = {"events": n, "load_only": _measure(load), "export": _measure(run)}
    result["export_over_load_rss"] = round(
        result["export"]["peak_rss_mb"] / result["load_only"]["peak_rss_mb"], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["reader", "export"])
    ap.add_argument("--parts", type=int, default=20000)
    ap.add_argument("--events", type=int, default=5_000_000)
    a = ap.parse_args()
    print(json.dumps(reader(a.parts) if a.what == "reader" else export(a.events)))


if __name__ == "__main__":
    main()
