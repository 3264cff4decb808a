"""Writes a capture directory (format in tracer.capfile.schema): Parquet parts,
each complete on disk before it is visible, and a metadata file replaced
atomically. A background thread does the Parquet encoding so the ring-buffer
consumer never waits on the disk."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.capfile.meta import META_FILE
from tracer.capfile.parts import PartRange
from tracer.capfile.rolling import PartRoller, RollPolicy
from tracer.capfile.rule_trace import RULES_FILE
from tracer.capfile.schema import SCHEMA
from tracer.errors import CaptureFileError
from tracer.safe_output import OutputDir, output_dir

_STOP = object()
_END_PART = object()


def is_capture_file(name: str) -> bool:
    """An entry the tracer writes in a capture directory (what --force may replace)."""
    return name in (META_FILE, RULES_FILE) or name.startswith(
        (f".{META_FILE}.", "part-", ".part-"))


def prepare_directory(path: Path, *, overwrite: bool = False) -> None:
    """Create the capture directory (0700), or accept an existing one of the
    caller's (tracer.safe_output), or fail in one line before any probe is attached."""
    try:
        out = output_dir(path)
    except CaptureFileError as exc:
        raise CaptureFileError(f"cannot write capture to {path}: {exc}") from None
    with out:
        try:
            entries = out.names()
            if entries and not overwrite:
                raise CaptureFileError(f"{path}: not empty (choose a new path or pass --force)")
            for name in entries:
                if is_capture_file(name):
                    out.unlink(name)
            probe = f".write-test-{os.getpid()}"
            out.open_new(probe).close()
            out.unlink(probe)
        except OSError as exc:
            raise CaptureFileError(f"cannot write capture to {path}: {exc.strerror}") from exc


# Parquet settings, chosen by measurement on a 2-core x86-64 machine
# (bench/, docs/benchmarks.md). Dictionary encoding only for the columns
# that are dictionaries already (Arrow hands their indices over as they
# are); for the numeric columns Parquet would hash every value to build a
# dictionary it then abandons (skb, seq, timestamps: too many values).
# Statistics only for the timestamps (what readers filter on). lz4: about
# 3x cheaper to encode than zstd for ~1.6x the size.
STRING_COLUMNS = [f.name for f in SCHEMA if pa.types.is_dictionary(f.type)]
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": STRING_COLUMNS,
    "write_statistics": ["ts_ns", "time_ns"],
}


class CaptureWriter:
    """Accepts Arrow tables (schema tracer.capfile.schema.SCHEMA) and writes
    Parquet parts from a worker thread: append() adds a table to the part
    being written (one row group each), end_part() completes it (renamed
    into place, visible to readers), submit() is both at once. Parts are
    merged into segments and the oldest dropped as the policy says
    (tracer.capfile.rolling); `parts` counts the parts completed, `files`
    the files that hold them now, `dropped` what rotation removed."""

    def __init__(self, path: Path | OutputDir, *, compression: str | None = None,
                 max_pending: int = 8, policy: RollPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic):
        # Parts are created and renamed relative to the checked directory's
        # descriptor (tracer.safe_output), never by a path someone could swap.
        self._owns_dir = not isinstance(path, OutputDir)
        self._dir = OutputDir.open(path) if self._owns_dir else path
        self.path = self._dir.path
        self.options = dict(PARQUET_OPTIONS)
        if compression is not None:
            self.options["compression"] = compression
        self.parts = 0
        self.rows = 0
        self.files = 0
        self.full = False
        self.dropped: dict[str, Any] = {}
        self._roller = PartRoller(self._dir, self.options, policy or RollPolicy(), clock)
        self.error: CaptureFileError | None = None
        # Bounded: if the disk cannot keep up, the consumer blocks here rather
        # than buffering without limit; the ring buffer then reports loss.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        # writer thread only: the Parquet writer, its file, its temporary name, its rows
        self._open: tuple[pq.ParquetWriter, Any, str, int] | None = None
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def append(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        if table.num_rows:
            self._queue.put(table)

    def end_part(self) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(_END_PART)

    def submit(self, table: pa.Table) -> None:
        """One complete part."""
        if table.num_rows:
            self.append(table)
            self.end_part()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if self.error is not None:
                if item is _STOP:
                    return
                continue
            try:
                if item is _STOP:
                    self._roller.finish()  # compact: few files once the capture ends
                    self._publish()
                elif item is _END_PART:
                    self._finish_part()
                else:
                    self._write(item)
            except (OSError, CaptureFileError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                self.error = CaptureFileError(
                    f"writing {self.path}: {reason}; "
                    f"{self.parts} parts ({self.rows} events) already written are intact"
                )
            if item is _STOP:
                return

    def _write(self, table: pa.Table) -> None:
        table = table.cast(SCHEMA) if table.schema != SCHEMA else table
        if self._open is None:
            tmp = f".part-{self.parts:06d}.parquet.tmp"
            f = self._dir.open_new(tmp)
            self._open = (pq.ParquetWriter(f, SCHEMA, **self.options), f, tmp, 0)
        writer, f, tmp, rows = self._open
        writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._open = (writer, f, tmp, rows + table.num_rows)

    def _finish_part(self) -> None:
        if self._open is None:
            return
        writer, f, tmp, rows = self._open
        self._open = None
        try:
            writer.close()
        finally:
            f.close()
        self._dir.rename(tmp, PartRange(self.parts, self.parts).name)
        with self._lock:
            self.parts += 1
            self.rows += rows
        self._roller.added(self.parts - 1, rows)
        self._publish()

    def _publish(self) -> None:
        """What the roller did, for the capture's thread (metadata, stopping)."""
        with self._lock:
            self.files = self._roller.files
            self.full = self._roller.full
            d = self._roller.dropped
            self.dropped = d.to_dict() if d.files else {}

    def open_side_file(self, name: str) -> IO[str]:
        """A new text file beside the parts (0600, never an existing name or a
        link), through the same checked directory: the rule trace of --rules."""
        return self._dir.open_new(name, "w")

    def close(self) -> None:
        """Write everything submitted so far; raise if any part failed."""
        self._queue.put(_END_PART)
        self._queue.put(_STOP)
        self._thread.join()
        if self._open is not None:  # a part that failed: free its descriptor
            with contextlib.suppress(OSError):
                self._open[1].close()
            self._open = None
        if self._owns_dir:
            self._dir.close()
        if self.error is not None:
            raise self.error
