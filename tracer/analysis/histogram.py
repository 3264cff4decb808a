"""Power-of-two histograms, printed the way BCC's tools print them:

         ns                  : count     distribution
          256 -> 511        : 13       |****                                    |
          512 -> 1023       : 120      |****************************************|

so numbers from the capture files and from the kernel's own histograms
(``meta["histograms"]``) read like ``funclatency`` output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STARS = 40


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
