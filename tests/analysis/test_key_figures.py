"""The demo's summary figures: picked from the analysis modules, flattened,
and the same from per-node captures and from their merge."""

from __future__ import annotations

import math

import numpy as np

from tests.analysis.conftest import OFFSET_B_NS
from tests.analysis.synthetic import event_set
from tracer.analysis import assemble, fairness, load_events, merge
from tracer.analysis.key_figures import client_connections, fmt_us, summarize


def test_summary_figures_are_the_analysis(scenario):
    packets = assemble(load_events(scenario.both))
    s = summarize(packets)
    fair = fairness.analyze(packets)
    assert s.dnat_choices == fair.overall.connections == scenario.sim.scenario.connections
    assert s.client_connections == s.dnat_choices and s.rebound == 0
    assert [e.dnat_choices for e in s.endpoints] == [e.connections for e in fair.overall.endpoints]
    assert s.requests == sum(e.requests for e in fair.overall.endpoints)
    assert s.requests_per_connection_max == 6  # the pinned keep-alive client
    assert s.chi_square_p == fair.overall.chi2.p_value and s.jain_index == fair.overall.jain
    ev = packets.events
    for n in s.nat:
        sel = ev[(ev["node"] == n.node) & (ev["hook"] == n.hook) & (ev["nat_kind"] == n.kind)]
        first = sel[sel["nat_first"]]["nat_ns"].to_numpy(np.float64)
        est = sel[~sel["nat_first"] & (sel["probe"] == "nat")]["nat_ns"].to_numpy(np.float64)
        assert n.first_count == len(first) and n.established_count == len(est)
        assert math.isclose(n.first_p99_ns, np.percentile(first, 99))
        assert math.isclose(n.established_p50_ns, np.percentile(est, 50))
    assert {n.kind for n in s.nat} == {"dnat", "snat"}
    clock = next(c for c in s.clocks if not c.reference)
    assert abs(clock.offset_ns - OFFSET_B_NS) < 20_000 and clock.crossing_packets > 100


def test_summary_of_a_merged_capture_keeps_the_estimated_offset(scenario, tmp_path):
    merged = merge(scenario.both, tmp_path / "merged")
    direct = summarize(scenario.both)
    s = summarize([merged.path])
    clock = next(c for c in s.clocks if not c.reference)
    estimated = merged.clocks.nodes[clock.node]
    assert clock.offset_ns == round(estimated.offset_ns, 1)
    assert clock.uncertainty_ns == round(estimated.uncertainty_ns, 1)
    assert clock.method == estimated.method
    assert [e.dnat_choices for e in s.endpoints] == [e.dnat_choices for e in direct.endpoints]
    assert s.to_dict()["rebound"] == 0


def test_fmt_us():
    assert fmt_us(1234.0) == "1.23 us" and fmt_us(float("nan")) == "n/a" and fmt_us(None) == "n/a"


def test_client_connections_tell_a_reused_port_from_a_retried_syn():
    """Two connections on one client port (new ISN) are two; a SYN chosen
    twice (retransmitted after a reset: same ISN) is one connection."""
    def choice(ts, sport, seq, ip_id):
        return {"ts_ns": ts, "probe": "nat", "hook": "prerouting", "nat_kind": "dnat",
                "nat_first": True, "tcp_flags": 0x02, "sport": sport, "seq": seq, "ack": 0,
                "ip_id": ip_id, "nat_saddr": "192.168.64.10", "nat_sport": sport,
                "nat_daddr": "10.217.120.72", "nat_dport": 80,
                "skb": 0xFFFF888100000000 + ip_id * 0x100}
    rows = [choice(1_000, 40000, 1000, 1), choice(2_000_000, 40000, 90_000, 2),
            choice(3_000_000, 40002, 5000, 3), choice(1_003_000_000, 40002, 5000, 4)]
    packets = assemble(event_set(rows))
    assert client_connections(packets) == 3
    # The tuple alone would have merged the two connections on port 40000.
    assert client_connections(assemble(event_set(rows[:2]))) == 2
