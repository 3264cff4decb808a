"""Long captures (issue 12): one-second parts merged into segments, each row
read once whatever moment a merge was interrupted at, the oldest segments
dropped and counted under --keep / --max-size, and few files at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracer.capfile import SCHEMA, CaptureWriter, part_files, read_table, write_meta
from tracer.capfile.parts import PartRange
from tracer.capfile.rolling import PartFile, PartRoller, RollPolicy, merge_files
from tracer.capfile.writer import PARQUET_OPTIONS
from tracer.errors import CaptureFileError
from tracer.safe_output import OutputDir

SAMPLE = Path(__file__).parent.parent / "notebooks" / "data" / "lab-sample" / "lab-node-a"


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    return read_table(SAMPLE)


def _events(rows: pa.Table, first: int, n: int) -> pa.Table:
    """n events whose ts_ns are first..first+n-1: which rows survive, in order, once."""
    table = rows.slice(first % (len(rows) - n), n)
    ts = pa.array(np.arange(first, first + n, dtype=np.int64))
    return table.set_column(0, SCHEMA.field("ts_ns"), ts)


def _ts(path: Path) -> list[int]:
    return read_table(path, columns=["ts_ns"]).column("ts_ns").to_pylist()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _capture_dir(tmp_path: Path, name: str = "cap") -> Path:
    path = tmp_path / name
    path.mkdir()
    write_meta(path, {"node": "n"})
    return path


_OPENED: list[OutputDir] = []


@pytest.fixture(autouse=True)
def _close_checked_dirs():
    yield
    while _OPENED:
        _OPENED.pop().close()


def _checked(path: Path) -> OutputDir:
    """The capture directory as the writer holds it (closed after each test)."""
    _OPENED.append(OutputDir.open(path))
    return _OPENED[-1]


def _small_part(path: Path, number: int, table: pa.Table) -> None:
    """What CaptureWriter leaves for one second: part-NNNNNN.parquet."""
    pq.write_table(table, path / PartRange(number, number).name, **PARQUET_OPTIONS)


def _run_seconds(roller: PartRoller, rows: pa.Table, clock: Clock, seconds: int,
                 per_second: int = 3, start: int = 0) -> None:
    for s in range(start, start + seconds):
        _small_part(roller.directory.path, s, _events(rows, s * per_second, per_second))
        roller.added(s, per_second)
        clock.now += 1.0


def test_a_day_of_quiet_seconds_stays_a_few_files(tmp_path, rows):
    path, clock = _capture_dir(tmp_path), Clock()
    roller = PartRoller(_checked(path), PARQUET_OPTIONS,
                        RollPolicy(merge_every=30, segment_seconds=600), clock)
    most = 0
    for hour in range(6):  # 6 "hours" of 600 s each: a quiet day, compressed
        _run_seconds(roller, rows, clock, 600, start=hour * 600)
        most = max(most, len(part_files(path)))
    assert most <= 6 + 30
    assert _ts(path) == list(range(3600 * 3))
    roller.finish()
    assert len(part_files(path)) == 1
    assert [p.name for p in part_files(path)] == ["part-000000-003599.parquet"]
    assert _ts(path) == list(range(3600 * 3))
    assert not [p for p in path.iterdir() if p.name.startswith(".")]


def test_segments_stop_growing_at_their_size(tmp_path, rows):
    path, clock = _capture_dir(tmp_path), Clock()
    roller = PartRoller(_checked(path), PARQUET_OPTIONS,
                        RollPolicy(merge_every=10, segment_bytes=200_000), clock)
    _run_seconds(roller, rows, clock, 300, per_second=40)
    assert 1 < len(roller.segments) < 30
    assert all(s.bytes < 2 * 200_000 for s in roller.segments)
    assert _ts(path) == list(range(300 * 40))


def _merge_states(tmp_path: Path, rows: pa.Table) -> tuple[Path, Path, list[int]]:
    """Small parts 0..9 and, beside them, the segment a merge makes of them."""
    smalls = _capture_dir(tmp_path, "smalls")
    for s in range(10):
        _small_part(smalls, s, _events(rows, s * 5, 5))
    work = tmp_path / "work"
    shutil.copytree(smalls, work)
    inputs = [PartFile(PartRange(s, s), 5, 0, 0.0) for s in range(10)]
    with OutputDir.open(work) as checked:
        merged = merge_files(checked, inputs, PARQUET_OPTIONS)
    assert sorted(p.name for p in work.glob("part-*")) == [merged.range.name]
    return smalls, work / merged.range.name, list(range(50))


@pytest.mark.parametrize("removed", [0, 1, 5, 9, 10])
def test_a_merge_killed_after_its_rename_leaves_each_row_once(tmp_path, rows, removed):
    smalls, merged, expected = _merge_states(tmp_path, rows)
    crashed = tmp_path / "crashed"
    shutil.copytree(smalls, crashed)
    shutil.copy(merged, crashed)
    for s in range(removed):  # the clean-up got this far
        (crashed / PartRange(s, s).name).unlink()
    assert _ts(crashed) == expected
    assert [p.name for p in part_files(crashed)] == [merged.name]


@pytest.mark.parametrize("written", [0, 100, None])
def test_a_merge_killed_while_writing_leaves_the_small_parts(tmp_path, rows, written):
    smalls, merged, expected = _merge_states(tmp_path, rows)
    crashed = tmp_path / "crashed"
    shutil.copytree(smalls, crashed)
    body = merged.read_bytes()
    (crashed / f".{merged.name}.tmp").write_bytes(body if written is None else body[:written])
    assert _ts(crashed) == expected
    assert len(part_files(crashed)) == 10


def test_a_growing_segment_rewritten_and_killed_leaves_each_row_once(tmp_path, rows):
    path, clock = _capture_dir(tmp_path), Clock()
    roller = PartRoller(_checked(path), PARQUET_OPTIONS, RollPolicy(merge_every=5), clock)
    _run_seconds(roller, rows, clock, 5)
    assert [p.name for p in part_files(path)] == ["part-000000-000004.parquet"]
    before = tmp_path / "before"
    shutil.copytree(path, before)
    _run_seconds(roller, rows, clock, 5, start=5)
    assert [p.name for p in part_files(path)] == ["part-000000-000009.parquet"]
    # Killed after the rename, before anything it replaces was removed.
    for s in range(5, 10):
        _small_part(before, s, _events(rows, s * 3, 3))
    shutil.copy(path / "part-000000-000009.parquet", before)
    assert _ts(before) == list(range(30))


def test_ranges_that_overlap_without_covering_are_an_error(tmp_path, rows):
    path = _capture_dir(tmp_path)
    pq.write_table(_events(rows, 0, 2), path / "part-000000-000005.parquet")
    pq.write_table(_events(rows, 2, 2), path / "part-000003-000008.parquet")
    with pytest.raises(CaptureFileError, match=r"overlaps part-000000-000005\.parquet"):
        read_table(path)


def test_keep_drops_the_oldest_segments_and_counts_them(tmp_path, rows):
    path, clock = _capture_dir(tmp_path), Clock()
    roller = PartRoller(_checked(path), PARQUET_OPTIONS,
                        RollPolicy(merge_every=10, segment_seconds=20, keep=3), clock)
    _run_seconds(roller, rows, clock, 200)
    assert len(roller.segments) == 3
    kept = _ts(path)
    d = roller.dropped
    assert d.events + len(kept) == 600
    assert kept == list(range(d.events, 600))  # the newest, contiguous
    assert d.first_part == 0 and d.last_part == d.events // 3 - 1
    assert d.reasons == ["--keep 3"]
    assert d.bytes > 0 and d.files >= 1


def test_segments_shorter_than_the_merge_cadence_are_cut_by_time(tmp_path, rows):
    # --segment-seconds 2 --keep 2 with the default merge cadence (60 parts):
    # a segment every ~2 s, so 12 s keep only the newest few seconds.
    path, clock = _capture_dir(tmp_path), Clock()
    roller = PartRoller(_checked(path), PARQUET_OPTIONS, RollPolicy(segment_seconds=2, keep=2), clock)
    _run_seconds(roller, rows, clock, 12)
    d = roller.dropped
    assert d.reasons == ["--keep 2"] and d.events > 0
    assert len(roller.segments) == 2
    assert d.events + len(_ts(path)) == 36 and _ts(path) == list(range(d.events, 36))


@pytest.mark.parametrize("on_full", ["drop-oldest", "stop"])
def test_max_size_bounds_the_parts(tmp_path, rows, on_full):
    path, clock = _capture_dir(tmp_path), Clock()
    roller = PartRoller(_checked(path), PARQUET_OPTIONS,
                        RollPolicy(merge_every=10, segment_seconds=15, max_bytes=60_000,
                                   on_full=on_full), clock)
    for s in range(120):
        _run_seconds(roller, rows, clock, 1, per_second=20, start=s)
        on_disk = sum(p.stat().st_size for p in path.glob("part-*"))
        if on_full == "stop" and roller.full:
            break
        assert on_disk <= 60_000
    if on_full == "stop":
        assert roller.full and roller.dropped.files == 0
        assert _ts(path) == list(range((s + 1) * 20))
    else:
        assert not roller.full
        kept = _ts(path)
        assert roller.dropped.events + len(kept) == 120 * 20
        assert kept == list(range(roller.dropped.events, 2400))


def test_capture_writer_rolls_compacts_and_reports(tmp_path, rows):
    path, clock = _capture_dir(tmp_path), Clock()
    writer = CaptureWriter(path, policy=RollPolicy(merge_every=20, segment_seconds=50, keep=2),
                           clock=clock)
    for s in range(200):
        writer.submit(_events(rows, s * 2, 2))
        clock.now += 1.0  # read by the writer's thread; exact cadence does not matter
    writer.close()
    kept = _ts(path)
    assert writer.parts == 200
    assert writer.dropped["events"] + len(kept) == 400
    assert writer.dropped["events"] > 0 and writer.dropped["reasons"] == ["--keep 2"]
    assert kept == list(range(400 - len(kept), 400))
    assert writer.files == len(part_files(path)) <= 2
