"""Fairness under session affinity (ClientIP): the spread is judged on each
client's first connection, and every later connection within the timeout
must reach the client's endpoint (violations listed). Hand-written DNAT
decisions (tests/analysis/synthetic.py), Service metadata as `tracer
services --json` / the capture write it."""

from __future__ import annotations

import json

import pytest

from tests.analysis.synthetic import NODE_A, NODE_NETNS_INO, VIP, VIP_PORT, event_set
from tracer.analysis import fairness, fairness_text

S = 10**9
ENDPOINTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def meta(timeout: int | None = 10800, affinity: bool = True) -> dict:
    port = {
        "port_name": "", "protocol": "tcp", "port": VIP_PORT, "cluster_ips": ["10.96.0.10"],
        "external_ips": [VIP], "load_balancer_ips": [], "node_port": None,
        "external_policy": "Cluster",
        "endpoints": [{"ip": ip, "port": 80, "protocol": "tcp", "probability": p, "share": 1 / 3,
                       "chain": f"KUBE-SEP-{i}"}
                      for i, (ip, p) in enumerate(zip(ENDPOINTS, (1 / 3, 0.5, 1.0), strict=True))],
        "local_endpoints": [],
        "session_affinity": {"type": "ClientIP", "timeout_seconds": timeout} if affinity else None,
    }
    service = {"namespace": "default", "name": "sticky", "name_source": "comment", "ports": [port]}
    return {NODE_A: {"node": NODE_A, "netns": {"inode": NODE_NETNS_INO[NODE_A]}, "service": service}}


def dnat(t_s: float, client: str, endpoint: int, i: int) -> dict:
    ts = int(t_s * S)
    return {"ts_ns": ts, "probe": "nat", "hook": "prerouting", "nat_kind": "dnat",
            "nat_first": True, "saddr": client, "sport": 30000 + i, "nat_saddr": client,
            "nat_daddr": ENDPOINTS[endpoint], "nat_sport": 30000 + i, "nat_dport": 80,
            "skb": 0x1000 + i}


def sticky_rows(clients: int = 9, per_client: int = 40, gap_s: float = 1.0) -> list[dict]:
    """Client c's connections all go to endpoint c % 3: one draw each, evenly."""
    rows = []
    for c in range(clients):
        for j in range(per_client):
            rows.append(dnat(j * gap_s + c * 0.01, f"192.168.64.{20 + c}", c % 3, len(rows)))
    return rows


def test_sticky_clients_are_judged_as_clients_not_connections() -> None:
    # Uneven connection counts per client: 3 heavy clients on endpoint 0.
    rows = sticky_rows(clients=9, per_client=5)
    for c in range(3):
        rows += [dnat(10 + j, f"192.168.64.{20 + c * 3}", 0, len(rows) + j) for j in range(200)]
        rows[-1]["sport"] = rows[-1]["nat_sport"] = 60000 + c  # distinct connections
    for i, row in enumerate(rows):
        row["skb"], row["sport"], row["nat_sport"] = 0x1000 + i, 10000 + i, 10000 + i
    report = fairness.analyze(event_set(rows, meta()))
    # 9 clients, 3 per endpoint: as promised, although endpoint 0 took 615 of 645 connections.
    assert report.overall.connections == 9
    assert [e.connections for e in report.overall.endpoints] == [3, 3, 3]
    assert report.overall.chi2.p_value == pytest.approx(1.0)
    a = report.affinity
    assert (a.clients, a.connections, a.first, a.returning, a.expired) == (9, 645, 9, 636, 0)
    assert a.violations == [] and a.sticky == 636 and a.timeout_s == 10800
    # Per client still shows every connection (each on one endpoint).
    assert sum(g.connections for g in report.per_client) == 645
    # Without affinity in the metadata the same capture is judged per connection: skewed.
    plain = fairness.analyze(event_set(rows, meta(affinity=False)))
    assert plain.overall.connections == 645 and plain.affinity is None
    assert plain.overall.chi2.p_value < 1e-6


def test_violations_are_listed() -> None:
    rows = sticky_rows(clients=3, per_client=4)
    moved = rows[4 + 2]  # client 1's third connection
    assert moved["saddr"] == "192.168.64.21"
    moved["nat_daddr"] = ENDPOINTS[2]  # client 1 (endpoint 1) moves once, then returns
    report = fairness.analyze(event_set(rows, meta()))
    a = report.affinity
    assert a.returning == 9 and a.sticky == 7
    assert [(v.client, v.previous, v.endpoint, v.gap_s, v.port, v.node) for v in a.violations] == [
        ("192.168.64.21", "10.0.0.2:80", "10.0.0.3:80", pytest.approx(1.0), "8088/tcp", NODE_A),
        ("192.168.64.21", "10.0.0.3:80", "10.0.0.2:80", pytest.approx(1.0), "8088/tcp", NODE_A),
    ]
    text = fairness_text.format_text(report)
    assert "Session affinity ClientIP (timeout 10800 s): 3 clients, 12 connections" in text
    assert "NOT sticky: 2 moved to another endpoint" in text
    assert "violation: 192.168.64.21 via lab-node-a 8088/tcp: 10.0.0.2:80 -> 10.0.0.3:80" in text
    # Per client, stickiness instead of a spread (one client is one draw).
    per_client = {line.split()[0]: line for line in text.splitlines()
                  if line.startswith("  192.168.64.") and "per endpoint" in line}
    assert per_client["192.168.64.21"].endswith("affinity: left its endpoint 2 time(s)")
    assert per_client["192.168.64.20"].endswith("affinity: pinned")
    assert "Jain" not in per_client["192.168.64.20"]
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["affinity"]["violation_count"] == 2
    assert doc["affinity"]["violations"][0]["endpoint"] == "10.0.0.3:80"
    assert doc["affinity"]["first_connections"] == 3 and doc["overall"]["connections"] == 3


def test_after_the_timeout_a_client_draws_again() -> None:
    # Connections 100 s apart with a 60 s timeout: every one is a fresh draw,
    # so changing endpoint is no violation.
    rows = [dnat(100 * j, "192.168.64.30", j % 3, j) for j in range(6)]
    report = fairness.analyze(event_set(rows, meta(timeout=60)))
    a = report.affinity
    assert (a.first, a.expired, a.returning, a.violations) == (6, 5, 0, [])
    assert report.overall.connections == 6
    # The same within a 600 s timeout: 5 returning connections, all moved.
    sticky = fairness.analyze(event_set(rows, meta(timeout=600))).affinity
    assert (sticky.first, sticky.returning, len(sticky.violations)) == (1, 5, 5)
    # No timeout in the rules: never expires.
    forever = fairness.analyze(event_set(rows, meta(timeout=None))).affinity
    assert forever.timeout_s is None and forever.returning == 5
    assert "no timeout" in "\n".join(fairness_text.format_text(fairness.analyze(
        event_set(rows, meta(timeout=None)))).splitlines())


def test_sticky_text_verdict() -> None:
    report = fairness.analyze(event_set(sticky_rows(clients=3, per_client=3), meta()))
    text = fairness_text.format_text(report)
    assert "spread judged on 3 first connections (0 after the affinity expired)" in text
    assert "6 later connections within the timeout, 6 kept their client's endpoint; sticky" in text
    assert any("session affinity (ClientIP)" in n for n in report.notes)
