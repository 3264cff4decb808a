"""Packets: segmentation within a node, fingerprint links across nodes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.analysis.synthetic import NODE_A, NODE_B, event_set
from tracer.analysis.events import load_events
from tracer.analysis.packets import PacketOptions, assemble


def _partition_errors(packets, truth_of_row: np.ndarray) -> tuple[int, int]:
    """(packets mixing truth packets, truth packets split over several packets)."""
    ev = packets.events
    m = pd.DataFrame({"pk": ev["packet"].to_numpy(), "truth": truth_of_row[ev["row"].to_numpy()]})
    return int((m.groupby("pk")["truth"].nunique() > 1).sum()), int(
        (m.groupby("truth")["pk"].nunique() > 1).sum()
    )


def test_packets_equal_ground_truth(scenario):
    """Drops, wire duplicates, LIFO skb reuse, a 7.3 ms clock error: every
    packet is reassembled exactly, across both nodes."""
    packets = assemble(load_events(scenario.both))
    assert _partition_errors(packets, scenario.truth_of_rows()) == (0, 0)
    assert packets.count == len(np.unique(scenario.truth_of_rows()))


def test_hops_are_in_causal_order(scenario):
    packets = assemble(load_events(scenario.both))
    ev = packets.events
    # hop numbers count up within each packet, times never go backwards
    assert (ev.groupby("packet")["hop"].diff().dropna() == 1).all()
    assert (ev["since_prev_ns"].to_numpy() >= 0).all()
    # every cross-node rx comes after the tx it was linked from
    links = packets.links
    cross = links["tx_node"].astype(str) != links["rx_node"].astype(str)
    assert (links.loc[cross, "delay_ns"] > 0).all()


def test_duplicates_are_flagged_ambiguous(scenario):
    packets = assemble(load_events(scenario.both))
    amb = packets.links[packets.links["ambiguous"]]
    assert len(amb) > 0
    assert (amb["candidates"] >= 2).all()
    flagged = packets.events[packets.events["link_ambiguous"]]
    assert set(flagged["packet"]) <= set(packets.events.loc[packets.events["ambiguous"], "packet"])


def _request_and_reply(reply_ts: int, reply: dict | None = None) -> list[dict]:
    """A request delivered into the pod on node A, then the pod's reply on the
    same skb address (the slab's LIFO reuse)."""
    pod = {"netns": "lab-pod-x", "netns_ino": 4026532460, "ifname": "eth0", "ifindex": 3}
    veth = {"ifname": "cali3f1e2a4b5c6", "ifindex": 7}
    req = {
        "saddr": "192.168.64.57",
        "daddr": "10.217.120.72",
        "sport": 40000,
        "dport": 80,
        "ip_id": 10,
        "seq": 100,
        "ack": 200,
    }
    rep = {
        "saddr": "10.217.120.72",
        "daddr": "192.168.64.57",
        "sport": 80,
        "dport": 40000,
        "ip_id": 77,
        "seq": 200,
        "ack": 101,
        **(reply or {}),
    }
    return [
        {"ts_ns": 1000, "probe": "tx", "ttl": 63, **veth, **req},
        {"ts_ns": 6000, "probe": "rx", "ttl": 63, **pod, **req},
        {"ts_ns": reply_ts, "probe": "tx", "ttl": 64, **pod, **rep},
        {"ts_ns": reply_ts + 4000, "probe": "rx", "ttl": 64, **veth, **rep},
    ]


def test_reused_skb_splits_on_tuple_even_microseconds_apart():
    packets = assemble(event_set(_request_and_reply(reply_ts=9000)))
    assert packets.count == 2
    assert packets.events.groupby("packet").size().tolist() == [2, 2]


def test_reused_skb_splits_on_fingerprint_with_the_same_tuple():
    # Same tuple and TTL pattern as the request but another IP ID: another packet.
    rows = _request_and_reply(
        9000,
        reply={
            "saddr": "192.168.64.57",
            "daddr": "10.217.120.72",
            "sport": 40000,
            "dport": 80,
            "ttl": 62,
        },
    )
    rows[2]["ttl"] = rows[3]["ttl"] = 62
    assert assemble(event_set(rows)).count == 2


def test_reused_skb_splits_after_a_long_gap():
    rows = [{"ts_ns": 0, "probe": "rx"}, {"ts_ns": 60_000_000, "probe": "rx"}]  # identical fields
    assert assemble(event_set(rows)).count == 2
    assert assemble(event_set(rows), PacketOptions(max_gap_ns=100_000_000)).count == 1


def test_nat_event_changes_the_tuple_without_splitting():
    rows = [
        {"ts_ns": 0, "probe": "rx"},
        {
            "ts_ns": 1000,
            "probe": "nat",
            "hook": "prerouting",
            "nat_kind": "dnat",
            "nat_first": True,
            "nat_saddr": "192.168.64.10",
            "nat_daddr": "10.217.121.8",
            "nat_sport": 40000,
            "nat_dport": 80,
            "nat_ns": 15000,
        },
        {
            "ts_ns": 20000,
            "probe": "nat",
            "hook": "postrouting",
            "nat_kind": "snat",
            "ttl": 63,
            "daddr": "10.217.121.8",
            "dport": 80,
            "nat_saddr": "192.168.64.57",
            "nat_daddr": "10.217.121.8",
            "nat_sport": 40000,
            "nat_dport": 80,
            "nat_ns": 6000,
        },
        {
            "ts_ns": 27000,
            "probe": "tx",
            "ttl": 63,
            "saddr": "192.168.64.57",
            "daddr": "10.217.121.8",
            "dport": 80,
        },
    ]
    packets = assemble(event_set(rows))
    assert packets.count == 1
    # ...but a tx that does not continue from the rewritten tuple is another packet
    rows[3]["saddr"] = "192.168.64.10"
    assert assemble(event_set(rows)).count == 2


def test_skb_change_within_a_node_is_bridged_by_fingerprint():
    """If the kernel hands the packet to a new skb (a copy, GSO), the segments
    still join through the fingerprint, within the same-node window."""
    rows = [
        {"ts_ns": 0, "probe": "tx", "skb": 0x100},
        {"ts_ns": 5000, "probe": "rx", "skb": 0x200, "netns": "p"},
    ]
    assert assemble(event_set(rows)).count == 1
    assert assemble(event_set(rows), PacketOptions(same_node_window_ns=0)).count == 2


def _crossing(
    offset_ns: int, n: int = 6, delay_ab: int = 20_000, delay_ba: int = 30_000
) -> list[dict]:
    """n request/reply pairs crossing A->B and B->A; node B's clock `offset_ns` ahead."""
    rows = []
    for i in range(n):
        t = i * 1_000_000
        req = {
            "saddr": "192.168.64.57",
            "daddr": "10.217.121.8",
            "sport": 40000 + i,
            "dport": 80,
            "ip_id": i,
            "seq": i,
            "ack": 0,
            "ttl": 63,
        }
        rep = {
            "saddr": "10.217.121.8",
            "daddr": "192.168.64.57",
            "sport": 80,
            "dport": 40000 + i,
            "ip_id": 100 + i,
            "seq": 500 + i,
            "ack": i + 1,
            "ttl": 63,
        }
        rows += [
            {"ts_ns": t, "probe": "tx", "skb": 0x100 + i, **req},
            {
                "ts_ns": t + delay_ab + offset_ns,
                "node": NODE_B,
                "probe": "rx",
                "skb": 0x900 + i,
                **req,
            },
            {
                "ts_ns": t + 200_000 + offset_ns,
                "node": NODE_B,
                "probe": "tx",
                "skb": 0x900 + i,
                **rep,
            },
            {"ts_ns": t + 200_000 + delay_ba, "probe": "rx", "skb": 0x300 + i, **rep},
        ]
    return rows


def test_offset_from_bounds_is_the_midpoint():
    packets = assemble(event_set(_crossing(offset_ns=5_000_000)))
    clock = packets.clocks.nodes[NODE_B]
    # bounds: theta < 5ms + 20us (A->B), theta > 5ms - 30us (B->A)
    assert clock.upper_ns == 5_020_000 and clock.lower_ns == 4_970_000
    assert clock.offset_ns == 4_995_000 and clock.uncertainty_ns == 25_000
    assert clock.packets_to == 6 and clock.packets_from == 6
    assert packets.count == 12


def test_one_direction_only_falls_back_on_metadata():
    rows = [
        r
        for r in _crossing(offset_ns=300_000)
        if not (r["probe"] == "tx" and r["node"] == NODE_B if "node" in r else False)
    ]
    metas = {
        NODE_A: {"node": NODE_A, "clock": {"uncertainty_ns": 1_000_000}},
        NODE_B: {"node": NODE_B, "clock": {"uncertainty_ns": 1_000_000}},
    }
    packets = assemble(event_set(rows, metas))
    clock = packets.clocks.nodes[NODE_B]
    assert clock.method == "traffic+metadata"
    # upper bound 320us from traffic, lower -2 ms from the metadata's claim
    assert clock.upper_ns == 320_000 and clock.lower_ns == -2_000_000


def test_retransmitted_identical_packets_are_ambiguous_not_silent():
    rows = _crossing(offset_ns=0, n=3)
    # The first request sent twice 5 us apart (identical fingerprint), both received.
    dup = [dict(r, ts_ns=r["ts_ns"] + 5000, skb=r["skb"] + 0x10) for r in rows[:2]]
    packets = assemble(event_set(rows + dup))
    links = packets.links
    amb = links[links["ambiguous"]]
    assert len(amb) == 2 and (amb["candidates"] == 2).all()
    # Paired first sent, first received: both copies took the unique requests' delay.
    unique_ab = links[~links["ambiguous"] & (links["tx_node"].astype(str) == NODE_A)]["delay_ns"]
    assert set(amb["delay_ns"]) == set(unique_ab)
    assert packets.events.groupby("packet")["ambiguous"].first().sum() == 2
