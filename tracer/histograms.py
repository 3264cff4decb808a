"""Latency histograms shared by the live capture summary and the analysis
(numpy only: the analysis imports this module and never BCC).

Power-of-two histograms have one convention, the kernel's: slot i counts the
values v with floor(log2 v) == i, slot 0 also 0 and 1, i.e. the range
[2^i, 2^(i+1) - 1] (``log2_slot`` in bpf/common.bpf.h, BCC's ``bpf_log2l``
minus one). The in-kernel histograms are stored in capture files as those
ranges (docs/capture-format.md, ``histograms``), and the analysis counts
event durations into the same slots, so both print alike, as BCC's tools
print them:

         ns                  : count     distribution
          256 -> 511        : 13       |****                                    |
          512 -> 1023       : 120      |****************************************|

Also a fixed-size log-linear histogram for percentiles of unbounded streams
(memory never grows with the number of samples)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Bucket = tuple[int, int, int]  # (low, high, count): values in [low, high]
STARS = 40


def log2_slots(values: np.ndarray) -> np.ndarray:
    """The kernel's slot of each value: floor(log2 v), 0 for v < 2 (0, 1 and,
    for corrected durations, fractions). From the float's exponent, exact for
    integers below 2^53 (np.log2 rounds 2^k - 1 up to k from k ~ 48)."""
    v = np.asarray(values, dtype=np.float64)
    _, exponent = np.frexp(v)
    return np.where(v >= 1, exponent - 1, 0).astype(np.int64)


def log2_slot_counts(values: np.ndarray) -> np.ndarray:
    """Values -> counts per slot (index = slot, as the kernel's map holds
    them), up to the highest slot used; one empty slot for no values."""
    slots = log2_slots(values)
    return np.bincount(slots, minlength=1) if len(slots) else np.zeros(1, dtype=np.int64)


def log2_buckets(slot_counts: Sequence[int]) -> list[Bucket]:
    """Slot i of a BPF log2 histogram counts values v with floor(log2 v) == i
    (slot 0 also holds 0): the range [2^i, 2^(i+1) - 1]."""
    out = []
    for i, count in enumerate(slot_counts):
        low = 0 if i == 0 else 1 << i
        out.append((low, (1 << (i + 1)) - 1, int(count)))
    return out


def log2_buckets_of(values: np.ndarray) -> list[Bucket]:
    """Values -> every slot's bucket from slot 0 to the highest used (as the
    engine stores a kernel histogram, empty slots included)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return []
    return log2_buckets(log2_slot_counts(values))


def _stars(count: int, peak: int, width: int) -> str:
    # BCC's rule: floor(width * count / peak) stars, so a bucket far below the
    # peak shows none; the count column still tells.
    if peak <= 0:
        return ""
    return "*" * min(width, width * count // peak)


def format_buckets(buckets: Sequence[Sequence[int]], unit: str = "ns") -> str:
    """[(low, high, count), ...] -> BCC-style text (empty buckets between shown as 0)."""
    rows = [(int(lo), int(hi), int(c)) for lo, hi, c in buckets]
    if not rows or not any(c for _, _, c in rows):
        return f"     {unit:<19} : count     distribution\n     (no samples)"
    wide = max(hi for _, hi, _ in rows) >= 1 << 32
    num_w, label_w, width = (20, 29, STARS // 2) if wide else (10, 19, STARS)
    header = f"{'':{5 + (10 if wide else 0)}}{unit:<{label_w}} : count     distribution"
    peak = max(c for _, _, c in rows)
    lines = [header]
    for lo, hi, c in rows:
        lines.append(f"{lo:>{num_w}} -> {hi:<{num_w}} : {c:<8} |{_stars(c, peak, width):<{width}}|")
    return "\n".join(lines)


def fill_bucket_gaps(buckets: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Kernel histograms as the engine stores them ([low, high, count] per
    slot, empty slots included or not) -> the rows to print: from the first
    non-empty bucket to the last (BCC's strip_leading_zero), gaps as zeros."""
    rows = sorted((int(lo), int(hi), int(c)) for lo, hi, c in buckets)
    nonzero = [i for i, r in enumerate(rows) if r[2]]
    rows = rows[nonzero[0] : nonzero[-1] + 1] if nonzero else []
    out: list[tuple[int, int, int]] = []
    for lo, hi, c in rows:
        while out and out[-1][1] + 1 < lo:
            nlo = out[-1][1] + 1
            out.append((nlo, 2 * nlo - 1, 0))
        out.append((lo, hi, c))
    return out


def log2_rows(slot_counts: Sequence[int]) -> list[Bucket]:
    """Counts per slot -> the rows to print (first to last non-empty slot)."""
    return fill_bucket_gaps(log2_buckets(slot_counts))


def format_log2(values: np.ndarray, unit: str = "ns") -> str:
    """Values -> their log2 histogram as BCC prints it."""
    return format_buckets(log2_rows(log2_slot_counts(values)), unit)


class StreamingHistogram:
    """Log-linear buckets (BINS_PER_OCTAVE per power of two, about 2% wide):
    percentiles of any number of samples in constant memory."""

    BINS_PER_OCTAVE = 32
    OCTAVES = 40

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS_PER_OCTAVE * self.OCTAVES, dtype=np.int64)
        self.count = 0
        self.max = 0
        self.min: int | None = None
        self.total = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.int64)
        if values.size == 0:
            return
        idx = np.floor(np.log2(np.maximum(values, 1)) * self.BINS_PER_OCTAVE).astype(np.int64)
        # bincount, not np.add.at: ~20x faster for the large batches of a capture.
        self.counts += np.bincount(np.minimum(idx, len(self.counts) - 1), minlength=len(self.counts))
        self.count += int(values.size)
        self.total += int(values.sum())
        self.max = max(self.max, int(values.max()))
        low = int(values.min())
        self.min = low if self.min is None else min(self.min, low)

    def percentile(self, q: float) -> float:
        """Value below which a fraction q of samples lies (bucket midpoint)."""
        if self.count == 0:
            return float("nan")
        rank = q * self.count
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, max(rank, 1), side="left"))
        low = 2 ** (i / self.BINS_PER_OCTAVE)
        high = 2 ** ((i + 1) / self.BINS_PER_OCTAVE)
        mid = (low * high) ** 0.5
        return float(min(max(mid, self.min or 0), self.max))

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "p50": self.percentile(0.5),
            "p90": self.percentile(0.9),
            "p99": self.percentile(0.99),
            "p99.9": self.percentile(0.999),
            "max": float(self.max),
            "mean": self.total / self.count if self.count else float("nan"),
        }
