"""Promises under traffic policies: which endpoints a connection may reach
depends on how it came in (cluster IP or an external address), where from
(an external client, a pod, the node itself) and on which node kube-proxy
DNATed it; and under externalTrafficPolicy Local the client's source must
reach the pod unchanged. The Service metadata is what the parser makes of
real kube-proxy rules (tests/kube/data/kube_proxy_policies.txt, node-a: one
endpoint there, 10.217.1.5, one on node-b, 10.217.2.5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.analysis.synthetic import NODE_A, NODE_NETNS_INO, event_set
from tracer.analysis.addresses import ip_to_int
from tracer.analysis.fairness import analyze
from tracer.analysis.promises import dnat_decisions, promise_connections
from tracer.analysis.service import parse_service
from tracer.analysis.source_preservation import rewritten_sources
from tracer.kube.iptables_parse import parse_iptables_nat_rules

RULES = (Path(__file__).parents[1] / "kube" / "data" / "kube_proxy_policies.txt").read_text()
SERVICES = {s.name: s.to_dict() for s in parse_iptables_nat_rules(RULES)}
LOCAL, REMOTE = "10.217.1.5:80", "10.217.2.5:80"
EXTERNAL_CLIENT, POD_CLIENT, NODE_IP = "203.0.113.9", "10.217.3.7", "192.168.64.57"


def meta(service: str) -> dict:
    return {"node": NODE_A, "netns": {"inode": NODE_NETNS_INO[NODE_A]},
            "service": SERVICES[service]}


def dnat(i: int, src: str, dst: str, dport: int, to: str, hook: str = "prerouting") -> dict:
    ip, port = to.split(":")
    return {"ts_ns": 1000 * (i + 1), "probe": "nat", "hook": hook, "nat_kind": "dnat",
            "nat_first": True, "saddr": src, "daddr": dst, "sport": 40000 + i, "dport": dport,
            "nat_saddr": src, "nat_daddr": ip, "nat_sport": 40000 + i, "nat_dport": int(port),
            "skb": 0x100 + i}


def snat(i: int, src: str, to: str, new_src: str) -> dict:
    """The POSTROUTING masquerade of connection i (its post-DNAT tuple)."""
    ip, port = to.split(":")
    return {"ts_ns": 1000 * (i + 1) + 500, "probe": "nat", "hook": "postrouting",
            "nat_kind": "snat", "nat_first": True, "saddr": src, "daddr": ip,
            "sport": 40000 + i, "dport": int(port), "nat_saddr": new_src, "nat_daddr": ip,
            "nat_sport": 61000 + i, "nat_dport": int(port), "skb": 0x100 + i}


def promises(service: str, rows: list[dict]) -> list[set[str]]:
    """Each connection's promised endpoints (those with a share)."""
    events = event_set(rows, {NODE_A: meta(service)})
    p = promise_connections(dnat_decisions(events.events), events.node_meta)
    return [{p.keys[k] for k in np.flatnonzero(row > 0)} for row in p.shares]


def test_internal_policy_local_promises_only_this_nodes_endpoint() -> None:
    """A pod -> cluster IP under internalTrafficPolicy Local: KUBE-SVL, the
    local endpoint only (before: nothing was promised, KUBE-SVC is absent)."""
    got = promises("itp-local", [dnat(0, POD_CLIENT, "10.96.10.10", 80, LOCAL)])
    assert got == [{LOCAL}]


def test_internal_local_external_cluster_differ_by_entry() -> None:
    """iTP Local + eTP Cluster: the cluster IP keeps to the node, the node
    port spreads over every endpoint (before: every endpoint for both)."""
    got = promises("itp-local-np", [
        dnat(0, POD_CLIENT, "10.96.10.11", 80, LOCAL),
        dnat(1, EXTERNAL_CLIENT, NODE_IP, 30111, REMOTE),
    ])
    assert got == [{LOCAL}, {LOCAL, REMOTE}]


@pytest.mark.parametrize(("src", "hook", "dst", "port", "expected"), [
    (EXTERNAL_CLIENT, "prerouting", "192.0.2.10", 80, {LOCAL}),  # LB IP, external: local only
    (EXTERNAL_CLIENT, "prerouting", NODE_IP, 30112, {LOCAL}),  # node port, external
    (POD_CLIENT, "prerouting", "192.0.2.10", 80, {LOCAL, REMOTE}),  # pod: short-circuited
    (POD_CLIENT, "prerouting", NODE_IP, 30112, {LOCAL, REMOTE}),
    (NODE_IP, "output", "192.0.2.10", 80, {LOCAL, REMOTE}),  # the node itself
    (NODE_IP, "output", NODE_IP, 30112, {LOCAL, REMOTE}),
    (EXTERNAL_CLIENT, "prerouting", "10.96.10.12", 80, {LOCAL, REMOTE}),  # cluster IP: Cluster
])
def test_external_policy_local_depends_on_the_source(src, hook, dst, port, expected) -> None:
    assert promises("etp-local-lb", [dnat(0, src, dst, port, LOCAL, hook)]) == [expected]


def test_the_node_decides_what_local_means() -> None:
    """The same external connection DNATed on node-b is held to node-b's
    rules: its local endpoint is 10.217.2.5."""
    node_b_rules = RULES.replace("10.217.1.5", "10.217.9.9").replace("10.217.2.5", "10.217.1.5")
    node_b_rules = node_b_rules.replace("10.217.9.9", "10.217.2.5")
    ports = parse_service(next(s.to_dict() for s in parse_iptables_nat_rules(node_b_rules)
                               if s.name == "etp-local-lb"))
    found = ports[0].promise_for(ip_to_int("192.0.2.10"), 80, 6, ip_to_int(EXTERNAL_CLIENT))
    assert [e.key for e in found] == [REMOTE]


def test_sctp_port_does_not_match_tcp_and_unknown_protocols_match_nothing() -> None:
    sctp = dict(SERVICES["itp-local-np"]["ports"][0], protocol="sctp")
    (port,) = parse_service({"name": "x", "ports": [sctp]})
    vip = ip_to_int("10.96.10.11")
    assert port.protocol == 132
    assert port.promise_for(vip, 80, 132) is not None
    assert port.promise_for(vip, 80, 6) is None and port.promise_for(vip, 80, 17) is None
    (odd,) = parse_service({"name": "x", "ports": [dict(sctp, protocol="dccp")]})
    assert odd.promise_for(vip, 80, 6) is None and odd.promise_for(vip, 80, 33) is None


def test_masquerading_an_external_client_under_local_policy_is_reported() -> None:
    rows = [
        dnat(0, EXTERNAL_CLIENT, "192.0.2.10", 80, LOCAL),
        snat(0, EXTERNAL_CLIENT, LOCAL, NODE_IP),  # the promise broken
        dnat(1, EXTERNAL_CLIENT, NODE_IP, 30112, LOCAL),  # kept: no SNAT
        dnat(2, POD_CLIENT, "192.0.2.10", 80, REMOTE),  # a pod: may be masqueraded
        snat(2, POD_CLIENT, REMOTE, NODE_IP),
        dnat(3, NODE_IP, "192.0.2.10", 80, REMOTE, hook="output"),  # the node: masqueraded
        snat(3, NODE_IP, REMOTE, NODE_IP),
    ]
    events = event_set(rows, {NODE_A: meta("etp-local-lb")})
    found = rewritten_sources(events.events, dnat_decisions(events.events), events.node_meta)
    assert [r.to_dict() for r in found] == [{
        "node": NODE_A, "client": "203.0.113.9:40000", "frontend": "192.0.2.10:80",
        "endpoint": LOCAL, "seen_as": "192.168.64.57:61000"}]
    notes = analyze(events).notes
    assert any(n.startswith("1 connection(s) from external clients to an externalTrafficPolicy "
                            "Local address were masqueraded") and "203.0.113.9:40000" in n
               for n in notes)


def test_masquerading_under_cluster_policy_is_not_reported() -> None:
    rows = [dnat(0, EXTERNAL_CLIENT, NODE_IP, 30111, REMOTE),
            snat(0, EXTERNAL_CLIENT, REMOTE, NODE_IP)]
    events = event_set(rows, {NODE_A: meta("itp-local-np")})
    assert rewritten_sources(events.events, dnat_decisions(events.events), events.node_meta) == []
