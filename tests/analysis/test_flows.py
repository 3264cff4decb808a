"""--flow parsing and matching."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.analysis.addresses import ip_to_int
from tracer.analysis.events import load_events
from tracer.analysis.flows import Endpoint, FlowSpec, parse_flow, select_packets
from tracer.analysis.packets import assemble
from tracer.errors import UsageError


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        (
            "192.168.64.10:43210->192.168.64.57:8088/tcp",
            FlowSpec(
                Endpoint(ip_to_int("192.168.64.10"), 43210),
                Endpoint(ip_to_int("192.168.64.57"), 8088),
                6,
            ),
        ),
        (
            "192.168.64.10->192.168.64.57:8088",
            FlowSpec(
                Endpoint(ip_to_int("192.168.64.10")), Endpoint(ip_to_int("192.168.64.57"), 8088)
            ),
        ),
        ("->192.168.64.57:8088", FlowSpec(Endpoint(), Endpoint(ip_to_int("192.168.64.57"), 8088))),
        ("*:43210->*/TCP", FlowSpec(Endpoint(None, 43210), Endpoint(), 6)),
        (":8088", FlowSpec(Endpoint(None, 8088), directed=False)),
        ("10.217.121.8", FlowSpec(Endpoint(ip_to_int("10.217.121.8")), directed=False)),
        ("/udp", FlowSpec(proto=17, directed=False)),
        (
            " 10.0.0.1:1 -> 10.0.0.2:2 /17 ",
            FlowSpec(Endpoint(167772161, 1), Endpoint(167772162, 2), 17),
        ),
    ],
)
def test_parse(text, spec):
    assert parse_flow(text) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "192.168.64.10:abc->192.168.64.57",
        "1.2.3.4:70000->",
        "300.1.1.1->1.1.1.1",
        "a->b->c",
        "1.2.3.4->5.6.7.8/tcpx",
        "1.2.3.4 > 5.6.7.8",
        "1.2.3.4-5.6.7.8",
        "host->1.1.1.1",
    ],
)
def test_malformed_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--flow"):
        parse_flow(text)


def test_round_trip_text():
    assert (
        str(parse_flow("192.168.64.10:43210->192.168.64.57:8088/tcp"))
        == "192.168.64.10:43210->192.168.64.57:8088/tcp"
    )


def test_client_view_selects_both_directions_and_nat_hops(scenario):
    packets = assemble(load_events(scenario.both))
    conn = scenario.sim.connections.iloc[0]
    ids = select_packets(
        packets.events, parse_flow(f"{conn.client}:{conn.client_port}->192.168.64.57:8088")
    )
    # Every packet of the connection: requests, replies, handshake, teardown (+ drops/retransmits).
    truth_ids = np.unique(
        scenario.truth_of_rows()[
            packets.events["row"].to_numpy()[np.isin(packets.events["packet"], ids)]
        ]
    )
    conn_truth = scenario.sim.events["lab-node-a"]
    conn_truth = conn_truth[conn_truth["_conn"] == 0]["_packet"].unique()
    assert set(truth_ids) == set(conn_truth)
    hops = packets.events[packets.events["packet"].isin(ids)]
    assert {"dnat", "snat", "rev_snat", "rev_dnat"} <= set(hops["nat_kind"].astype(str))


def test_pod_side_tuple_also_selects(scenario):
    packets = assemble(load_events(scenario.both))
    by_pod = select_packets(packets.events, parse_flow("10.217.121.8:80"))
    assert len(by_pod) > 0
    assert set(by_pod) <= set(select_packets(packets.events, parse_flow("->192.168.64.57:8088")))


def test_directional_match_without_replies(scenario):
    packets = assemble(load_events(scenario.both))
    spec = parse_flow("192.168.64.10->192.168.64.57:8088")
    both = select_packets(packets.events, spec)
    forward = select_packets(packets.events, spec, bidirectional=False)
    assert 0 < len(forward) < len(both)
