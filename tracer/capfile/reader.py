"""Reads capture directories (format in tracer.capfile.schema) into Arrow
tables and pandas. No BCC, no root: this is what analysis and notebooks use.
pandas is imported only when a capture is loaded, so the capture engine can
import this package without it (~0.15 s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracer.capfile.meta import read_meta
from tracer.capfile.parts import visible_parts
from tracer.capfile.schema import ADDED_COLUMNS, SCHEMA, part_problems
from tracer.errors import CaptureFileError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Capture:
    path: Path
    meta: dict[str, Any]
    events: pd.DataFrame = field(repr=False)

    @property
    def node(self) -> str:
        return str(self.meta.get("node", ""))


def part_files(path: Path) -> list[Path]:
    """The parts that hold the capture, in order, each row once
    (tracer.capfile.parts: segments replace the parts they were merged from).
    A directory that cannot be listed is an error, not an empty capture."""
    return visible_parts(Path(path))


# Small parts are gathered into one table (one chunk per column, dictionaries
# unified) every this many rows or parts: reading then costs per row, not
# per file (20,000 one-row parts as 20,000 chunks of 36 columns held ~1.3 GB
# and took pandas seconds to convert).
_GATHER_ROWS = 1 << 18
_GATHER_PARTS = 512


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All parts of one capture as one Arrow table. A damaged part, or one
    whose columns are not the format's, is an error that names the part; the
    data itself is never modified."""
    path = Path(path)
    return _read_parts(path, read_meta(path), columns)


def _read_parts(path: Path, meta: dict[str, Any], columns: list[str] | None) -> pa.Table:
    parts = part_files(path)
    tables: list[pa.Table] = []
    pending: list[pa.Table] = []
    rows = 0
    for part in parts:
        table = _read_part(part, columns, meta["version"], len(parts) - 1)
        if pending and table.schema.names != pending[0].schema.names:
            tables.append(_gather(pending, columns))
            pending, rows = [], 0
        pending.append(table)
        rows += table.num_rows
        if rows >= _GATHER_ROWS or len(pending) >= _GATHER_PARTS:
            tables.append(_gather(pending, columns))
            pending, rows = [], 0
    if pending:
        tables.append(_gather(pending, columns))
    if not tables:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def _gather(tables: list[pa.Table], columns: list[str] | None) -> pa.Table:
    """Parts with the same columns as one table (older parts' missing columns
    added once for the lot)."""
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()
    return _with_added_columns(table, columns)


def _read_part(part: Path, columns: list[str] | None, version: int, others: int) -> pa.Table:
    """One part, checked against the format of the capture's version
    (tracer.capfile.schema.part_problems) before any row is trusted: a part
    without a column would otherwise load with that column empty."""
    # Every part a writer made visible is whole (written under a dot-name,
    # renamed when complete): a bad one is damage, not a capture cut short,
    # so it is an error rather than skipped.
    try:
        # ParquetFile without pre-buffering or threads: ~0.5 ms a file against
        # ~2 ms for pq.read_table (which builds a dataset for every file).
        with open(part, "rb") as f:
            parquet = pq.ParquetFile(f, pre_buffer=False)
            found = parquet.schema_arrow
            problems = part_problems(found, version)
            if problems:
                raise CaptureFileError(
                    f"{part}: not a part of a version {version} capture "
                    f"({'; '.join(problems)}){_the_others(others)}"
                )
            table = parquet.read(
                columns=None if columns is None else [c for c in columns if c in found.names],
                use_threads=False,
            )
    except (OSError, pa.ArrowException) as exc:
        why = " ".join(str(exc).split())  # pyarrow's messages may span lines
        raise CaptureFileError(
            f"{part}: damaged or truncated capture part ({why}){_the_others(others)}"
        ) from None
    return _in_format_types(table)


def _the_others(others: int) -> str:
    """What the user can still read: the parts beside a bad one are untouched."""
    if not others:
        return ""
    some = "1 other part is" if others == 1 else f"{others} other parts are"
    return f"; the capture's {some} untouched: move this one aside to read them"


def _in_format_types(table: pa.Table) -> pa.Table:
    """Text columns in the format's encoding, whatever the part's (plain or
    another dictionary index width: part_problems accepts both), so that the
    parts concatenate."""
    for i, have in enumerate(table.schema):
        if have.name in SCHEMA.names and have.type != SCHEMA.field(have.name).type:
            want = SCHEMA.field(have.name).type
            table = table.set_column(i, pa.field(have.name, want), table.column(i).cast(want))
    return table


def _with_added_columns(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """A part of an older capture with the columns later versions added, at
    their value for "not recorded" (tracer.capfile.schema.ADDED_COLUMNS)."""
    wanted = [c for c in ADDED_COLUMNS if columns is None or c in columns]
    missing = [c for c in wanted if c not in table.schema.names]
    if not missing:
        return table
    for name in missing:
        typ = SCHEMA.field(name).type
        value = pa.array([ADDED_COLUMNS[name][1]], pa.string()).cast(typ)
        table = table.append_column(pa.field(name, typ), pa.repeat(value[0], len(table)).cast(typ))
    order = [n for n in (columns or SCHEMA.names) if n in table.schema.names]
    extra = [n for n in table.schema.names if n not in order]
    return table.select(order + extra)


def load(path: str | Path, columns: list[str] | None = None) -> Capture:
    path = Path(path)
    meta = read_meta(path)
    events = _read_parts(path, meta, columns).to_pandas()
    return Capture(path=path, meta=meta, events=events)
