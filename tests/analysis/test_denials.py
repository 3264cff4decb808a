"""`tracer diagnose` names a loadBalancerSourceRanges denial as such: a
client outside the ranges connecting to the load-balancer IP is refused by
design, not an unexplained drop; a failure from an admitted source is still
a failure; `tracer fairness` counts only DNAT decisions, so denied
connections are never an endpoint's."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.analysis.synthetic import VIP, VIP_PORT
from tests.analysis.synthetic_faults import DENIED_CLIENT, LB_FW_CHAIN, simulate_fault
from tracer.analysis.diagnose import diagnose
from tracer.analysis.diagnose_text import format_text

ROOT = Path(__file__).resolve().parents[2]
RANGES = ["192.168.64.0/24"]


def _cli(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", command, *args], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(f for d in paths for f in Path(d).rglob("*") if f.is_file()):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_denied_sources_are_named_and_the_service_is_healthy(tmp_path):
    sim = simulate_fault("lb_denied")
    d = diagnose(sim.write(tmp_path))
    denied = int((sim.truth["client"] == DENIED_CLIENT).sum())
    assert denied == 20 and d.connections["succeeded"] == 20 and d.connections["no_answer"] == 20
    (g,) = d.failures
    assert g["count"] == denied and g["endpoints"] == {"(none)": denied}
    assert g["denied_by"] == {"kind": "loadBalancerSourceRanges", "ranges": RANGES,
                              "chain": LB_FW_CHAIN, "load_balancer_ips": [f"{VIP}:{VIP_PORT}"],
                              "sources": [DENIED_CLIENT]}
    assert DENIED_CLIENT in g["finding"] and VIP in g["finding"] and RANGES[0] in g["finding"]
    assert d.verdict == "healthy"
    assert d.summary == ("20 of 40 connections succeeded, 20 denied by loadBalancerSourceRanges: "
                         "the Service is healthy for admitted sources")
    assert "denied by loadBalancerSourceRanges, not a fault" in format_text(d)


def test_a_failure_from_an_admitted_source_is_not_a_denial(tmp_path):
    # The client is inside the ranges; node B drops what goes to its pod.
    d = diagnose(simulate_fault("policy_drop", load_balancer_ranges=tuple(RANGES))
                 .write(tmp_path))
    (g,) = d.failures
    assert g["denied_by"] is None and "denied" not in g["finding"]
    assert d.verdict == "failing" and "denied" not in d.summary


def test_without_source_ranges_the_same_drops_are_unexplained(tmp_path):
    # Same packets, but the rules admit every source: nothing says "denied".
    d = diagnose(simulate_fault("lb_denied", load_balancer_ranges=()).write(tmp_path))
    (g,) = d.failures
    assert g["denied_by"] is None and d.verdict == "failing"
    assert g["stop"]["drop_reason"] == "NETFILTER_DROP"


def test_cli_json_and_text_and_inputs_untouched(tmp_path):
    paths = simulate_fault("lb_denied").write(tmp_path)
    before = _digest(paths)
    r = _cli("diagnose", "--json", *map(str, paths))
    assert r.returncode == 0 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "healthy"
    assert doc["failures"][0]["denied_by"]["sources"] == [DENIED_CLIENT]
    text = _cli("diagnose", *map(str, paths))
    assert text.returncode == 0 and "the Service is healthy for admitted sources" in text.stdout
    # fairness judges DNAT decisions only: the 20 admitted connections.
    fair = _cli("fairness", "--json", *map(str, paths))
    assert fair.returncode == 0, fair.stderr
    overall = json.loads(fair.stdout)["overall"]
    assert overall["connections"] == 20
    assert sum(e["connections"] for e in overall["endpoints"]) == 20
    assert _digest(paths) == before
