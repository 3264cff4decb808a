"""`tracer diagnose` on synthetic captures of each fault: the counts are the
simulation's truth, the stop is where the fault is, the healthy endpoint is
never blamed, and a capture that cannot tell says so instead of blaming."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.analysis.synthetic_faults import PODS, simulate_fault
from tracer.analysis.diagnose import diagnose
from tracer.analysis.diagnose_text import format_text

ROOT = Path(__file__).resolve().parents[2]
BAD = f"{PODS[1].ip}:80"
GOOD = f"{PODS[0].ip}:80"


def _run(fault: str, tmp_path: Path, **kwargs):
    sim = simulate_fault(fault, **kwargs)
    return sim, diagnose(sim.write(tmp_path))


def _counts(sim) -> dict[str, int]:
    return sim.truth["outcome"].value_counts().to_dict()


def _check_counts(sim, d) -> None:
    truth = _counts(sim)
    assert d.connections["total"] == len(sim.truth)
    for outcome in ("succeeded", "reset", "no_answer", "stalled"):
        assert d.connections[outcome] == truth.get(outcome, 0), outcome
    assert sum(g["count"] for g in d.failures) == len(sim.truth) - truth.get("succeeded", 0)


def _never_blames_the_healthy_pod(d) -> None:
    for g in d.failures:
        assert GOOD not in g["endpoints"] and g["common"]["endpoint"] != GOOD


def test_healthy_service_blames_nothing(tmp_path):
    sim, d = _run("healthy", tmp_path)
    assert d.verdict == "healthy" and d.failures == [] and d.undetermined == []
    assert d.connections["succeeded"] == len(sim.truth) == 40
    assert "all 40 connections succeeded; nothing to blame" in format_text(d)


def test_policy_drop_on_node_b(tmp_path):
    sim, d = _run("policy_drop", tmp_path)
    _check_counts(sim, d)
    _never_blames_the_healthy_pod(d)
    (g,) = d.failures
    assert g["outcome"] == "no_answer" and g["common"]["endpoint"] == BAD
    assert g["stop"]["kind"] == "dropped" and g["stop"]["node"] == "lab-node-b"
    assert g["stop"]["drop_reason"] == "NETFILTER_DROP" and g["stop"]["device"] == "eth0"
    assert g["syn_retransmits"] == 2 * g["count"]
    ok = _counts(sim)["succeeded"]
    assert f"all {g['count']} were DNATed by lab-node-a to {BAD}" in g["finding"]
    assert f"the {ok} to {GOOD} succeeded" in g["finding"]
    assert g["rule"] is None and g["icmp"] is None  # not captured yet


def test_pod_answering_rst(tmp_path):
    sim, d = _run("wrong_target_port", tmp_path)
    _check_counts(sim, d)
    assert {g["reset_by"] for g in d.failures} == {"pod"}
    by_endpoint = {g["common"]["endpoint"]: g for g in d.failures}
    assert set(by_endpoint) == {GOOD, BAD}
    assert by_endpoint[BAD]["stop"]["netns"] == PODS[1].netns
    assert by_endpoint[BAD]["stop"]["node"] == "lab-node-b"


def test_reject_without_endpoints(tmp_path):
    sim, d = _run("reject", tmp_path)
    _check_counts(sim, d)
    (g,) = d.failures
    assert g["outcome"] == "reset" and g["reset_by"] == "node"
    assert g["endpoints"] == {"(none)": 40} and "no endpoint was chosen" in g["finding"]
    assert g["stop"]["node"] == "lab-node-a" and g["stop"]["drop_reason"] == "NETFILTER_DROP"
    assert g["reset_from"]["node"] == "lab-node-a" and g["reset_from"]["netns"] == "lab-node-a"
    assert "a REJECT" in format_text(d)


def test_route_withdrawn_on_node_a(tmp_path):
    sim, d = _run("route_withdrawn", tmp_path)
    _check_counts(sim, d)
    _never_blames_the_healthy_pod(d)
    (g,) = d.failures
    assert g["stop"]["node"] == "lab-node-a" and g["stop"]["drop_reason"] == "IP_NOROUTE"
    assert g["common"] == {"endpoint": BAD, "endpoint_node": None, "dnat_node": "lab-node-a"}


def test_large_responses_stall(tmp_path):
    sim, d = _run("mtu_stall", tmp_path)
    _check_counts(sim, d)
    _never_blames_the_healthy_pod(d)
    (g,) = d.failures
    assert g["outcome"] == "stalled" and g["common"]["endpoint"] == BAD
    assert g["common"]["endpoint_node"] == "lab-node-b"
    assert g["stop"]["kind"] == "last_seen" and g["stop"]["node"] == "lab-node-b"
    assert g["retransmitted_segments"] == g["count"] and g["largest_retransmitted"] == 1500


def test_lost_events_are_not_blamed(tmp_path):
    sim, d = _run("policy_drop", tmp_path, lost={"lab-node-b": 3})
    assert d.verdict == "undetermined" and d.failures == []
    (u,) = d.undetermined
    assert u["reason"] == "events_lost" and u["count"] == _counts(sim)["no_answer"]
    assert "could not be judged" in d.summary and "lost 3 events" in format_text(d)


def test_capture_ending_mid_connection_is_not_judged(tmp_path):
    sim, d = _run("policy_drop", tmp_path, tail_ns=0)
    late = [u for u in d.undetermined if u["reason"] == "capture_ended"]
    assert late and late[0]["would_be"] == {"no_answer": late[0]["count"]}
    judged = sum(g["count"] for g in d.failures)
    assert judged + late[0]["count"] == _counts(sim)["no_answer"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", "diagnose", *args], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(f for d in paths for f in Path(d).rglob("*") if f.is_file()):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_cli_json_structure_and_inputs_untouched(tmp_path):
    paths = simulate_fault("policy_drop").write(tmp_path)
    before = _digest(paths)
    r = _cli("--json", *map(str, paths))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"verdict", "summary", "service", "nodes", "capture", "connections",
                        "endpoints", "failures", "undetermined"}
    assert doc["verdict"] == "failing" and doc["service"] == "default/nginx-demo-1"
    g = doc["failures"][0]
    assert set(g) >= {"outcome", "count", "reset_by", "reset_from", "stop", "endpoints",
                      "dnat_nodes", "common", "finding", "syn_retransmits",
                      "retransmitted_segments", "largest_retransmitted", "examples", "rule",
                      "icmp"}
    assert set(g["stop"]) == {"kind", "node", "probe", "device", "netns", "hook", "drop_reason",
                              "after", "packet", "hop"}
    assert {e["endpoint"] for e in doc["endpoints"]} == {GOOD, BAD}
    text = _cli(*map(str, paths))
    assert text.returncode == 0 and "dropped on lab-node-b eth0: NETFILTER_DROP" in text.stdout
    assert _digest(paths) == before


@pytest.mark.parametrize("args", [[], ["/nonexistent/capture"]])
def test_cli_errors_are_one_line(args):
    r = _cli(*args)
    assert r.returncode in (2, 5) and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) >= 1 and "Traceback" not in r.stderr
    if args:
        assert r.returncode == 5 and r.stderr.strip().splitlines() == [
            "tracer: error: /nonexistent/capture: no such capture"]


def test_icmp_reject_on_node_b_followed_through_nat(tmp_path):
    """Node B rejects with ICMP 3/3; the error quotes the masqueraded SYN
    (node A -> pod) where it begins and the client's tuple after A's reverse
    NAT: either way it is attached to the client's connection, which is
    judged refused by ICMP from node B, not 'no answer'."""
    sim, d = _run("reject_icmp", tmp_path)
    truth = _counts(sim)
    assert truth.get("unreachable", 0) > 0
    assert d.connections["unreachable"] == truth["unreachable"]
    assert d.connections["no_answer"] == 0
    assert d.connections["succeeded"] == truth["succeeded"]
    _never_blames_the_healthy_pod(d)
    (g,) = d.failures
    assert g["outcome"] == "unreachable" and g["count"] == truth["unreachable"]
    i = g["icmp"]
    assert (i["type"], i["code"], i["name"]) == (3, 3, "port unreachable")
    assert (i["sender"], i["sent_by"], i["node"], i["probe"]) == ("192.168.64.58", "node", "lab-node-b", "tx")
    assert i["count"] == truth["unreachable"]
    assert i["quoted"].startswith("192.168.64.57:") and i["quoted"].endswith(f"-> {BAD} tcp")
    assert g["stop"]["node"] == "lab-node-b" and g["stop"]["drop_reason"] == "NETFILTER_DROP"
    text = format_text(d)
    assert (f"{truth['unreachable']} connection(s) refused by ICMP 3/3 (port unreachable) from "
            "192.168.64.58 (node lab-node-b)") in text
    assert "sent by the node (no pod involved), first seen at tx on lab-node-b eth0" in text
    assert json.loads(json.dumps(d.to_dict()))["failures"][0]["icmp"]["sent_by"] == "node"


def test_without_the_icmp_error_the_same_connections_get_no_answer(tmp_path):
    """The judgement rests on the ICMP events: the same capture without them
    is the plain 'no answer' it would be without the quote followed."""
    sim = simulate_fault("reject_icmp")
    for node, f in sim.events.items():
        sim.events[node] = f[f["proto"].to_numpy() != 1].reset_index(drop=True)
    d = diagnose(sim.write(tmp_path))
    assert d.connections["unreachable"] == 0
    assert all(g["icmp"] is None for g in d.failures)


def test_timeline_shows_the_icmp_error_and_its_quote_at_each_hop(tmp_path):
    from tracer.analysis.timeline import format_journey, journey, packets_of

    sim = simulate_fault("reject_icmp", 6)
    packets = packets_of(sim.write(tmp_path))
    ev = packets.events
    pid = int(ev[ev["proto"].to_numpy() == 1]["packet"].iloc[0])
    doc = journey(packets, pid)
    assert [h["icmp"]["code"] for h in doc["hops"]] == [3] * 5
    text = format_journey(doc)
    assert "tx        lab-node-b/eth0  icmp 3/3 port unreachable from 192.168.64.58 to 192.168.64.57, " \
           "quoting 192.168.64.57:" in text
    assert "icmp 3/3 port unreachable from 192.168.64.57 to 192.168.64.10, quoting 192.168.64.10:" in text
    assert "(icmp 3/3, quote now 192.168.64.10:" in text
