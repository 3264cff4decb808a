"""Each counted connection's promised endpoints and shares."""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis.synthetic import event_set
from tracer.analysis.events import load_events
from tracer.analysis.fairness import dnat_decisions
from tracer.analysis.promises import promise_connections


def test_every_connection_gets_its_promise(scenario):
    events = load_events(scenario.both)
    conns = dnat_decisions(events.events)
    p = promise_connections(conns, events.node_meta)
    assert p.keys == ["10.217.120.72:80", "10.217.121.8:80"]
    assert p.excluded == 0 and len(p.conns) == len(conns) == len(scenario.sim.connections)
    assert p.endpoint.shape == (len(conns),) and set(p.endpoint.tolist()) == {0, 1}
    assert p.shares.shape == (len(conns), 2)
    assert p.shares.sum(axis=1) == pytest.approx(np.ones(len(conns)))


def test_without_metadata_shares_are_equal_over_the_endpoints_seen():
    rows = [
        {
            "ts_ns": i * 1000,
            "probe": "nat",
            "hook": "prerouting",
            "nat_kind": "dnat",
            "nat_first": True,
            "sport": 40000 + i,
            "nat_saddr": "192.168.64.10",
            "nat_daddr": f"10.0.0.{1 + i % 3}",
            "nat_sport": 40000 + i,
            "nat_dport": 80,
            "skb": 0x100 + i,
        }
        for i in range(6)
    ]
    events = event_set(rows)
    p = promise_connections(dnat_decisions(events.events), events.node_meta)
    assert sorted(p.keys) == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    assert p.shares == pytest.approx(np.full((6, 3), 1 / 3))
    assert p.notes == ["no Service in the capture metadata: promised shares unknown, assumed equal"]


def test_no_connections():
    events = event_set([{"ts_ns": 0, "probe": "rx"}])
    p = promise_connections(dnat_decisions(events.events), events.node_meta)
    assert p.keys == [] and p.excluded == 0 and p.shares.shape == (0, 0)
