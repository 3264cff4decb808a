"""`tracer cluster capture` collecting REAL captures: both lab nodes captured
with `tracer capture` under real traffic, then served as a two-node cluster by
the fake kubectl. What is real: the captures and the merge; what is not: the
cluster (no Jobs run; docs/cluster.md)."""

from __future__ import annotations

import time

import pytest

from tests.capture.lab_capture import capture
from tests.cluster.fake_cluster import make_fake_cluster
from tracer.analysis.correlate import merge
from tracer.capfile import load
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_real_lab_captures_collected_and_merged(lab_state, tmp_path):
    real = tmp_path / "real"
    with capture(["--svc", "nginx-demo-1", "--netns", "lab-node-a"], real / "lab-node-a") as a, \
            capture(["--svc", "nginx-demo-1", "--netns", "lab-node-b"], real / "lab-node-b") as b:
        result = run_traffic(requests=40, concurrency=4, target="external-ip")
        time.sleep(0.5)
    assert a.returncode == 0 and b.returncode == 0 and result.ok == 40
    nodes = ("lab-node-a", "lab-node-b")
    fake = make_fake_cluster(tmp_path / "fake", {n: real / n for n in nodes})

    out = tmp_path / "out"
    proc = fake.run("--svc", "nginx-demo-1", "--duration", "0.1", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    for node in nodes:
        assert len(load(out / "nodes" / node).events) == len(load(real / node).events) > 0
    merged = load(out / "merged")
    direct = merge([str(real / n) for n in nodes], tmp_path / "direct")
    assert len(merged.events) == direct.events
    # Packets DNATed on node A to the pod on node B are matched across nodes.
    assert merged.meta["correlation"]["cross_node_links"] == direct.links > 0
