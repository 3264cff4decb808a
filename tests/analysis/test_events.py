"""Loading captures: normalization and every way input can be wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.analysis.synthetic import NODE_A, NODE_B
from tracer.analysis.addresses import ip_to_int
from tracer.analysis.events import PROBE_NAT, load_events
from tracer.errors import CaptureFileError, UsageError


def test_normalized_columns(scenario):
    events = load_events(scenario.both)
    ev = events.events
    assert events.nodes == [NODE_A, NODE_B]
    assert len(ev) == sum(len(f) for f in scenario.sim.events.values())
    assert ev["row"].tolist() == list(range(len(ev)))
    nat = ev[ev["probe_code"] == PROBE_NAT]
    dnat = nat[nat["nat_kind"] == "dnat"]
    # the tuple after a DNAT is the pod; other events keep theirs
    assert set(dnat["out_dst"]) <= {ip_to_int("10.217.120.72"), ip_to_int("10.217.121.8")}
    assert (dnat["out_dport"] == 80).all() and (dnat["dport"] == 8088).all()
    other = ev[ev["probe_code"] != PROBE_NAT]
    assert np.array_equal(other["out_src"], other["src"]) and np.array_equal(
        other["out_dport"], other["dport"]
    )


def test_missing_capture_is_a_capture_file_error(tmp_path):
    with pytest.raises(CaptureFileError, match="no such capture"):
        load_events([tmp_path / "nope"])


def test_not_a_capture(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(CaptureFileError, match="not a tracer capture"):
        load_events([tmp_path / "dir"])
    (tmp_path / "file.parquet").write_bytes(b"PAR1")
    with pytest.raises(CaptureFileError, match="not a capture directory"):
        load_events([tmp_path / "file.parquet"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "_tracer_meta.json").write_text(json.dumps({"format": "pcap"}))
    with pytest.raises(CaptureFileError, match="not a tracer capture"):
        load_events([tmp_path / "other"])


def test_truncated_part_names_the_part(scenario, tmp_path):
    copy = tmp_path / "cap"
    shutil.copytree(scenario.paths[NODE_A], copy)
    part = sorted(copy.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(CaptureFileError, match=part.name):
        load_events([copy])


def test_same_node_twice_is_refused(scenario):
    with pytest.raises(UsageError, match="more than one capture"):
        load_events([scenario.paths[NODE_A], scenario.paths[NODE_A]])


def test_no_capture_given():
    with pytest.raises(UsageError):
        load_events([])


def test_empty_capture_loads(tmp_path):
    from tracer.capfile import prepare_directory, write_meta

    prepare_directory(tmp_path / "empty")
    write_meta(tmp_path / "empty", {"node": NODE_A, "mode": "hist"})
    events = load_events([tmp_path / "empty"])
    assert len(events.events) == 0 and events.nodes == [NODE_A]
