"""Bounds a long capture's files: small parts merged into segments, the
oldest segments dropped when the capture may not grow any more.

The writer completes a small part about every second (a SIGKILL loses at
most the second being filled). Left as they are, a quiet day makes ~86,000
files, and a reader pays per file. So the writer thread, after each part:

- merges the small parts into a segment every ``merge_every`` parts (or as
  soon as they reach ``segment_bytes``); the newest segment keeps growing
  (it is rewritten with the new parts) until it reaches ``segment_bytes`` or
  spans ``segment_seconds``. Parts that are big already (a busy capture) are
  kept as they are instead of being rewritten: reading them costs rows;
- drops the oldest segments when there are more than ``keep`` of them, or
  when the parts exceed ``max_bytes`` (or, with on_full="stop", says the
  capture is full). Everything dropped is counted (Dropped), for the
  metadata and the summary;
- at the end, merges neighbouring segments that together stay under
  ``segment_bytes``.

Every merge is crash-safe: the segment is written under a dot-name, renamed
to the name of the range it replaces, and only then are the files it
replaces removed; the reader ignores files a wider range covers
(tracer.capfile.parts)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.capfile.parts import PartRange
from tracer.capfile.schema import SCHEMA
from tracer.safe_output import OutputDir

# Rows per row group in a merged segment: one-second parts hold one row group
# per decoded batch, often a few rows; a segment regroups them.
SEGMENT_ROW_GROUP = 1 << 17
ON_FULL = ("drop-oldest", "stop")


@dataclass(frozen=True)
class RollPolicy:
    merge_every: int = 60
    segment_bytes: int = 64 << 20
    segment_seconds: float = 3600.0
    keep: int | None = None  # segments kept (the newest); None: all
    max_bytes: int | None = None  # the parts' total; None: no limit
    on_full: str = "drop-oldest"


@dataclass
class Dropped:
    """What rotation removed: files, the events in them, their bytes, and the
    small parts they held (first..last)."""

    files: int = 0
    events: int = 0
    bytes: int = 0
    first_part: int | None = None
    last_part: int | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "events": self.events, "bytes": self.bytes,
                "first_part": self.first_part, "last_part": self.last_part,
                "reasons": list(self.reasons)}


@dataclass
class PartFile:
    range: PartRange
    rows: int
    bytes: int
    started: float  # clock() when its first small part was completed


def merge_files(directory: OutputDir, inputs: list[PartFile], options: dict[str, Any]) -> PartFile:
    """One segment holding inputs' rows in order, put in place atomically;
    then the inputs are removed. Reads a row group at a time, so memory
    follows SEGMENT_ROW_GROUP, not the segment. Every file is named relative
    to the checked directory's descriptor (tracer.safe_output)."""
    out = PartRange(inputs[0].range.first, inputs[-1].range.last)
    tmp = f".{out.name}.tmp"
    sink = directory.open_new(tmp)
    writer = pq.ParquetWriter(sink, SCHEMA, **options)
    try:
        buffered: list[pa.Table] = []
        rows = 0
        for part in inputs:
            with directory.open_read(part.range.name) as f:
                parquet = pq.ParquetFile(f, pre_buffer=False)
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, use_threads=False)
                    buffered.append(table.cast(SCHEMA) if table.schema != SCHEMA else table)
                    rows += table.num_rows
                    if rows >= SEGMENT_ROW_GROUP:
                        writer.write_table(pa.concat_tables(buffered).combine_chunks())
                        buffered, rows = [], 0
        if buffered:
            writer.write_table(pa.concat_tables(buffered).combine_chunks())
    finally:
        try:
            writer.close()
        finally:
            sink.close()
    directory.rename(tmp, out.name)
    for part in inputs:
        with contextlib.suppress(FileNotFoundError):
            directory.unlink(part.range.name)
    return PartFile(out, sum(p.rows for p in inputs), _size(directory, out.name), inputs[0].started)


def _size(directory: OutputDir, name: str) -> int:
    st = directory.lstat(name)
    return st.st_size if st is not None else 0


class PartRoller:
    """The writer thread's bookkeeping of the files on disk (its only user)."""

    def __init__(self, directory: OutputDir, options: dict[str, Any], policy: RollPolicy,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = directory
        self.options = options
        self.policy = policy
        self.clock = clock
        self.segments: list[PartFile] = []
        self.small: list[PartFile] = []
        self.growing = False  # the last segment still takes new parts
        self.dropped = Dropped()
        self.full = False  # on_full="stop" and the parts reached max_bytes

    @property
    def files(self) -> int:
        return len(self.segments) + len(self.small)

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.segments) + sum(p.bytes for p in self.small)

    def added(self, number: int, rows: int) -> None:
        """Small part `number` is in place."""
        r = PartRange(number, number)
        self.small.append(PartFile(r, rows, _size(self.directory, r.name), self.clock()))
        # A segment is due when the small parts are many, big, or span the
        # segment's time (--segment-seconds shorter than merge_every seconds
        # must still cut segments that often, or --keep would never apply).
        if (len(self.small) >= self.policy.merge_every
                or sum(p.bytes for p in self.small) >= self.policy.segment_bytes
                or self.clock() - self.small[0].started >= self.policy.segment_seconds):
            self.roll()
        self.enforce()

    def roll(self) -> None:
        """The small parts into a segment (the growing one, if they fit)."""
        if not self.small:
            return
        p = self.policy
        small_bytes = sum(s.bytes for s in self.small)
        if small_bytes >= len(self.small) * (p.segment_bytes // 16):
            # Big parts already: each stands as a segment, nothing rewritten.
            self.segments.extend(self.small)
            self.small, self.growing = [], False
            return
        base = self.segments[-1] if self.segments and self.growing else None
        if base is not None and (base.bytes + small_bytes >= p.segment_bytes
                                 or self.clock() - base.started >= p.segment_seconds):
            base = None
        inputs = ([base] if base is not None else []) + self.small
        merged = merge_files(self.directory, inputs, self.options) if len(inputs) > 1 else inputs[0]
        if base is not None:
            self.segments[-1] = merged
        else:
            self.segments.append(merged)
        self.small = []
        self.growing = (merged.bytes < p.segment_bytes
                        and self.clock() - merged.started < p.segment_seconds)

    def enforce(self) -> None:
        """--keep and --max-size: drop the oldest files (never the newest)."""
        p = self.policy
        while p.keep is not None and len(self.segments) > p.keep:
            self._drop(self.segments.pop(0), f"--keep {p.keep}")
        if p.max_bytes is None:
            return
        while self.total_bytes > p.max_bytes:
            if p.on_full == "stop":
                self.full = True
                return
            if self.files <= 1:
                return
            oldest = self.segments.pop(0) if self.segments else self.small.pop(0)
            self._drop(oldest, f"--max-size {p.max_bytes}")
            if not self.segments:
                self.growing = False

    def _drop(self, part: PartFile, reason: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.directory.unlink(part.range.name)
        d = self.dropped
        d.files += 1
        d.events += part.rows
        d.bytes += part.bytes
        d.first_part = part.range.first if d.first_part is None else d.first_part
        d.last_part = part.range.last
        if reason not in d.reasons:
            d.reasons.append(reason)

    def finish(self) -> None:
        """At the end: the small parts into the last segment, then neighbours
        that together stay under segment_bytes into one."""
        self.roll()
        out: list[PartFile] = []
        run: list[PartFile] = []
        for seg in self.segments:
            if run and sum(s.bytes for s in run) + seg.bytes >= self.policy.segment_bytes:
                out.append(self._merged(run))
                run = []
            run.append(seg)
        if run:
            out.append(self._merged(run))
        self.segments, self.growing = out, False
        self.enforce()

    def _merged(self, run: list[PartFile]) -> PartFile:
        return merge_files(self.directory, run, self.options) if len(run) > 1 else run[0]
