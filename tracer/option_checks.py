"""Checks of option values that several commands share: lengths of time and
files to be written. Each raises the typed error the CLI turns into one line,
and is meant to run before any work (no probe attached, no capture read)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tracer.errors import CaptureFileError, UsageError

# The longest time any option may give: a year. No capture, window or
# deadline sensibly exceeds it, and it keeps every derived figure in range
# (int64 nanoseconds hold 292 years; Kubernetes' activeDeadlineSeconds is an
# int64 too), where 1e300 or inf would overflow them.
MAX_SECONDS = 366 * 86400.0

# What --plot writes: the formats matplotlib writes without optional
# packages, which a browser or the report shows. A name with another or no
# extension is refused rather than guessed at: matplotlib would append
# ".png" to a bare name, and the file written would not be the one named.
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def seconds(value: float, option: str, *, least: float = 0.0, most: float = MAX_SECONDS) -> float:
    """value, if it is a positive, finite number of seconds within [least, most]."""
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number of seconds, not {value}")
    if value <= 0:
        raise UsageError(f"{option} must be positive, not {value:g}")
    if value < least:
        raise UsageError(f"{option} must be at least {least:g} s, not {value:g}")
    if value > most:
        limit = "a year" if most == MAX_SECONDS else f"{most:g} s"
        raise UsageError(f"{option} must be at most {limit}, not {value:g}")
    return value


def writable_file(path: str | os.PathLike[str], option: str) -> Path:
    """path, if a file could be created or replaced there: its directory
    exists and is writable, and it is not itself a directory. Only a check
    ahead of the work (the write itself can still fail, and must say so)."""
    path = Path(path)
    parent = path.parent
    if path.name in ("", ".", ".."):
        raise UsageError(f"{option}: {str(path)!r} names a directory, not a file")
    if not parent.is_dir():
        raise CaptureFileError(f"{option}: cannot write {path}: no directory {parent}")
    if path.is_dir():
        raise CaptureFileError(f"{option}: cannot write {path}: it is a directory")
    # access() as the real user is what matters here: the tracer does not
    # run set-uid. On a read-only file system it fails even for root.
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK | (os.X_OK if target == parent else 0)):
        raise CaptureFileError(f"{option}: cannot write {path}: permission denied or read-only")
    return path


def plot_file(path: str | os.PathLike[str], option: str = "--plot") -> Path:
    """path, if it names a PNG, SVG or PDF file that can be written."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        given = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise UsageError(f"{option} {path}: {given}; give a file name ending in "
                         f"{', '.join(PLOT_SUFFIXES)}")
    return writable_file(path, option)
