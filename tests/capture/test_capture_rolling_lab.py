"""The whole path of a long capture on the lab (issue 12): `tracer capture`
with rotation merges its one-second parts, drops and counts the oldest, and
compacts at the end; the metadata, --summary-json and the summary say what
was dropped. Needs the lab: run by the lead, not in the fast tests."""

from __future__ import annotations

import json
import time

import pytest

from tests.capture.lab_capture import capture
from tracer.capfile import load, part_files, read_meta
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _requests(n: int) -> None:
    """n requests on new connections to the external IP, from the lab client."""
    result = run_traffic(requests=n, concurrency=4, target="external-ip")
    assert result.ok == n, result


def test_rotation_drops_counts_and_compacts(lab_state, tmp_path):
    out, summary = tmp_path / "rot", tmp_path / "summary.json"
    # Segments of at most 2 s, 2 kept: 12 s of traffic leaves the last ~4 s.
    args = ["--svc", "nginx-demo-1", "--netns", "lab-node-a", "--segment-seconds", "2",
            "--keep", "2"]
    with capture(args, out, summary_json=summary) as run:
        for _ in range(12):
            _requests(5)
            time.sleep(0.8)
    assert run.returncode == 0, run.stderr_lines
    meta = read_meta(out)
    dropped = meta["dropped"]
    assert dropped["events"] > 0 and dropped["reasons"] == ["--keep 2"]
    assert json.loads(summary.read_text())["dropped"] == dropped
    assert any(line.startswith("dropped by --keep 2") for line in run.stdout.splitlines())
    assert len(part_files(out)) <= 2 and meta["files"] == len(part_files(out))
    assert dropped["events"] + len(load(out).events) == meta["stats"]["events"]


def test_max_size_stop_ends_the_capture(lab_state, tmp_path):
    out = tmp_path / "full"
    args = ["--svc", "nginx-demo-1", "--netns", "lab-node-a", "--max-size", "1M",
            "--on-full", "stop"]
    with capture(args, out, ready_timeout=60) as run:
        deadline = time.monotonic() + 120
        while run.proc.poll() is None and time.monotonic() < deadline:
            _requests(500)
    assert run.returncode == 0
    assert "ended by --max-size" in run.stdout
    assert read_meta(out)["ended_by"].startswith("--max-size")
