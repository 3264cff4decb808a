"""The capture directory as the engine writes it (CaptureWriter, write_meta,
prepare_directory, --summary-json): private modes, and never into a directory
or through a link another user controls."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from tests.output_attack import Attack, attack_fixture, digest, mode  # noqa: F401 (fixture)
from tracer.capfile import SCHEMA, CaptureWriter, load, prepare_directory, write_meta
from tracer.capture.session import CaptureResult
from tracer.capture.summary import CaptureSummary
from tracer.errors import CaptureFileError

pytestmark = pytest.mark.root


def _rows(n: int) -> pa.Table:
    return pa.table({f.name: pa.nulls(n, f.type) for f in SCHEMA}).cast(SCHEMA)


def test_capture_directory_is_private(tmp_path):
    os.umask(0o022)
    cap = tmp_path / "cap"
    prepare_directory(cap)
    writer = CaptureWriter(cap)
    writer.submit(_rows(3))
    writer.submit(_rows(2))
    writer.close()
    write_meta(cap, {"node": "n"})
    # The two one-second parts, compacted into one segment when the writer
    # closed (tracer.capfile.rolling): the merged file is private too.
    assert sorted(os.listdir(cap)) == ["_tracer_meta.json", "part-000000-000001.parquet"]
    assert mode(cap) == 0o700 and {mode(p) for p in cap.iterdir()} == {0o600}
    assert len(load(cap).events) == 5


def test_capture_into_another_users_directory_is_refused(attack: Attack):
    attack.link(".write-test")
    attack.link("_tracer_meta.json")
    for act in (lambda: prepare_directory(attack.evil, overwrite=True),
                lambda: prepare_directory(attack.evil / "cap"),
                lambda: CaptureWriter(attack.evil),
                lambda: write_meta(attack.evil, {})):
        with pytest.raises(CaptureFileError, match="owned by nobody"):
            act()
    assert attack.target_unchanged() and len(os.listdir(attack.evil)) == 2


def test_capture_force_keeps_what_is_not_a_capture(tmp_path):
    cap = tmp_path / "cap"
    prepare_directory(cap)
    (cap / "part-000000.parquet").write_bytes(b"old")
    (cap / "notes.txt").write_text("mine")
    with pytest.raises(CaptureFileError, match="not empty"):
        prepare_directory(cap)
    prepare_directory(cap, overwrite=True)
    assert os.listdir(cap) == ["notes.txt"]


def test_summary_json_through_a_symlink_is_refused(attack: Attack, tmp_path):
    result = CaptureResult(CaptureSummary(), {}, {}, "", None)
    (tmp_path / "s.json").symlink_to(attack.target)
    with pytest.raises(CaptureFileError, match=r"s\.json: is a symbolic link"):
        result.write_summary_json(tmp_path / "s.json")
    with pytest.raises(CaptureFileError, match="owned by nobody"):
        result.write_summary_json(attack.link("summary.json"))
    assert attack.target_unchanged()
    result.write_summary_json(tmp_path / "t.json")
    assert mode(tmp_path / "t.json") == 0o600 and digest(tmp_path / "t.json")
