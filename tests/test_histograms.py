from __future__ import annotations

import numpy as np

from tracer.histograms import (
    StreamingHistogram,
    fill_bucket_gaps,
    format_buckets,
    format_log2,
    log2_buckets,
    log2_buckets_of,
    log2_rows,
    log2_slot_counts,
    log2_slots,
)


def kernel_log2_slot(v: int) -> int:
    """bpf/common.bpf.h log2_slot, line for line (without the TRACER_HIST_SLOTS cap)."""
    r = 0
    i = 32
    while i > 0:
        if v >= 1 << i:
            v >>= i
            r += i
        i >>= 1
    return r


def test_log2_slots_are_bcc_ranges():
    b = log2_buckets([0, 3, 1])
    assert b == [(0, 1, 0), (2, 3, 3), (4, 7, 1)]
    assert log2_buckets_of(np.array([1, 2, 3, 1000]))[-1] == (512, 1023, 1)


def test_slots_are_the_kernels():
    values = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, 999_999, (1 << 40) - 1, 1 << 40, (1 << 52) + 5]
    assert log2_slots(np.array(values)).tolist() == [kernel_log2_slot(v) for v in values]
    # durations corrected by a clock offset may be fractional or negative: slot 0
    assert log2_slots(np.array([0.4, 1.5, 3.9, -2.0])).tolist() == [0, 0, 1, 0]


BCC_EXPECTED = """\
     ns                  : count     distribution
       256 -> 511        : 13       |****                                    |
       512 -> 1023       : 120      |****************************************|
      1024 -> 2047       : 0        |                                        |
      2048 -> 4095       : 1        |                                        |"""


def test_log2_histogram_looks_like_bcc():
    values = np.array([300] * 13 + [700] * 120 + [3000])
    assert format_log2(values) == BCC_EXPECTED


def test_log2_buckets():
    assert log2_slots(np.array([0, 1, 2, 3, 4, 1023, 1024])).tolist() == [0, 0, 1, 1, 2, 9, 10]
    counts = log2_slot_counts(np.array([0, 1, 5]))
    assert counts.tolist() == [2, 0, 1]
    assert log2_rows(counts) == [(0, 1, 2), (2, 3, 0), (4, 7, 1)]
    assert log2_rows(log2_slot_counts(np.array([0, 0]))) == [(0, 1, 2)]
    assert log2_rows(log2_slot_counts(np.array([]))) == []


def test_kernel_histogram_as_the_engine_writes_it():
    # tracer.histograms.log2_buckets: every slot, zeros included
    slots = [0] * 32
    slots[9], slots[11] = 13, 3
    rows = fill_bucket_gaps(log2_buckets(slots))
    assert rows == [(512, 1023, 13), (1024, 2047, 0), (2048, 4095, 3)]
    text = format_buckets(rows)
    assert (
        text.splitlines()[1]
        == "       512 -> 1023       : 13       |****************************************|"
    )


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
