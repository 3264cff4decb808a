"""Fairness: counted per connection, against the rules' promise."""

from __future__ import annotations

import pytest

from tests.analysis.synthetic import NODE_A, NODE_B, Scenario, event_set, first_dnat_rows, simulate
from tracer.analysis import fairness, fairness_text
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble
from tracer.analysis.service import eras, parse_service, shares_from_probabilities


def _report(tmp_path, **kwargs):
    sim = simulate(Scenario(**kwargs))
    paths = sim.write(tmp_path)
    return sim, fairness.analyze(assemble(load_events([paths[NODE_A], paths[NODE_B]])))


def test_counts_one_decision_per_connection(scenario):
    report = fairness.analyze(assemble(load_events(scenario.both)))
    truth = scenario.sim.connections
    got = {e.endpoint: e.connections for e in report.overall.endpoints}
    assert got == {
        "10.217.120.72:80": int((truth["endpoint"] == 0).sum()),
        "10.217.121.8:80": int((truth["endpoint"] == 1).sum()),
    }
    assert report.overall.connections == len(truth)  # not the number of packets
    nodes = {e.endpoint: e.node for e in report.overall.endpoints}
    assert nodes == {"10.217.120.72:80": NODE_A, "10.217.121.8:80": NODE_B}


def test_requests_per_connection_expose_keep_alive(scenario):
    report = fairness.analyze(assemble(load_events(scenario.both)))
    truth = scenario.sim.connections
    assert report.requests["requests"] == int(truth["requests"].sum())
    assert report.requests["per_connection"]["max"] == 6
    pinned = next(g for g in report.per_client if g.label == "192.168.64.12")
    assert sum(e.requests for e in pinned.endpoints) == 6 * pinned.connections


def test_skew_is_detected(tmp_path):
    _, report = _report(tmp_path, connections=1500, actual_shares=(0.6, 0.4), seed=5)
    o = report.overall
    assert o.chi2.p_value < 1e-6
    a, b = o.endpoints  # two endpoints: deviations mirror each other
    assert a.deviation > 0.05 and a.significant and a.deviation == pytest.approx(-b.deviation)
    assert abs(o.largest.deviation) == pytest.approx(a.deviation)
    assert o.jain < 0.99


def test_fair_spread_is_consistent(tmp_path):
    _, report = _report(tmp_path, connections=1500, seed=6)
    o = report.overall
    assert o.chi2.p_value > 0.01
    assert not any(e.significant for e in o.endpoints) or o.chi2.p_value > 0.05
    assert o.jain > 0.99


def test_unequal_promise_from_probabilities(tmp_path):
    # Three-way rule cascade (1/3, 1/2, rest) on two pods -> p=(0.3,): shares 0.3 / 0.7.
    _, report = _report(tmp_path, connections=1200, probabilities=(0.3,), seed=8)
    promised = [e.promised_share for e in report.overall.endpoints]
    assert promised == pytest.approx([0.3, 0.7])
    assert report.overall.chi2.p_value > 0.01


def test_sticky_client_shows_up_per_client(tmp_path):
    _, report = _report(
        tmp_path,
        connections=900,
        clients=("192.168.64.10", "192.168.64.11"),
        sticky_clients={"192.168.64.11": 1},
        seed=9,
    )
    sticky = next(g for g in report.per_client if g.label == "192.168.64.11")
    other = next(g for g in report.per_client if g.label == "192.168.64.10")
    assert sticky.endpoints[0].connections == 0 and sticky.chi2.p_value < 1e-10
    assert sticky.jain == pytest.approx(0.5)  # one-hot over two endpoints: 1/n
    assert other.chi2.p_value > 1e-3


def test_rules_changing_mid_capture(tmp_path):
    """service_history: the second half promised 80/20; counts follow each era."""
    sim, report = _report(
        tmp_path,
        connections=1200,
        rate_per_s=400,
        change_after_s=1.5,
        changed_probabilities=(0.8,),
        seed=12,
    )
    truth = sim.connections
    late = truth["start_ns"] >= truth["start_ns"].iloc[0] + 1.5e9
    expected_a = 0.5 * (~late).sum() + 0.8 * late.sum()
    a = report.overall.endpoints[0]
    assert a.expected == pytest.approx(expected_a)
    assert report.overall.chi2.p_value > 0.001
    assert any("different endpoint sets" in n for n in report.notes)
    # windows after the change promise 80 %
    assert report.windows[-1].endpoints[0].promised_share == pytest.approx(0.8)


def test_without_service_metadata_shares_are_equal():
    rows = first_dnat_rows(10, 2)
    report = fairness.analyze(event_set(rows))
    assert [e.connections for e in report.overall.endpoints] == [5, 5]
    assert report.overall.chi2.p_value == pytest.approx(1.0)
    assert any("no Service" in n for n in report.notes)


def test_established_packets_are_never_counted():
    base = {
        "probe": "nat",
        "hook": "prerouting",
        "nat_kind": "dnat",
        "nat_saddr": "192.168.64.10",
        "nat_daddr": "10.0.0.1",
        "nat_sport": 40000,
        "nat_dport": 80,
    }
    rows = [dict(base, ts_ns=0, nat_first=True, skb=1)] + [
        dict(base, ts_ns=1000 * i, skb=1 + i, ip_id=i) for i in range(1, 50)
    ]
    assert fairness.analyze(event_set(rows)).overall.connections == 1


def test_external_traffic_policy_local_promises_local_endpoints():
    service = {
        "name": "s",
        "namespace": "default",
        "ports": [
            {
                "protocol": "tcp",
                "port": 8088,
                "cluster_ips": ["10.96.0.10"],
                "external_ips": ["192.168.64.57"],
                "node_port": 30080,
                "external_policy": "Local",
                "endpoints": [
                    {"ip": "10.0.0.1", "port": 80, "probability": 0.5, "share": 0.5},
                    {"ip": "10.0.0.2", "port": 80, "probability": 1.0, "share": 0.5},
                ],
                "local_endpoints": [
                    {"ip": "10.0.0.1", "port": 80, "probability": 1.0, "share": 1.0}
                ],
            }
        ],
    }
    era = eras({"service": service})[0]
    from tracer.analysis.addresses import ip_to_int

    ext = era.promise_for(ip_to_int("192.168.64.57"), 8088, 6, "10.0.0.1:80")
    cluster = era.promise_for(ip_to_int("10.96.0.10"), 8088, 6, "10.0.0.1:80")
    nodeport = era.promise_for(ip_to_int("192.168.64.58"), 30080, 6, "10.0.0.1:80")
    assert [e.key for e in ext] == ["10.0.0.1:80"] == [e.key for e in nodeport]
    assert [e.share for e in cluster] == [0.5, 0.5]
    assert (
        era.promise_for(ip_to_int("10.96.0.10"), 8088, 17, "10.9.9.9:80") is None
    )  # udp: not this port


def test_shares_from_probabilities():
    assert shares_from_probabilities([1 / 3, 0.5, None]) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert shares_from_probabilities([0.25, 1.0]) == pytest.approx([0.25, 0.75])
    flat = parse_service(
        {
            "endpoints": [
                {"address": "10.0.0.1", "target_port": 80, "probability": 0.2},
                {"address": "10.0.0.2", "target_port": 80},
            ]
        }
    )
    assert [e.share for e in flat[0].endpoints] == pytest.approx([0.2, 0.8])


def test_text_output(scenario):
    text = fairness_text.format_text(fairness.analyze(assemble(load_events(scenario.both))))
    assert "new connections" in text and "chi-square" in text and "Jain" in text
    assert "Requests per connection" in text and "Per client" in text
