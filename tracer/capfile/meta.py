"""The capture's metadata document, ``<capture>/_tracer_meta.json``: what was
captured, where, with which backends, the Service, the statistics and the
in-kernel histograms (docs/capture-format.md lists its keys). The writer
replaces it atomically every second; a reader checks it names the format
before it trusts the directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tracer.capfile.schema import FORMAT_NAME, FORMAT_VERSION
from tracer.errors import CaptureFileError
from tracer.safe_output import OutputDir

# A leading '_' so pyarrow and DuckDB skip it when they read the directory.
META_FILE = "_tracer_meta.json"


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CaptureFileError(f"{path}: no such capture")
    if not path.is_dir():
        raise CaptureFileError(f"{path}: not a capture directory (tracer captures are directories)")
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise CaptureFileError(f"{path}: not a tracer capture (no {META_FILE})") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptureFileError(f"{meta_path}: unreadable metadata ({exc})") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CaptureFileError(f"{path}: not a tracer capture (format {meta.get('format')!r})")
    return meta


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
