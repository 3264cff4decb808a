"""Writes a capture directory (format in tracer.capture_schema): Parquet parts,
each complete on disk before it is visible, and a metadata file replaced
atomically. A background thread does the Parquet encoding so the ring-buffer
consumer never waits on the disk."""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.capture_schema import FORMAT_NAME, FORMAT_VERSION, META_FILE, SCHEMA
from tracer.errors import CaptureFileError

_STOP = object()


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


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Replace the metadata file atomically (rename), so a reader never sees half of it."""
    body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}
    tmp = path / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path / META_FILE)


class CaptureWriter:
    """Accepts Arrow tables (schema tracer.capture_schema.SCHEMA) and writes one
    Parquet part per submitted table from a worker thread."""

    def __init__(self, path: Path, *, compression: str = "zstd", max_pending: int = 8):
        self.path = path
        self.compression = compression
        self.parts = 0
        self.rows = 0
        self.error: CaptureFileError | None = None
        # Bounded: if the disk cannot keep up, the consumer blocks here rather
        # than buffering without limit; the ring buffer then reports loss.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def submit(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        if table.num_rows:
            self._queue.put(table)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue
            try:
                self._write_part(item)
            except OSError as exc:
                self.error = CaptureFileError(
                    f"writing {self.path}: {exc.strerror or exc}; "
                    f"{self.parts} parts ({self.rows} events) already written are intact"
                )

    def _write_part(self, table: pa.Table) -> None:
        name = f"part-{self.parts:06d}.parquet"
        tmp = self.path / f".{name}.tmp"
        table = table.cast(SCHEMA) if table.schema != SCHEMA else table
        pq.write_table(table, tmp, compression=self.compression)
        os.replace(tmp, self.path / name)
        with self._lock:
            self.parts += 1
            self.rows += table.num_rows

    def close(self) -> None:
        """Write everything submitted so far; raise if any part failed."""
        self._queue.put(_STOP)
        self._thread.join()
        if self.error is not None:
            raise self.error
