"""Each counted connection's promised endpoints and shares."""

from __future__ import annotations

import numpy as np
import pytest

from tests.analysis.synthetic import event_set, first_dnat_rows
from tracer.analysis.addresses import ip_to_int
from tracer.analysis.events import load_events
from tracer.analysis.promises import dnat_decisions, promise_connections


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
    rows = first_dnat_rows(6, 3)
    events = event_set(rows)
    p = promise_connections(dnat_decisions(events.events), events.node_meta)
    assert sorted(p.keys) == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    assert p.shares == pytest.approx(np.full((6, 3), 1 / 3))
    assert p.notes == ["no Service in the capture metadata: promised shares unknown, assumed equal"]


def test_no_connections():
    events = event_set([{"ts_ns": 0, "probe": "rx"}])
    p = promise_connections(dnat_decisions(events.events), events.node_meta)
    assert p.keys == [] and p.excluded == 0 and p.shares.shape == (0, 0)


def test_a_dual_stack_services_ipv6_port_promises_nothing_to_ipv4():
    """The IPv6 port of a dual-stack Service (same node port as its IPv4
    port) must not capture IPv4 connections to that node port, nor the
    IPv4 port IPv6 ones: each family's port is its own promise."""
    from tracer.analysis.service import parse_service

    v4 = {"protocol": "tcp", "port": 80, "node_port": 30080, "cluster_ips": ["10.96.0.10"],
          "endpoints": [{"ip": "10.217.120.72", "port": 80, "share": 1.0}]}
    v6 = {"protocol": "tcp", "port": 80, "node_port": 30080, "cluster_ips": ["fd00:10:96::10"],
          "family": "ipv6", "endpoints": [{"ip": "fd00:10:217:120::72", "port": 80, "share": 1.0}]}
    ports = parse_service({"namespace": "default", "name": "web", "ports": [v6, v4]})
    assert [p.family for p in ports] == [6, 4]
    node_v4, node_v6 = ip_to_int("192.168.64.57"), ip_to_int("fd00:64::57")
    # Each family's node port promises that family's endpoints, whichever
    # port the metadata lists first.
    for dst, want in ((node_v4, ["10.217.120.72"]), (node_v6, ["fd00:10:217:120::72"])):
        found = [p.promise_for(dst, 30080, 6) for p in ports]
        assert [[e.ip for e in f] for f in found if f is not None] == [want]
    assert ports[0].promise_for(ip_to_int("fd00:10:96::10"), 80, 6)[0].key == "[fd00:10:217:120::72]:80"
    assert ports[1].promise_for(ip_to_int("fd00:10:96::10"), 80, 6) is None
