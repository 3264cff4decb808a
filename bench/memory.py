"""Memory: the tracer's RSS over a long capture at a high event rate, sampled
from /proc every 0.25 s. It must stay flat: every buffer (ring, column
batches, Arrow tables, Parquet writer) is bounded, so RSS should reach a
plateau in the first seconds and stay there however long the capture runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.blaster import EVENTS_PER_PACKET
from bench.lab_env import ensure_lab, lab_lock
from bench.stats import rss_growth_mb
from bench.throughput import TRACER_CPUS, blast_traced
from bench.tracer_proc import TracerRun

WARMUP_S = 5.0


def run_memory(*, rate: float, seconds: float, service: str, netns: str,
               log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    pps = rate / EVENTS_PER_PACKET
    with lab_lock():
        state = ensure_lab()
        tracer = TracerRun(service=service, netns=netns, mode="events", cpus=TRACER_CPUS,
                           sample_rss=True)
        sent, doc, recorded, foreign_s = blast_traced(state, tracer, pps, int(pps * seconds))
    samples = tracer.rss
    out = {
        "seconds": sent["seconds"],
        "offered_per_s": round(sent["packets"] * EVENTS_PER_PACKET / sent["seconds"], 1),
        "recorded": recorded,
        "lost": doc["stats"]["lost"],
        "foreign_cpu_s": round(foreign_s, 2),  # others' time on the tracer's CPU
        "rss_samples": len(samples),
        "rss_start_mb": round(samples[0][1], 1) if samples else None,
        "peak_rss_mb": round(max(m for _, m in samples), 1) if samples else None,
        "rss_growth_mb": rss_growth_mb(samples, WARMUP_S),
        # RSS every ~5 s, for the record
        "rss_mb_every_5s": [round(m, 1) for t, m in samples if abs(t % 5.0) < 0.25],
    }
    log(f"  {out['seconds']:.0f}s at {out['offered_per_s']:,.0f} events/s: RSS {out['rss_start_mb']} -> "
        f"peak {out['peak_rss_mb']} MiB, growth after warm-up {out['rss_growth_mb']} MiB, "
        f"lost {out['lost']} (others on the tracer's CPU: {out['foreign_cpu_s']:.1f}s)")
    return out, doc
