"""UDP flows in `tracer diagnose` and `tracer fairness`: two real captures of
the lab's DNS Service (tests/analysis/data/udp/README.md, with the witnesses
they were checked against) and synthetic ones (tests/analysis/synthetic_udp.py)
for what the real ones do not show: undetermined flows, a retried query,
a tuple bound twice, a flow bound before the capture, TCP next to UDP."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.analysis.synthetic_udp import PODS, simulate_udp
from tests.cli_run import one_line_error, run
from tracer.analysis import fairness
from tracer.analysis.diagnose import diagnose
from tracer.analysis.diagnose_text import format_text
from tracer.analysis.events import load_events
from tracer.analysis.fairness_text import format_text as fairness_text
from tracer.analysis.packets import assemble

DATA = Path(__file__).parent / "data" / "udp"
HEALTHY = [DATA / "healthy" / "a", DATA / "healthy" / "b"]
BROKEN = [DATA / "broken" / "a", DATA / "broken" / "b"]
DEAD = "10.217.120.73:53"  # the broken sample's pod whose dnsmasq was stopped
PER_ENDPOINT = {"10.217.121.8:53": 96, "10.217.120.72:53": 89, "10.217.120.73:53": 115}


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(f for d in paths for f in Path(d).rglob("*") if f.is_file()):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_real_healthy_dns_every_flow_answered(capsys):
    before = _digest(HEALTHY)
    code, out, err = run(capsys, "diagnose", "--json", *map(str, HEALTHY))
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["verdict"] == "healthy" and doc["failures"] == [] and doc["undetermined"] == []
    c = doc["connections"]
    assert (c["total"], c["udp"], c["tcp"], c["answered"], c["succeeded"]) == (300, 300, 0, 300, 0)
    assert {e["endpoint"]: e["succeeded"] for e in doc["endpoints"]} == PER_ENDPOINT
    assert {e["proto"] for e in doc["endpoints"]} == {"udp"}
    assert all(e["failed"] == 0 for e in doc["endpoints"])
    code, out, _ = run(capsys, "diagnose", *map(str, HEALTHY))
    assert code == 0
    assert out.splitlines()[:2] == [
        "service default/web-dns: all 300 flows answered; nothing to blame",
        "  answered 300, unreachable 0, no answer 0, undetermined 0"]
    assert _digest(HEALTHY) == before


def test_real_broken_dns_blames_the_pod_without_a_server(capsys):
    """31 queries went to the pod whose dnsmasq was stopped: each was dropped
    in the pod (NO_SOCKET); 8 got the pod's ICMP port unreachable (the
    client's 8 "refused"), the kernel's ICMP rate limit held back the other
    23 (the client's 23 timeouts). The 59 others were answered."""
    before = _digest(BROKEN)
    d = diagnose(BROKEN)
    c = d.connections
    assert d.verdict == "failing"
    assert (c["total"], c["answered"], c["unreachable"], c["no_answer"], c["undetermined"]) == (
        90, 59, 8, 23, 0)
    assert {e["endpoint"]: (e["succeeded"], e["failed"]) for e in d.endpoints} == {
        "10.217.121.8:53": (27, 0), "10.217.120.72:53": (32, 0), DEAD: (0, 31)}
    by_outcome = {g["outcome"]: g for g in d.failures}
    assert set(by_outcome) == {"unreachable", "no_answer"}
    for g in d.failures:
        assert g["proto"] == "udp" and g["common"]["endpoint"] == DEAD
        assert g["endpoints"] == {DEAD: g["count"]} and g["syn_retransmits"] == 0
        s = g["stop"]
        assert (s["kind"], s["node"], s["drop_reason"]) == ("dropped", "lab-node-a", "NO_SOCKET")
        assert s["netns"].startswith("lab-pod-web-")
    i = by_outcome["unreachable"]["icmp"]
    assert (i["type"], i["code"], i["sender"], i["sent_by"], i["count"]) == (
        3, 3, "10.217.120.73", "pod", 8)
    assert i["quoted"].endswith(f"-> {DEAD} udp")
    assert by_outcome["no_answer"]["icmp"] is None
    text = format_text(d)
    assert text.startswith("service default/web-dns: 59 of 90 flows answered, 31 failed\n"
                           "  answered 59, unreachable 8, no answer 23, undetermined 0\n")
    assert ("8 flow(s) refused by ICMP 3/3 (port unreachable) from 10.217.120.73 (the pod)"
            in text)
    assert "ICMP 3/3 port unreachable from 10.217.120.73, sent by the pod" in text
    assert "23 flow(s) no answer to the datagram" in text
    assert "no ICMP error came back for these: the kernel rate-limits them" in text
    assert (f"all 23 were DNATed by lab-node-a to {DEAD} on lab-node-a; the 32 to "
            "10.217.120.72:53 were answered; the 27 to 10.217.121.8:53 were answered") in text
    assert _digest(BROKEN) == before


def test_real_dns_fairness_counts_flows_and_queries(capsys):
    before = _digest(HEALTHY)
    code, out, err = run(capsys, "fairness", "--json", *map(str, HEALTHY))
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["unit"] == "flows"
    o = doc["overall"]
    assert o["connections"] == 300
    assert {e["endpoint"]: e["connections"] for e in o["endpoints"]} == PER_ENDPOINT
    # One DNS query per flow: the requests are the queries, never 0.
    assert {e["endpoint"]: e["requests"] for e in o["endpoints"]} == PER_ENDPOINT
    assert doc["requests"]["requests"] == 300 and doc["requests"]["per_connection"]["max"] == 1
    assert "datagrams" in doc["requests"]["counted"]
    code, out, _ = run(capsys, "fairness", *map(str, HEALTHY))
    assert code == 0
    assert out.startswith("Service default/web-dns: 300 new flows (")
    assert "flows  observed" in out and "req/flow" in out and "Requests per flow (" in out
    assert "connections" not in out.split("\n\n")[0]
    assert _digest(HEALTHY) == before


def test_synthetic_outcomes_retry_and_icmp(tmp_path):
    kinds = ["answer", "retry", "no_socket", "icmp", "silent", "icmp", "answer", "answer_lost"]
    sim = simulate_udp(kinds, endpoints=[0, 1, 0, 1, 1, 0, 1, 1])
    paths = sim.write(tmp_path)
    before = _digest(paths)
    d = diagnose(paths)
    truth = sim.truth["outcome"].value_counts().to_dict()
    c = d.connections
    assert c["udp"] == c["total"] == len(kinds) and c["tcp"] == 0
    for outcome in ("answered", "unreachable", "no_answer"):
        assert c[outcome] == truth.get(outcome, 0), outcome
    groups = {(g["outcome"], g["common"]["endpoint"]): g for g in d.failures}
    icmp_b = groups[("unreachable", f"{PODS[1].ip}:53")]["icmp"]
    assert (icmp_b["sent_by"], icmp_b["sender"], icmp_b["node"]) == ("pod", PODS[1].ip, "lab-node-b")
    # Pod B's silence stops in the pod; its lost answer where B sent it on.
    stops = {(s["probe"], s["netns"]) for g in d.failures for s in [g["stop"]]
             if g["outcome"] == "no_answer" and g["common"]["endpoint"] == f"{PODS[1].ip}:53"}
    assert stops == {("rx", PODS[1].netns), ("tx", "lab-node-b")}
    dropped = groups[("no_answer", f"{PODS[0].ip}:53")]["stop"]
    assert (dropped["drop_reason"], dropped["netns"]) == ("NO_SOCKET", PODS[0].netns)
    report = fairness.analyze(assemble(load_events(paths)))
    assert report.unit == "flows" and report.overall.connections == len(kinds)
    assert report.requests["requests"] == len(kinds) + 1  # the retried query is sent twice
    assert report.requests["per_connection"]["max"] == 2
    text = fairness_text(report)
    assert f"{len(kinds)} new flows (" in text and "Requests per flow (" in text
    assert _digest(paths) == before


def test_synthetic_flows_too_close_to_the_end_are_undetermined(tmp_path):
    """No answer is judged only a SETTLE_NS after the flow: a capture that
    ends 0.3 s after the last query cannot tell a lost answer from none."""
    sim = simulate_udp(["answer", "silent", "no_socket", "silent"], tail_ns=300_000_000)
    d = diagnose(sim.write(tmp_path))
    assert d.verdict == "undetermined" and d.failures == []
    assert d.connections["answered"] == 1 and d.connections["undetermined"] == 3
    (u,) = d.undetermined
    assert (u["reason"], u["proto"], u["would_be"]) == ("capture_ended", "udp", {"no_answer": 3})
    assert "not judged: 3 flow(s) (3 no answer): the capture ended" in format_text(d)


def test_synthetic_a_tuple_bound_twice_is_two_flows_and_one_bound_before_is_not_judged(
        tmp_path):
    """A fresh DNAT binding (nat_first) on a tuple seen before is a new flow
    (conntrack's entry expired or was deleted); a tuple whose first datagram
    reused a binding began before the capture."""
    twice = simulate_udp(["answer", "answer"], ports=[31000, 31000])
    d = diagnose(twice.write(tmp_path / "twice"))
    assert d.connections["total"] == d.connections["answered"] == 2
    before = simulate_udp(["retry"])
    for node, f in before.events.items():  # the first query (DNAT nat_first) not captured
        first = f[f["nat_first"].to_numpy() & (f["proto"].to_numpy() == 17)]["ip_id"]
        before.events[node] = f[~f["ip_id"].isin(first)].reset_index(drop=True)
    d = diagnose(before.write(tmp_path / "before"))
    assert d.connections["already_open"] == 1 and d.connections["total"] == 0


def test_synthetic_tcp_next_to_udp(tmp_path, capsys):
    """TCP connections are judged as before, UDP flows as flows, each in its
    own groups and endpoint rows, and the words say which is which."""
    sim = simulate_udp(["answer", "no_socket", "answer", "no_socket"], tcp_connections=6,
                       endpoints=[0, 1, 0, 1])
    paths = sim.write(tmp_path)
    before = _digest(paths)
    d = diagnose(paths)
    c = d.connections
    assert (c["tcp"], c["succeeded"], c["udp"], c["answered"], c["no_answer"]) == (6, 6, 4, 2, 2)
    (g,) = d.failures
    assert g["proto"] == "udp" and g["common"]["endpoint"] == f"{PODS[1].ip}:53"
    protos = {(e["endpoint"], e["proto"]) for e in d.endpoints}
    assert {(f"{p.ip}:53", "udp") for p in PODS} <= protos
    assert all(p == "tcp" for ep, p in protos if ep.endswith(":80"))
    text = format_text(d)
    assert text.startswith("service default/nginx-demo-1: 6 of 6 connections succeeded, "
                           "2 of 4 flows answered, 2 failed\n  succeeded 6, answered 2, reset 0")
    code, out, err = run(capsys, "fairness", "--json", *map(str, paths))
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["unit"] == "connections and flows" and doc["overall"]["connections"] == 10
    # 6 TCP requests (one PSH each) and 4 queries.
    assert doc["requests"]["requests"] == 10
    assert _digest(paths) == before


@pytest.mark.parametrize("command", ["diagnose", "fairness"])
def test_damaged_udp_capture_is_one_line(tmp_path, capsys, command):
    """A UDP capture whose part is cut short: one line, exit 5, nothing changed."""
    copy = tmp_path / "a"
    shutil.copytree(HEALTHY[0], copy)
    part = next(copy.glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:1000])
    before = _digest([copy])
    code, out, err = run(capsys, command, str(copy))
    assert code == 5 and out == ""
    assert one_line_error(err).startswith("tracer: error: ")
    assert _digest([copy]) == before


def test_the_rate_limit_hint_names_the_familys_sysctl():
    from tracer.analysis.diagnose_text import _ratelimit

    v4 = {"examples": [{"client": "192.168.64.10:5353"}]}
    v6 = {"examples": [{"client": "[fd00:192:168:64::10]:5353"}]}
    assert _ratelimit(v4) == "net.ipv4.icmp_ratelimit"
    assert _ratelimit(v6) == "net.ipv6.icmp.ratelimit"
