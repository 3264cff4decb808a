"""The benchmark's arithmetic, kept pure so tests/bench can check it: medians
of alternating runs, on/off ratios, the capture-throughput ladder's
accounting, RSS growth, and the one JSON object the harness prints last.

No I/O and no lab here: every function takes plain numbers or dicts."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The keys issue 5 asks for; the harness prints at least these.
REQUIRED_KEYS = (
    "throughput_ratio_hist",
    "throughput_ratio_events",
    "lossless_events_per_s",
    "startup_s",
    "analysis_1m_events_s",
    "rss_growth_mb",
)

# tracer off, --mode hist, full event mode; and the floor under each: empty
# programs where that mode attaches (bench/empty_probes.py, isolated only)
STATES = ("off", "hist", "events", "empty_hist", "empty_events")
TRAFFIC = ("close", "keepalive")  # new connection per request, keep-alive


def median(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(on: float | None, off: float | None) -> float | None:
    if on is None or off is None or off == 0:
        return None
    return on / off


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def untraced_at(t: float, offs: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The untraced figure `key` at time t: linear between the off runs just
    before and just after t (throughput drifts on these shared machines, a
    few % within a minute), the nearest one where t is not between two."""
    offs = sorted((o for o in offs if o.get(key) is not None), key=lambda o: o["t"])
    if not offs:
        return None
    before = [o for o in offs if o["t"] <= t]
    after = [o for o in offs if o["t"] >= t]
    if not after:
        return float(before[-1][key])
    if not before:
        return float(after[0][key])
    a, b = before[-1], after[0]
    if b["t"] == a["t"]:
        return float(a[key])
    w = (t - a["t"]) / (b["t"] - a["t"])
    return float(a[key]) + w * (float(b[key]) - float(a[key]))


def overhead_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """runs: one dict per wrk run with placement, traffic, state, t (when it
    ran), rps and p99_ms. Tracer-off runs open every round and close the
    last, so each traced run lies between two; it is compared with the
    untraced figure interpolated to its own time (untraced_at), and the
    figure per state is the median of those ratios, next to the medians of
    the raw numbers."""
    out: dict[str, Any] = {}
    for placement in sorted({r["placement"] for r in runs}):
        for traffic in TRAFFIC:
            sel = [r for r in runs if r["placement"] == placement and r["traffic"] == traffic]
            if not sel:
                continue
            offs = [r for r in sel if r["state"] == "off"]
            entry: dict[str, Any] = {}
            for state in STATES:
                mine = [r for r in sel if r["state"] == state]
                if not mine:
                    continue
                entry[state] = {
                    "runs": len(mine),
                    "rps_median": _round(median(r["rps"] for r in mine), 1),
                    "p99_ms_median": _round(median(r["p99_ms"] for r in mine)),
                }
                if state == "off":
                    continue
                entry[state]["throughput_ratio"] = _round(median(
                    ratio(r["rps"], untraced_at(r["t"], offs, "rps")) for r in mine))
                entry[state]["p99_ratio"] = _round(median(
                    ratio(r["p99_ms"], untraced_at(r["t"], offs, "p99_ms")) for r in mine))
            out[f"{placement}/{traffic}"] = entry
    return out


def worst_ratio(summary: Mapping[str, Any], placement: str, state: str) -> float | None:
    """The lower throughput ratio of the two traffic shapes (the headline is
    the worse case, not the average)."""
    vals = [summary[f"{placement}/{t}"][state]["throughput_ratio"]
            for t in TRAFFIC if state in summary.get(f"{placement}/{t}", {})]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def ladder_step(offered: int, recorded: int, lost: int, kernel_events: int,
                seconds: float) -> dict[str, Any]:
    """One rate of the throughput ladder. offered comes from the generator
    (independent of the tracer), recorded from the capture file, lost and
    kernel_events from the tracer's in-kernel counters."""
    return {
        "offered": offered,
        "recorded": recorded,
        "lost": lost,
        "kernel_events": kernel_events,
        "unaccounted": offered - recorded - lost,
        "accounted": offered == recorded + lost,
        "seconds": round(seconds, 4),
        "offered_per_s": round(offered / seconds, 1) if seconds > 0 else 0.0,
        "recorded_per_s": round(recorded / seconds, 1) if seconds > 0 else 0.0,
        "loss_fraction": round(lost / offered, 6) if offered else 0.0,
    }


def ladder_summary(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """lossless_events_per_s: the highest recorded rate of a step with zero
    loss whose accounting adds up, below the offered rate of every step that
    lost events (near the blaster's limit two steps can offer the same rate,
    and if one of them lost, that rate is not lossless); loss_above: the
    lossy step with the lowest offered rate."""
    lossy = sorted((s for s in steps if s["lost"] > 0), key=lambda s: s["offered_per_s"])
    limit = lossy[0]["offered_per_s"] if lossy else float("inf")
    clean = [s for s in steps if s["lost"] == 0 and s["accounted"] and s["recorded_per_s"] < limit]
    best = max(clean, key=lambda s: s["recorded_per_s"], default=None)
    best_rate = best["recorded_per_s"] if best else 0.0
    above = lossy
    return {
        "lossless_events_per_s": best_rate,
        "accounting_ok": all(s["accounted"] for s in steps),
        "loss_above": ({"offered_per_s": above[0]["offered_per_s"],
                        "loss_fraction": above[0]["loss_fraction"],
                        "lost": above[0]["lost"]} if above else None),
    }


def rss_growth_mb(samples: Sequence[tuple[float, float]], warmup_s: float) -> float | None:
    """samples: (seconds since start, RSS in MiB). After the warm-up, the peak
    of the second half minus the peak of the first half: a flat process
    scores ~0, one that grows with time scores what it gained."""
    late = [(t, m) for t, m in samples if t >= warmup_s]
    if len(late) < 4:
        return None
    mid = (late[0][0] + late[-1][0]) / 2
    first = max(m for t, m in late if t <= mid)
    second = max(m for t, m in late if t > mid)
    return round(second - first, 2)


def final_report(*, overhead: Mapping[str, Any], ladder: Mapping[str, Any], startup: Mapping[str, Any],
                 analysis: Mapping[str, Any], memory: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The harness's last line. Headline ratios are the isolated placement
    (consumer on its own CPU: the data path's cost); *_shared are the same
    with every process free to run anywhere on the two CPUs."""
    report: dict[str, Any] = {
        "throughput_ratio_hist": worst_ratio(overhead, "isolated", "hist"),
        "throughput_ratio_events": worst_ratio(overhead, "isolated", "events"),
        "throughput_ratio_hist_shared": worst_ratio(overhead, "shared", "hist"),
        "throughput_ratio_events_shared": worst_ratio(overhead, "shared", "events"),
        # what programs that do nothing, attached where each mode attaches,
        # leave of the untraced throughput (same placement, same rounds)
        "floor_ratio_hist": worst_ratio(overhead, "isolated", "empty_hist"),
        "floor_ratio_events": worst_ratio(overhead, "isolated", "empty_events"),
        "lossless_events_per_s": ladder.get("lossless_events_per_s"),
        "startup_s": startup.get("all_attached_s_median"),
        "first_attach_s": startup.get("first_attach_s_median"),
        "analysis_1m_events_s": analysis.get("analysis_1m_events_s"),
        "rss_growth_mb": memory.get("rss_growth_mb"),
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "capture_accounting_ok": ladder.get("accounting_ok"),
        "loss_above": ladder.get("loss_above"),
        "overhead": overhead,
        "startup": startup,
    }
    if extra:
        report.update(extra)
    return report


def missing_keys(report: Mapping[str, Any]) -> list[str]:
    return [k for k in REQUIRED_KEYS if k not in report]
