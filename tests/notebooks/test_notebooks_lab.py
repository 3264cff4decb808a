"""Both notebooks run end to end on captures recorded now, during this test
run, on the lab's two nodes (the engine in two `tracer capture` processes,
real traffic), and what they compute agrees with the lab's own counts."""

from __future__ import annotations

import re
import time

import pytest

from tests.capture.lab_capture import capture
from tests.notebooks.run import NAMES, execute
from tracer.lab import witness
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def recorded(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook-captures")
    before = witness.mark(lab, "nginx-demo-1")
    with (
        capture(["--svc", "nginx-demo-1", "--netns", "lab-node-a"], tmp / "lab-node-a") as a,
        capture(["--svc", "nginx-demo-1", "--netns", "lab-node-b"], tmp / "lab-node-b") as b,
    ):
        fresh = run_traffic(requests=120, concurrency=4, target="external-ip")
        kept = run_traffic(requests=30, concurrency=3, target="external-ip", keepalive=True)
        time.sleep(0.5)
    assert a.returncode == 0 and b.returncode == 0, a.stderr_lines + b.stderr_lines
    assert fresh.failed == 0 and kept.failed == 0
    return [tmp / "lab-node-a", tmp / "lab-node-b"], witness.since(lab, "nginx-demo-1", before)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_a_fresh_lab_capture(name, recorded, tmp_path):
    captures, seen = recorded
    run = execute(name, captures, tmp_path)
    assert not run.errors()
    assert run.images() >= 3
    text = run.text()
    assert str(captures[0]) in text  # it read these captures, not the shipped sample
    if name == "lb_fairness":
        m = re.search(r"^(\d+) DNAT choices$", text, re.M)
        assert m and int(m.group(1)) == sum(seen.dnat.values())  # = KUBE-SEP counters
