"""Journeys: what each hop says, selection, text and JSON."""

from __future__ import annotations

import json

import pytest

from tests.analysis.synthetic import NODE_A, NODE_B
from tracer.analysis import timeline
from tracer.errors import UsageError


@pytest.fixture(scope="module")
def packets(scenario):
    return timeline.packets_of(scenario.both)


def _first_remote_syn(packets):
    ev = packets.events
    syn = ev[(ev["nat_kind"] == "dnat") & ev["nat_first"] & (ev["out_dport"] == 80)]
    for pid in syn["packet"]:
        doc = timeline.journey(packets, int(pid))
        if doc["nodes"] == [NODE_A, NODE_B]:
            return doc
    raise AssertionError("no SYN to the pod on node B")


def test_syn_to_remote_pod_journey(packets):
    doc = _first_remote_syn(packets)
    hops = doc["hops"]
    assert [(h["node"], h["probe"]) for h in hops] == [
        (NODE_A, "rx"),
        (NODE_A, "nat"),
        (NODE_A, "nat"),
        (NODE_A, "tx"),
        (NODE_B, "rx"),
        (NODE_B, "tx"),
        (NODE_B, "rx"),
    ]
    dnat, snat = hops[1]["nat"], hops[2]["nat"]
    assert dnat["kind"] == "dnat" and dnat["hook"] == "prerouting" and dnat["first"]
    assert dnat["before"].endswith("-> 192.168.64.57:8088") and dnat["after"].endswith(
        "-> 10.217.121.8:80"
    )
    assert snat["kind"] == "snat" and snat["after"].startswith("192.168.64.57:")
    assert dnat["ns"] > 5_000  # the first packet walks the rules
    # TTL drops at each routed hop; the cross-node hop says where it came from
    assert [h["ttl"] for h in hops] == [64, 64, 63, 63, 63, 62, 62]
    assert hops[4]["from_node"] == NODE_A and not hops[4]["crossed"]["ambiguous"]
    assert hops[6]["netns"] != NODE_B and doc["outcome"].startswith("delivered into")
    # time since previous / since first add up
    assert hops[0]["since_first_ns"] == 0
    assert all(h["since_prev_ns"] >= 0 for h in hops)
    assert sum(h["since_prev_ns"] for h in hops) == hops[-1]["since_first_ns"] == doc["duration_ns"]
    json.dumps(doc)


def test_reply_is_un_natted_on_node_a(packets):
    syn = _first_remote_syn(packets)
    flow = f"{syn['src']}->{syn['dst']}"
    ids = timeline.select(packets, flow=flow)
    replies = [d for d in timeline.journeys(packets, ids) if d["nodes"] == [NODE_B, NODE_A]]
    assert replies
    kinds = [h["nat"]["kind"] for h in replies[0]["hops"] if h["nat"]]
    assert kinds == ["rev_snat", "rev_dnat"]
    assert replies[0]["hops"][-1]["src"] == "192.168.64.57:8088"


def test_dropped_packet_outcome(packets):
    ev = packets.events
    pid = int(ev.loc[ev["probe"] == "drop", "packet"].iloc[0])
    doc = timeline.journey(packets, pid)
    assert doc["outcome"] == "dropped on lab-node-b: NETFILTER_DROP"
    assert doc["hops"][-1]["drop_reason"] == "NETFILTER_DROP"


def test_ambiguous_packet_is_flagged_in_text_and_json(packets):
    ev = packets.events
    pid = int(ev.loc[ev["ambiguous"], "packet"].iloc[0])
    doc = timeline.journey(packets, pid)
    assert doc["ambiguous"] and doc["candidates"] >= 2
    text = timeline.format_journey(doc)
    assert "AMBIGUOUS" in text and "WARNING" in text


def test_text_is_readable(packets):
    text = timeline.format_journey(_first_remote_syn(packets))
    lines = text.splitlines()
    assert lines[0].startswith("packet ") and "[S]" in lines[0]
    assert "lab-node-a -> lab-node-b: 7 hops" in lines[1]
    assert any("DNAT first in" in line and "=>" in line for line in lines)
    assert max(len(line) for line in lines) < 200


def test_select_by_packet_id(packets):
    assert list(timeline.select(packets, packet=3)) == [3]
    with pytest.raises(UsageError, match="no packet"):
        timeline.select(packets, packet=packets.count + 1)
    with pytest.raises(UsageError):
        timeline.select(packets, packet=1, flow="->1.2.3.4")
    assert len(timeline.select(packets)) == packets.count


def test_summary_table(packets):
    table = timeline.summary_table(packets)
    assert len(table) == packets.count
    assert table["hops"].sum() == len(packets.events)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (850, "850ns"),
        (12_345, "12.3us"),
        (4_560_000, "4.56ms"),
        (1_200_000_000, "1.20s"),
        (-2_000, "-2.0us"),
    ],
)
def test_fmt_duration(ns, text):
    assert timeline.fmt_duration(ns) == text


def test_a_nat_hop_without_a_measured_time_says_so():
    from tracer.analysis.timeline import _detail

    hop = {"nat": {"kind": "dnat", "first": True, "ns": None, "before": "a", "after": "b"}}
    assert _detail(hop) == "DNAT first (time not measured): a  =>  b"
    hop["nat"]["ns"] = 1_500
    assert _detail(hop) == "DNAT first in 1.5us: a  =>  b"
