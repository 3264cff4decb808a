"""Packets across a Calico VXLAN (or IPIP) tunnel: the engine reports the
inner headers of encapsulated hops (encap, outer_saddr, outer_daddr beside
them), so segments, cross-node links and journeys work as without a tunnel,
and the timeline says which hops were in the tunnel. Hand-written events,
shaped like the lab's `--encap vxlan` capture; plus captures written before
the tunnel columns existed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.analysis.synthetic import NODE_A, NODE_B, NODE_NETNS_INO, event_set
from tracer.analysis import timeline
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble
from tracer.capfile import ADDED_COLUMNS, COLUMN_NAMES, SCHEMA

CLIENT, VIP = "192.168.64.10", "192.168.64.57"
NODE_A_IP, NODE_B_IP = "192.168.64.57", "192.168.64.58"
TUNNEL_A = "10.217.120.64"  # node A's vxlan.calico address (first of its block)
POD_B = "10.217.121.8"
CALI_B = "cali1087c975dd9"
POD_NETNS = "lab-pod-nginx-demo-1-x2k8p"


def _syn_through_vxlan(kind: str = "vxlan", outer_b: str = NODE_B_IP) -> list[dict]:
    """A client's SYN to the external IP, DNATed on node A to the pod on node B
    and masqueraded to A's tunnel address, carried in the tunnel between the
    two uplinks. The skb addresses are per node (the same skb all the way
    through each node, decapsulation included)."""
    skb_a, skb_b = 0xFFFF8881_0A000100, 0xFFFF8882_3C000200
    syn = {"tcp_flags": 0x02, "ip_id": 4242, "seq": 777, "ack": 0, "len": 60, "tcp_hlen": 40}
    before = {"saddr": CLIENT, "sport": 41000, "daddr": VIP, "dport": 8088}
    dnat = {"saddr": CLIENT, "sport": 41000, "daddr": POD_B, "dport": 80}
    inner = {"saddr": TUNNEL_A, "sport": 52000, "daddr": POD_B, "dport": 80}
    tunnel = {"encap": kind, "outer_saddr": NODE_A_IP, "outer_daddr": outer_b}
    dev = "vxlan.calico" if kind == "vxlan" else "tunl0"
    a = {"node": NODE_A, "netns": NODE_A, "netns_ino": NODE_NETNS_INO[NODE_A], "skb": skb_a, **syn}
    b = {"node": NODE_B, "netns": NODE_B, "netns_ino": NODE_NETNS_INO[NODE_B], "skb": skb_b,
         "time_ns": 0, **syn}
    return [
        {**a, "ts_ns": 1_000, "probe": "rx", "ttl": 64, **before},
        {**a, "ts_ns": 2_000, "probe": "nat", "hook": "prerouting", "nat_kind": "dnat",
         "nat_first": True, "ttl": 64, **before, "nat_saddr": CLIENT, "nat_daddr": POD_B,
         "nat_sport": 41000, "nat_dport": 80},
        {**a, "ts_ns": 3_000, "probe": "nat", "hook": "postrouting", "nat_kind": "snat",
         "nat_first": True, "ttl": 63, **dnat, "nat_saddr": TUNNEL_A, "nat_daddr": POD_B,
         "nat_sport": 52000, "nat_dport": 80},
        {**a, "ts_ns": 4_000, "probe": "tx", "ifname": dev, "ifindex": 5, "ttl": 63, **inner},
        {**a, "ts_ns": 5_000, "probe": "tx", "ifname": "eth0", "ttl": 63, **inner, **tunnel},
        # Node B's clock: 30 us later on the wire.
        {**b, "ts_ns": 35_000, "probe": "rx", "ifname": "eth0", "ttl": 63, **inner, **tunnel},
        {**b, "ts_ns": 36_000, "probe": "rx", "ifname": dev, "ifindex": 5, "ttl": 63, **inner},
        {**b, "ts_ns": 37_000, "probe": "tx", "ifname": CALI_B, "ifindex": 9, "ttl": 62, **inner},
        {**b, "ts_ns": 38_000, "probe": "rx", "netns": POD_NETNS, "netns_ino": 4026532545,
         "ifindex": 3, "ttl": 62, **inner},
    ]


def _rows(rows: list[dict]) -> list[dict]:
    return [{**r, "time_ns": r["ts_ns"]} for r in rows]


@pytest.mark.parametrize("kind", ["vxlan", "ipip"])
def test_journey_spans_both_nodes_through_the_tunnel(kind):
    events = event_set(_rows(_syn_through_vxlan(kind)))
    packets = assemble(events)
    assert packets.count == 1
    ev = packets.events
    dev = "vxlan.calico" if kind == "vxlan" else "tunl0"
    assert list(zip(ev["node"].astype(str), ev["probe"].astype(str), ev["ifname"].astype(str),
                    strict=True)) == [
        (NODE_A, "rx", "eth0"), (NODE_A, "nat", "eth0"), (NODE_A, "nat", "eth0"),
        (NODE_A, "tx", dev), (NODE_A, "tx", "eth0"),
        (NODE_B, "rx", "eth0"), (NODE_B, "rx", dev), (NODE_B, "tx", CALI_B), (NODE_B, "rx", "eth0"),
    ]
    # One link, uplink to uplink, both ends encapsulated, matched on the inner packet.
    assert len(packets.links) == 1
    link = packets.links.iloc[0]
    assert (link["tx_node"], link["rx_node"]) == (NODE_A, NODE_B) and not link["ambiguous"]
    tx_row, rx_row = int(link["tx_row"]), int(link["rx_row"])
    by_row = ev.set_index("row")
    assert by_row.loc[tx_row, "encap"] == by_row.loc[rx_row, "encap"] == kind
    # Node B's rx on the tunnel device continues the uplink's segment.
    assert ev[ev["node"] == NODE_B]["segment"].nunique() == 1


def test_timeline_text_marks_the_tunnel_hops():
    packets = assemble(event_set(_rows(_syn_through_vxlan())))
    doc = timeline.journey(packets, 1)
    assert doc["nodes"] == [NODE_A, NODE_B]
    assert doc["outcome"].startswith("delivered into")
    in_tunnel = [h for h in doc["hops"] if h["encap"]]
    assert [(h["node"], h["probe"], h["where"]) for h in in_tunnel] == [
        (NODE_A, "tx", f"{NODE_A}/eth0"), (NODE_B, "rx", f"{NODE_B}/eth0")]
    assert in_tunnel[0]["encap"] == {"kind": "vxlan", "outer_src": NODE_A_IP, "outer_dst": NODE_B_IP}
    assert in_tunnel[1]["from_node"] == NODE_A
    assert all(h["dst"] == f"{POD_B}:80" for h in doc["hops"][3:])
    json.dumps(doc)
    text = timeline.format_journey(doc).splitlines()
    tunnel_lines = [line for line in text if "in vxlan" in line]
    assert len(tunnel_lines) == 2
    assert f"{TUNNEL_A}:52000 -> {POD_B}:80  ttl 63  in vxlan {NODE_A_IP} -> {NODE_B_IP}" in (
        tunnel_lines[0])
    assert tunnel_lines[1].endswith(f"<- from {NODE_A}")
    assert not any("in vxlan" in line for line in text if "vxlan.calico" in line)


def test_outer_header_is_not_part_of_the_match():
    """An underlay that rewrites the outer header (another tunnel, NAT
    between sites) does not break the link: only the inner packet counts."""
    packets = assemble(event_set(_rows(_syn_through_vxlan(outer_b="172.16.0.9"))))
    assert packets.count == 1 and len(packets.links) == 1


def test_inner_packets_differ_no_link():
    """Two different inner packets in the tunnel are not joined, even between
    the same two nodes (the fingerprint is the inner packet's)."""
    rows = _syn_through_vxlan()
    for r in rows[5:]:
        r["ip_id"] = 4243
    packets = assemble(event_set(_rows(rows)))
    assert packets.count == 2 and len(packets.links) == 0


def test_version_1_capture_reads_with_empty_tunnel_columns(tmp_path):
    """A capture written before the tunnel columns existed: every reader
    fills them in as 'no tunnel'."""
    from tests.analysis.synthetic import event_frame

    frame = event_frame(_rows(_syn_through_vxlan())[:4])
    old = [c for c in COLUMN_NAMES if c not in ADDED_COLUMNS]
    table = pa.Table.from_pandas(frame[old], preserve_index=False)
    table = pa.table([table[c].cast(SCHEMA.field(c).type) for c in old], names=old)
    cap = tmp_path / "v1"
    cap.mkdir()
    pq.write_table(table, cap / "part-000000.parquet")
    (cap / "_tracer_meta.json").write_text(json.dumps({"format": "tracer-capture", "version": 1,
                                                       "node": NODE_A}))
    ev = load_events([cap]).events
    assert len(ev) == 4
    assert set(ev["encap"].astype(str)) == {""}
    assert (ev["outer_src"] == 0).all() and (ev["outer_dst"] == 0).all()
    from tracer.capfile import read_table

    assert read_table(cap).schema == SCHEMA
    assert read_table(cap, ["ts_ns", "encap"]).column_names == ["ts_ns", "encap"]
