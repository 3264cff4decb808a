"""Requests per connection: distinct seq of the client's PSH segments."""

from __future__ import annotations

from tracer.analysis.events import load_events
from tracer.analysis.promises import dnat_decisions
from tracer.analysis.request_counts import requests_per_connection


def test_requests_of_each_connection(scenario):
    events = load_events(scenario.both)
    conns = dnat_decisions(events.events)
    result = requests_per_connection(events.events, conns)
    truth = scenario.sim.connections
    assert len(result["per_conn"]) == len(conns)
    assert result["per_conn"].sum() == truth["requests"].sum()
    assert result["summary"]["requests"] == int(truth["requests"].sum())
    assert result["summary"]["per_connection"]["max"] == truth["requests"].max()


def test_no_connections_no_requests(scenario):
    events = load_events(scenario.both)
    conns = dnat_decisions(events.events).iloc[:0]
    result = requests_per_connection(events.events, conns)
    assert result["summary"] == {
        "counted": "distinct seq of the client's TCP PSH segments, at the DNAT node's ingress rx",
        "connections": 0,
        "requests": 0,
    }
