"""The capture file format: a directory of Parquet parts and a metadata
document (docs/capture-format.md). Written by the capture engine and by
``tracer merge``, read by the analysis and the notebooks; it depends on
neither of them (nor on BCC or pandas at import time).

- schema: the columns and the vocabulary of their values (probes, hooks, NAT
  kinds, tunnels, protocols), the format's name and version;
- meta: the metadata document (read_meta, write_meta);
- meta_schema: the type of every metadata key, checked by read_meta;
- reader: parts into Arrow or pandas, each checked against the format, older
  versions filled in (load);
- writer: parts written from a worker thread (CaptureWriter)."""

from tracer.capfile.meta import META_FILE, read_meta, write_meta
from tracer.capfile.parts import PartRange, parse_part_name
from tracer.capfile.reader import Capture, load, part_files, read_table
from tracer.capfile.schema import (
    ADDED_COLUMNS,
    COLUMN_NAMES,
    COLUMNS,
    ENCAPS,
    FORMAT_NAME,
    FORMAT_VERSION,
    HOOKS,
    NAT_KINDS,
    PART_GLOB,
    PROBES,
    PROTO_NAMES,
    PROTO_NUMBERS,
    SCHEMA,
)
from tracer.capfile.writer import (
    PARQUET_OPTIONS,
    CaptureWriter,
    is_capture_file,
    prepare_directory,
)

__all__ = [
    "ADDED_COLUMNS",
    "COLUMNS",
    "COLUMN_NAMES",
    "ENCAPS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HOOKS",
    "META_FILE",
    "NAT_KINDS",
    "PARQUET_OPTIONS",
    "PART_GLOB",
    "PROBES",
    "PROTO_NAMES",
    "PROTO_NUMBERS",
    "SCHEMA",
    "Capture",
    "CaptureWriter",
    "PartRange",
    "is_capture_file",
    "load",
    "parse_part_name",
    "part_files",
    "prepare_directory",
    "read_meta",
    "read_table",
    "write_meta",
]
