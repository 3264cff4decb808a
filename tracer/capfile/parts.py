"""Names of a capture's Parquet parts, and which of them hold the capture.

A running capture completes a small part about every second,
``part-000041.parquet`` (its sequence number), and merges runs of them into
segments named after the range they replace, ``part-000000-000059.parquet``
(tracer.capfile.rolling). A merge writes the segment under a dot-name,
renames it into place, and only then removes what it replaces, so a capture
killed at any moment holds every row, possibly twice: in a segment and in the
parts (or smaller segments) it covers. The reader takes each row once by
keeping only the outermost ranges: a part whose range lies inside another's
is ignored. Dot-names (unfinished files) are ignored by every reader."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import CaptureFileError

_NAME = re.compile(r"part-(\d+)(?:-(\d+))?\.parquet")


@dataclass(frozen=True, order=True)
class PartRange:
    """The small parts [first, last] a file holds (first == last: one small part)."""

    first: int
    last: int

    @property
    def name(self) -> str:
        if self.first == self.last:
            return f"part-{self.first:06d}.parquet"
        return f"part-{self.first:06d}-{self.last:06d}.parquet"

    def covers(self, other: PartRange) -> bool:
        return self.first <= other.first and other.last <= self.last


def parse_part_name(name: str) -> PartRange | None:
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    return PartRange(first, last) if last >= first else None


def part_ranges(path: Path) -> list[tuple[PartRange, Path]]:
    """Every file named like a part, in order of its range (numerically:
    past part 999999 the names get longer and no longer sort as text)."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        # Not an empty capture: a 0311 directory, read as another user.
        raise CaptureFileError(
            f"{path}: cannot list the capture's parts ({exc.strerror or exc})"
        ) from None
    found = [(r, path / n) for n in names if (r := parse_part_name(n)) is not None]
    return sorted(found, key=lambda rp: (rp[0].first, -rp[0].last))


def outermost(ranges: list[tuple[PartRange, Path]]) -> list[tuple[PartRange, Path]]:
    """The files that hold the capture, each row once: ranges covered by
    another are left out (what a merge interrupted before its clean-up
    leaves). Ranges that overlap without one covering the other are made by
    no writer: an error rather than rows counted twice."""
    kept: list[tuple[PartRange, Path]] = []
    for r, p in ranges:  # by first, widest first
        if kept and kept[-1][0].covers(r):
            continue
        if kept and r.first <= kept[-1][0].last:
            raise CaptureFileError(
                f"{p}: overlaps {kept[-1][1].name} (parts {r.first}-{r.last} against "
                f"{kept[-1][0].first}-{kept[-1][0].last}); not a capture this tracer wrote")
        kept.append((r, p))
    return kept


def visible_parts(path: Path) -> list[Path]:
    return [p for _, p in outermost(part_ranges(path))]
