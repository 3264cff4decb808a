"""`tracer demo --fault KIND`: the broken-Service story end to end on the lab.

Run as a user would; the figures it prints are held against the files it
wrote, the fault must be gone afterwards (also when a step fails), and the
captures must have been stopped."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from tests.capture.lab_capture import netfilter_links
from tracer.capfile import read_meta
from tracer.cli import main
from tracer.errors import LabError
from tracer.lab import controller, faults
from tracer.lab.fault_kinds import KINDS

TRACER = [sys.executable, "-m", "tracer"]
CLIENT = re.compile(r"^client, (with the fault|after .*): (\d+) requests to \S+: (\d+) answered, "
                    r"(\d+) failed", re.M)


@pytest.mark.root
@pytest.mark.lab
def test_fault_demo_tells_the_whole_story(lab, tmp_path):
    out = tmp_path / "story"
    proc = subprocess.run([*TRACER, "demo", "--fault", "rp-filter", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (broken, after) = CLIENT.findall(proc.stdout)
    sent, ok, failed = map(int, broken[1:])
    assert sent == ok + failed == 40 and failed > 0
    assert after[1:] == ("40", "40", "0")  # the fault cleared: all answered
    doc = json.loads((out / "diagnosis.json").read_text())
    assert doc["connections"]["no_answer"] == failed and doc["connections"]["succeeded"] == ok
    (group,) = doc["failures"]
    assert group["stop"]["node"] == "lab-node-b" and group["stop"]["drop_reason"] == "IP_RPFILTER"
    assert f"({failed} failed connections: agrees with the client)" in proc.stdout
    assert (out / "diagnosis.txt").read_text().splitlines()[0] in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fault"]["kind"] == "rp-filter" and summary["traffic_with_fault"]["failed"] == failed
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    for name in ("diagnosis.txt", "diagnosis.json", "summary.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    assert faults.active(controller.load_state()) == []


@pytest.mark.root
@pytest.mark.lab
def test_fault_demo_clears_the_fault_when_a_step_fails(lab, tmp_path, monkeypatch, capsys):
    import tracer.fault_demo

    def broken_traffic(*args, **kwargs):
        raise LabError("traffic generator broke")

    monkeypatch.setattr(tracer.fault_demo, "run_traffic", broken_traffic)
    links_before = len(netfilter_links())
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--fault", "policy-drop", "-o", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == LabError.exit_code and err[-1] == "tracer: error: traffic generator broke"
    assert faults.active(controller.load_state()) == []
    for node in ("lab-node-a", "lab-node-b"):
        meta = read_meta(tmp_path / "d" / "captures" / node)
        assert meta["complete"] and meta["ended_by"] == "SIGINT"
    assert len(netfilter_links()) == links_before


def test_fault_demo_refuses_an_unknown_fault(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--fault", "no-such-fault"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("tracer: error: unknown fault 'no-such-fault' (one of ")
    assert all(k in err[0] for k in KINDS)
