"""The numbers of a load run: percentiles, latency summary, rates, and which
pod answered (the lab's pages and DNS answers say `pod=NAME ip=IP node=NODE`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

_POD_LINE = re.compile(rb"pod=(\S+) ip=(\S+) node=(\S+)")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    if not values:
        return {}
    ms = [v * 1000 for v in values]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(ms[-1], 3),
        "mean": round(sum(ms) / len(ms), 3),
    }


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def pod_of_body(body: bytes) -> str | None:
    m = _POD_LINE.search(body)
    return m.group(1).decode() if m else None


