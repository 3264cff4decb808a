"""The capture's metadata document, ``<capture>/_tracer_meta.json``: what was
captured, where, with which backends, the Service, the statistics and the
in-kernel histograms (docs/capture-format.md lists its keys). The writer
replaces it atomically every second; read_meta checks it names the format
and has the format's types (tracer.capfile.meta_schema) before any reader
trusts the directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from tracer.capfile.meta_schema import document_problem
from tracer.capfile.schema import FORMAT_NAME, FORMAT_VERSION
from tracer.errors import CaptureFileError
from tracer.safe_output import OutputDir

# A leading '_' so pyarrow and DuckDB skip it when they read the directory.
META_FILE = "_tracer_meta.json"


def read_meta(path: str | Path) -> dict[str, Any]:
    """The capture's metadata, checked against the format
    (tracer.capfile.meta_schema): anything else is a CaptureFileError."""
    path = Path(path)
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise CaptureFileError(f"{path}: no such capture") from None
    except OSError as exc:
        raise CaptureFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not is_dir:
        raise CaptureFileError(f"{path}: not a capture directory (tracer captures are directories)")
    meta_path = path / META_FILE
    meta = _parse(meta_path, _read_bytes(path, meta_path))
    if isinstance(meta, dict) and meta.get("format") != FORMAT_NAME:
        found = repr(meta.get("format"))[:60]
        raise CaptureFileError(f"{path}: not a tracer capture (format {found})")
    problem = document_problem(meta)
    if problem:
        raise CaptureFileError(f"{meta_path}: invalid metadata: {problem}")
    return meta


def _read_bytes(path: Path, meta_path: Path) -> bytes:
    # O_NONBLOCK: a FIFO in its place must not hang the reader; only a
    # regular file is read.
    try:
        fd = os.open(meta_path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CaptureFileError(f"{path}: not a tracer capture (no {META_FILE})") from None
    except OSError as exc:
        raise CaptureFileError(f"{meta_path}: unreadable metadata ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CaptureFileError(f"{meta_path}: unreadable metadata (not a regular file)")
            return f.read()
        except OSError as exc:
            raise CaptureFileError(
                f"{meta_path}: unreadable metadata ({exc.strerror or exc})") from None


def _parse(meta_path: Path, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        why = "binary content, not JSON text"
    except json.JSONDecodeError as exc:
        why = f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        why = "not JSON this reader takes: nested too deeply"
    raise CaptureFileError(f"{meta_path}: unreadable metadata ({why})")


def write_meta(path: Path | OutputDir, meta: dict[str, Any]) -> None:
    """Replace the metadata file atomically (rename), so a reader never sees
    half of it; 0600, in a directory checked by tracer.safe_output."""
    body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}
    data = json.dumps(body, indent=1, sort_keys=True, default=str).encode()
    if isinstance(path, OutputDir):
        path.write_file(META_FILE, lambda f: f.write(data))
        return
    with OutputDir.open(path) as out:
        out.write_file(META_FILE, lambda f: f.write(data))
