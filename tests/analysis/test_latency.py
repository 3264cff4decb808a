"""Latency distributions (the histograms themselves: tests/test_histograms.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis.synthetic import NODE_A, NODE_B, event_set
from tracer.analysis import latency
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble


@pytest.fixture(scope="module")
def report(scenario):
    return latency.analyze(assemble(load_events(scenario.both)))


def test_nat_groups_first_apart_from_established(report, scenario):
    groups = {(d.labels["hook"], d.labels["kind"], d.labels["first"]): d for d in report.nat}
    first = groups[("prerouting", "dnat", "first")]
    est = groups[("prerouting", "dnat", "established")]
    conns = len(scenario.sim.connections)
    assert first.count == conns  # one first DNAT per connection
    assert first.percentiles["50"] > 10 * est.percentiles["50"]  # ~15 us vs ~0.6 us
    assert set(groups) >= {
        ("postrouting", "snat", "first"),
        ("prerouting", "rev_snat", "established"),
        ("postrouting", "rev_dnat", "established"),
    }
    # exactly the capture's nat_ns values
    a = scenario.sim.events[NODE_A]
    truth = a[(a["nat_kind"] == "dnat") & a["nat_first"]]["nat_ns"].to_numpy()
    assert first.max == truth.max()
    assert first.percentiles["99"] == pytest.approx(np.percentile(truth, 99))


def test_traversal_and_hops(report):
    paths = {(d.labels["node"], d.labels["path"]) for d in report.traversal}
    assert (NODE_A, "eth0 -> eth0") in paths
    assert (NODE_B, "eth0 -> cali1087c975dd9") in paths and (
        NODE_B,
        "cali1087c975dd9 -> eth0",
    ) in paths
    hops = {(d.labels["from"], d.labels["to"]): d for d in report.hops}
    ab = hops[(NODE_A, NODE_B)]
    # the synthetic wire: 18 us minimum + exponential(6 us); clocks corrected to within ~20 us
    assert 5_000 < ab.percentiles["50"] < 45_000
    assert "clock uncertainty" in ab.note


def test_percentiles_of_known_values():
    d = latency.describe(np.arange(1, 1001), {"x": 1})
    assert d.count == 1000 and d.max == 1000
    assert d.percentiles["50"] == pytest.approx(500.5)
    assert d.percentiles["99.9"] == pytest.approx(999.001)
    empty = latency.describe(np.array([]), {})
    assert empty.count == 0 and np.isnan(empty.percentiles["50"])


def test_traversal_is_first_rx_to_last_tx():
    rows = [
        {"ts_ns": 0, "probe": "rx"},
        {"ts_ns": 3000, "probe": "tx", "ifname": "cali1"},
        {"ts_ns": 9000, "probe": "rx", "netns": "pod", "ifname": "eth0"},
    ]
    d = latency.traversal_times(assemble(event_set(rows)))
    assert (
        len(d) == 1
        and d[0].labels == {"node": NODE_A, "path": "eth0 -> cali1"}
        and d[0].max == 3000
    )


def test_meta_histograms_in_report(report):
    assert {(h["node"], h["hook"], h["first"]) for h in report.kernel} >= {
        (NODE_A, "prerouting", True)
    }
    text = latency.format_text(report)
    assert "In-kernel NAT hook histograms" in text and "distribution" in text


def test_json_document(report):
    from tracer.analysis.commands import to_json

    doc = report.to_dict()
    assert doc["nat_hook"][0]["log2_buckets"]
    to_json(doc)


def test_nat_events_without_a_measured_time_are_left_out_and_noted():
    """nat_ns 0 (the exit probe found no entry): not a 0 ns sample."""
    def nat(ts, ns, first, ip_id):
        return {"ts_ns": ts, "probe": "nat", "hook": "prerouting", "nat_kind": "dnat",
                "nat_first": first, "nat_ns": ns, "ip_id": ip_id, "nat_saddr": "192.168.64.10",
                "nat_sport": 40000, "nat_daddr": "10.217.120.72", "nat_dport": 80,
                "skb": 0xFFFF888100000000 + ip_id * 0x100}
    rows = [nat(1_000, 800, False, 1), nat(2_000, 0, False, 2), nat(3_000, 1_200, False, 3),
            nat(4_000, 0, True, 4)]
    groups = {d.labels["first"]: d for d in latency.nat_times(assemble(event_set(rows)))}
    est, first = groups["established"], groups["first"]
    assert est.count == 2 and est.max == 1_200 and est.percentiles["50"] == 1_000
    assert est.note == "1 more without a measured time (left out)"
    assert first.count == 0 and first.note == "1 more without a measured time (left out)"
    text = latency.table(list(groups.values()), ["node", "hook", "kind", "first"])
    assert "n/a" in text and "1 more without a measured time" in text
