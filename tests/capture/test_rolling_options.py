"""Options of long captures (--max-size, --on-full, --keep, --segment-size,
--segment-seconds): parsed and checked before anything is attached."""

from __future__ import annotations

import pytest

from tracer.capfile.rolling import RollPolicy
from tracer.capture.options import CaptureOptions, parse_size, validate_options
from tracer.errors import UsageError


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("64k", 64 << 10),
    ("2gb", 2 << 30),
])
def test_sizes(text, size):
    assert parse_size(text, "--max-size") == size


@pytest.mark.parametrize("text", ["", "M", "-1G", "2X", "1e9", "nan"])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(UsageError, match=r"^--max-size: .* is not a size \(e\.g\. 500M, 2G\)$"):
        parse_size(text, "--max-size")


def test_options_become_the_writers_policy():
    opts = CaptureOptions(service="s", max_size=2 << 30, keep=24, segment_size=32 << 20,
                          segment_seconds=600, on_full="stop")
    validate_options(opts)
    assert opts.roll_policy == RollPolicy(segment_bytes=32 << 20, segment_seconds=600, keep=24,
                                          max_bytes=2 << 30, on_full="stop")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_size", 1000, "--max-size must be at least 1M"),
    ("keep", 0, "--keep must be at least 1"),
    ("segment_size", 10, "--segment-size must be at least 1M"),
    ("segment_seconds", float("nan"), "--segment-seconds must be at least 1"),
    ("on_full", "explode", "--on-full must be one of drop-oldest, stop"),
])
def test_bad_rolling_options(field, value, message):
    with pytest.raises(UsageError, match=f"^{message}$"):
        validate_options(CaptureOptions(service="s", **{field: value}))
