from __future__ import annotations

import numpy as np

from tracer.histograms import StreamingHistogram, log2_buckets, log2_buckets_of


def test_log2_slots_are_bcc_ranges():
    b = log2_buckets([0, 3, 1])
    assert b == [(0, 1, 0), (2, 3, 3), (4, 7, 1)]
    assert log2_buckets_of(np.array([1, 2, 3, 1000]))[-1] == (512, 1023, 1)


def test_streaming_percentiles_within_bucket_width():
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=7, sigma=1.0, size=200_000).astype(np.int64) + 1
    h = StreamingHistogram()
    for chunk in np.array_split(values, 17):
        h.add(chunk)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = np.quantile(values, q)
        assert abs(h.percentile(q) - exact) / exact < 0.03, q
    assert h.max == values.max() and h.count == values.size
    # Memory does not grow with samples.
    assert h.counts.size == StreamingHistogram.BINS_PER_OCTAVE * StreamingHistogram.OCTAVES


def test_empty():
    h = StreamingHistogram()
    assert np.isnan(h.percentile(0.5))
