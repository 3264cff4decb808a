"""The capture file format package: what it depends on, and that captures
written before it was a package (the notebooks' version 1 sample) read and
rewrite as they did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tracer.capfile import (
    COLUMN_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    SCHEMA,
    CaptureWriter,
    load,
    part_files,
    prepare_directory,
    read_meta,
    read_table,
    write_meta,
)

SAMPLE = Path(__file__).parent.parent / "notebooks" / "data" / "lab-sample" / "lab-node-a"


def test_capfile_imports_neither_engine_nor_analysis_nor_pandas():
    # A fresh interpreter: this one has imported everything already.
    code = (
        "import sys, tracer.capfile\n"
        "bad = sorted(m for m in sys.modules if m.startswith(\n"
        "    ('tracer.capture', 'tracer.analysis', 'pandas', 'bcc')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_1_sample_loads_with_todays_columns():
    meta = read_meta(SAMPLE)
    assert meta["format"] == FORMAT_NAME and meta["version"] == 1
    capture = load(SAMPLE)
    assert capture.node == "lab-node-a"
    assert tuple(capture.events.columns) == COLUMN_NAMES
    assert len(capture.events) == sum(pq.read_metadata(p).num_rows for p in part_files(SAMPLE))
    assert set(capture.events["encap"].astype(str)) == {""}


def test_rewritten_sample_reads_back_the_same(tmp_path):
    table = read_table(SAMPLE)
    out = tmp_path / "copy"
    prepare_directory(out)
    writer = CaptureWriter(out)
    writer.submit(table)
    writer.close()
    write_meta(out, {"node": "lab-node-a"})
    body = json.loads((out / META_FILE).read_text())
    assert body == {"format": FORMAT_NAME, "version": FORMAT_VERSION, "node": "lab-node-a"}
    assert pq.read_schema(part_files(out)[0]).remove_metadata() == SCHEMA
    # Values, not Arrow's dictionaries (their order depends on how a part was written).
    assert read_table(out).to_pylist() == table.to_pylist()
