"""Writes a capture directory (format in tracer.capfile.schema): Parquet parts,
each complete on disk before it is visible, and a metadata file replaced
atomically. A background thread does the Parquet encoding so the ring-buffer
consumer never waits on the disk."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.capfile.meta import META_FILE
from tracer.capfile.parts import PartRange
from tracer.capfile.rolling import PartRoller, RollPolicy
from tracer.capfile.schema import SCHEMA
from tracer.errors import CaptureFileError

_STOP = object()
_END_PART = object()


def prepare_directory(path: Path, *, overwrite: bool = False) -> None:
    """Create the capture directory, or fail in one line before any probe is attached."""
    try:
        if path.exists():
            if not path.is_dir():
                raise CaptureFileError(f"{path}: exists and is not a capture directory")
            entries = [p for p in path.iterdir()]
            if entries and not overwrite:
                raise CaptureFileError(f"{path}: not empty (choose a new path or pass --force)")
            for p in entries:
                if p.name == META_FILE or p.name.startswith(("part-", ".part-")):
                    p.unlink()
        else:
            path.mkdir(parents=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except CaptureFileError:
        raise
    except OSError as exc:
        raise CaptureFileError(f"cannot write capture to {path}: {exc.strerror}") from exc


# Parquet settings, chosen by measurement on this project's 2-core machines
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

    def __init__(self, path: Path, *, compression: str | None = None, max_pending: int = 8,
                 policy: RollPolicy | None = None, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.options = dict(PARQUET_OPTIONS)
        if compression is not None:
            self.options["compression"] = compression
        self.parts = 0
        self.rows = 0
        self.files = 0
        self.full = False
        self.dropped: dict[str, Any] = {}
        self._roller = PartRoller(path, self.options, policy or RollPolicy(), clock)
        self.error: CaptureFileError | None = None
        # Bounded: if the disk cannot keep up, the consumer blocks here rather
        # than buffering without limit; the ring buffer then reports loss.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._open: tuple[pq.ParquetWriter, Path, int] | None = None  # writer thread only
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
            except OSError as exc:
                self.error = CaptureFileError(
                    f"writing {self.path}: {exc.strerror or exc}; "
                    f"{self.parts} parts ({self.rows} events) already written are intact"
                )
            if item is _STOP:
                return

    def _write(self, table: pa.Table) -> None:
        table = table.cast(SCHEMA) if table.schema != SCHEMA else table
        if self._open is None:
            tmp = self.path / f".part-{self.parts:06d}.parquet.tmp"
            self._open = (pq.ParquetWriter(tmp, SCHEMA, **self.options), tmp, 0)
        writer, tmp, rows = self._open
        writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._open = (writer, tmp, rows + table.num_rows)

    def _finish_part(self) -> None:
        if self._open is None:
            return
        writer, tmp, rows = self._open
        self._open = None
        writer.close()
        os.replace(tmp, self.path / PartRange(self.parts, self.parts).name)
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

    def close(self) -> None:
        """Write everything submitted so far; raise if any part failed."""
        self._queue.put(_END_PART)
        self._queue.put(_STOP)
        self._thread.join()
        if self.error is not None:
            raise self.error
