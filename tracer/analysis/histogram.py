"""Power-of-two histograms, printed the way BCC's tools print them:

         ns                  : count     distribution
          256 -> 511        : 13       |****                                    |
          512 -> 1023       : 120      |****************************************|

so numbers from the capture files and from the kernel's own histograms
(``meta["histograms"]``) read like ``funclatency`` output."""

from __future__ import annotations

import numpy as np

from tracer.histograms import fill_bucket_gaps, format_buckets  # noqa: F401 (re-exported)


def log2_index(values: np.ndarray) -> np.ndarray:
    """Bucket of each value: 0 for 0, else its bit length (1 -> 1, 2..3 -> 2, 4..7 -> 3)."""
    v = np.asarray(values, dtype=np.float64)
    _, exponent = np.frexp(v)
    return np.where(v > 0, exponent, 0).astype(np.int64)


def log2_counts(values: np.ndarray) -> np.ndarray:
    idx = log2_index(values)
    return np.bincount(idx, minlength=1) if len(idx) else np.zeros(1, dtype=np.int64)


def bucket_range(index: int) -> tuple[int, int]:
    """(low, high) shown for a bucket index; index 1 is shown as 0 -> 1 like BCC."""
    if index <= 1:
        return 0, 1
    return 1 << (index - 1), (1 << index) - 1


def counts_to_buckets(
    counts: np.ndarray, strip_leading_zero: bool = True
) -> list[tuple[int, int, int]]:
    """log2 counts (index = bit length) -> [(low, high, count)] up to the last non-empty bucket.
    Index 0 (value 0) folds into the first row, which BCC shows as 0 -> 1."""
    counts = np.asarray(counts, dtype=np.int64)
    nonzero = np.flatnonzero(counts)
    if not len(nonzero):
        return []
    last = int(nonzero[-1])
    folded = counts.copy()
    if len(folded) > 1:
        folded[1] += folded[0]
    start = max(1, int(np.flatnonzero(folded[1:])[0]) + 1) if strip_leading_zero else 1
    return [(*bucket_range(i), int(folded[i])) for i in range(start, max(last, 1) + 1)]


def format_log2(values_or_counts: np.ndarray, unit: str = "ns", *, counts: bool = False) -> str:
    c = np.asarray(values_or_counts) if counts else log2_counts(np.asarray(values_or_counts))
    return format_buckets(counts_to_buckets(c), unit)
