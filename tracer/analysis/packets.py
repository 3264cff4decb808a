"""Groups events into packets: within a node by skb, across nodes by fingerprint.

Within one node an ``sk_buff`` address identifies a packet only while the
packet lives: the slab hands the same address to the next packet, often
microseconds later (a pod's reply typically gets the skb its request was freed
with). Events of one skb are therefore split into *segments* wherever

- the gap to the previous event exceeds ``max_gap_ns``,
- the fingerprint changes (IP ID, TCP seq/ack, length, protocol: forwarding
  and NAT leave them alone, a different packet almost never repeats them),
- the tuple is inconsistent: an event must see the tuple the previous one
  left (a nat event's *after* tuple, otherwise its tuple),
- the TTL goes up (forwarding only lowers it), or the previous event was a drop.

Across nodes the skb address means nothing. A packet that left node X (a tx
event) and entered node Y (the rx event that starts a segment) carries the
same post-NAT tuple, IP ID, seq, ack and length, and a TTL lowered by the
routers in between (0..``max_ttl_hops``). Such pairs are found with one hash
join, then:

1. pairs unique on both sides within a generous window give the node clock
   offsets (tracer.analysis.clocks);
2. with clocks corrected, a pair is a candidate when the one-way delay is
   between ``-(clock uncertainty)`` and ``max_link_delay_ns``;
3. an rx with one candidate takes it; with several (duplicates on the wire,
   retransmissions with IP ID 0), candidates are paired in time order and the
   link is marked ``ambiguous`` with its candidate count, never silently.

Linked segments form one packet; hops are ordered causally (a segment after
the segment it was linked from, then by time within the node).

Tunnels change nothing here: where a node's uplink carries the packet inside
Calico's VXLAN or IPIP tunnel, the capture engine reports the *inner* headers
(tracer.capfile.schema, ``encap``), so the sender's last tx (encapsulated) and
the receiver's first rx (still encapsulated) carry the same tuple and
fingerprint as without a tunnel, and the decapsulated hops that follow on the
tunnel device continue the receiver's segment (same skb, same fingerprint).
The outer header (node to node) is neither fingerprinted nor compared: the
underlay may rewrite it (another tunnel, NAT between sites).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.clocks import ClockSolution, solve
from tracer.analysis.events import PROBE_DROP, PROBE_RX, PROBE_TX, EventSet


@dataclass
class PacketOptions:
    # Same skb on one node further apart than this is a new packet.
    max_gap_ns: int = 50_000_000
    # Before clocks are known: how far two nodes' UTC clocks may disagree.
    match_window_ns: int = 2_000_000_000
    # After correction: the longest plausible one-way delay between nodes.
    max_link_delay_ns: int = 50_000_000
    # Routers allowed between two capturing nodes (TTL decrements).
    max_ttl_hops: int = 8
    # Reference node for clock offsets (default: the first capture's).
    reference: str | None = None
    # Link segments of the same node by fingerprint too (skb replaced in
    # transit, e.g. by GSO or a copy), within this window; 0 disables.
    same_node_window_ns: int = 1_000_000


@dataclass
class Packets:
    """Events in hop order with packet columns, the cross-node links, the clocks."""

    events: pd.DataFrame
    links: pd.DataFrame
    clocks: ClockSolution
    node_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_source: dict[str, Path] = field(default_factory=dict)  # node -> its capture directory
    # Derived views kept by presentation code (e.g. timeline's column arrays).
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        return int(self.events["packet"].max()) if len(self.events) else 0


# ---------------------------------------------------------------- segments


def segment_ids(ev: pd.DataFrame, max_gap_ns: int) -> np.ndarray:
    """Segment number per event (row order of ev): one skb lifetime on one node."""
    n = len(ev)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    node = ev["node"].cat.codes.to_numpy()
    skb = ev["skb"].to_numpy()
    ts = ev["ts_ns"].to_numpy()
    order = np.lexsort((ev["row"].to_numpy(), ts, skb, node))

    def col(name: str) -> np.ndarray:
        return ev[name].to_numpy()[order]

    s_node, s_skb, s_ts = node[order], skb[order], ts[order]
    cont = (s_node[1:] == s_node[:-1]) & (s_skb[1:] == s_skb[:-1]) & (s_skb[1:] != 0)
    cont &= (s_ts[1:] - s_ts[:-1]) <= max_gap_ns
    for name in ("ip_id", "seq", "ack", "len", "proto"):
        c = col(name)
        cont &= c[1:] == c[:-1]
    for before, after in (
        ("src", "out_src"),
        ("dst", "out_dst"),
        ("sport", "out_sport"),
        ("dport", "out_dport"),
    ):
        cont &= col(before)[1:] == col(after)[:-1]
    ttl = col("ttl")
    cont &= ttl[1:] <= ttl[:-1]
    cont &= col("probe_code")[:-1] != PROBE_DROP
    new = np.ones(n, dtype=bool)
    new[1:] = ~cont
    seg_sorted = np.cumsum(new) - 1
    seg = np.empty(n, dtype=np.int64)
    seg[order] = seg_sorted
    return seg


# ---------------------------------------------------------------- fingerprints

_FP_COLUMNS = ("src", "dst", "sport", "dport", "proto", "ip_id", "seq", "ack", "len")


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def fingerprint(frame: pd.DataFrame) -> np.ndarray:
    """64-bit hash of what survives forwarding: tuple, IP ID, seq, ack, length.
    IPv6 has no IP ID (the capture writes 0; the flow label is not captured):
    its packets are told apart by tuple, seq, ack and length, which is
    enough for TCP; equal UDP datagrams of one flow become ambiguous links."""
    u = {c: frame[c].to_numpy().astype(np.uint64) for c in _FP_COLUMNS}
    a = (u["src"] << np.uint64(32)) | u["dst"]
    b = (
        (u["sport"] << np.uint64(48))
        | (u["dport"] << np.uint64(32))
        | (u["ip_id"] << np.uint64(16))
        | u["len"]
    )
    c = (u["seq"] << np.uint64(32)) | u["ack"]
    # IPv6 address keys (>= 2**32, tracer.analysis.addresses) lose their high
    # bits in ``a``; they go in with the protocol (IPv4 only: same hash as ever).
    last = u["proto"]
    if len(a) and max(u["src"].max(), u["dst"].max()) >> np.uint64(32):
        last = last | ((u["src"] >> np.uint64(32)) << np.uint64(40)) | (
            (u["dst"] >> np.uint64(32)) << np.uint64(8))
    with np.errstate(over="ignore"):
        h = _splitmix(a) ^ _splitmix(b ^ np.uint64(0x5851F42D4C957F2D)) ^ _splitmix(c + last)
    return h.view(np.int64)


def crossing_candidates(
    ev: pd.DataFrame, seg: np.ndarray, window_ns: int, max_ttl_hops: int, same_node_window_ns: int
) -> pd.DataFrame:
    """Pairs (segment-ending tx event, segment-starting rx event) with equal fingerprints on
    different nodes within window_ns of raw time (or on the same node, in
    another segment, within same_node_window_ns)."""
    probe = ev["probe_code"].to_numpy()
    first_of_seg = np.zeros(len(ev), dtype=bool)
    order = np.lexsort((ev["row"].to_numpy(), ev["ts_ns"].to_numpy(), seg))
    starts = np.r_[True, seg[order][1:] != seg[order][:-1]]
    first_of_seg[order[starts]] = True
    # A segment leaves its node through its last tx (earlier ones, e.g. the
    # pod's eth0 before the host's eth0, match too but with a higher TTL).
    is_tx = probe == PROBE_TX
    tx_sorted = order[is_tx[order]]
    last = (
        np.r_[seg[tx_sorted][1:] != seg[tx_sorted][:-1], True]
        if len(tx_sorted)
        else np.zeros(0, bool)
    )
    tx_idx = np.sort(tx_sorted[last])
    rx_idx = np.flatnonzero((probe == PROBE_RX) & first_of_seg)
    empty = pd.DataFrame({c: pd.Series(dtype=np.int64) for c in ("tx", "rx")})
    if not len(tx_idx) or not len(rx_idx):
        return empty
    cols = list(_FP_COLUMNS)
    tx = ev.iloc[tx_idx][cols]
    rx = ev.iloc[rx_idx][cols]
    left = pd.DataFrame({"fp": fingerprint(tx), "tx": tx_idx})
    right = pd.DataFrame({"fp": fingerprint(rx), "rx": rx_idx})
    m = left.merge(right, on="fp", how="inner")
    if not len(m):
        return empty
    t_idx, r_idx = m["tx"].to_numpy(), m["rx"].to_numpy()
    ok = np.ones(len(m), dtype=bool)
    for c in cols:  # the hash found them; equality decides
        v = ev[c].to_numpy()
        ok &= v[t_idx] == v[r_idx]
    node = ev["node"].cat.codes.to_numpy()
    t = ev["t"].to_numpy()
    ttl = ev["ttl"].to_numpy().astype(np.int64)
    dttl = ttl[t_idx] - ttl[r_idx]
    ok &= (dttl >= 0) & (dttl <= max_ttl_hops)
    dt = t[r_idx] - t[t_idx]
    cross = node[t_idx] != node[r_idx]
    same = (~cross) & (seg[t_idx] != seg[r_idx]) & (dt >= 0) & (dt <= same_node_window_ns)
    ok &= (cross & (np.abs(dt) <= window_ns)) | same
    return pd.DataFrame({"tx": t_idx[ok], "rx": r_idx[ok]})


def _count(keys: np.ndarray) -> np.ndarray:
    """For each element, how many times its value occurs."""
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inv.reshape(-1)]


def resolve_links(
    ev: pd.DataFrame, cand: pd.DataFrame, clocks: ClockSolution, max_link_delay_ns: int
) -> pd.DataFrame:
    """One link per rx: its only candidate, or, among several, the one of the
    same time rank (order-preserving: first sent, first received), flagged."""
    cols = ["tx", "rx", "delay_ns", "candidates", "ambiguous"]
    if not len(cand):
        return pd.DataFrame(
            {c: pd.Series(dtype=np.int64 if c != "ambiguous" else bool) for c in cols}
        )
    node_codes = ev["node"].cat.codes.to_numpy()
    cats = ev["node"].cat.categories
    offsets = clocks.offsets_for(cats)
    unc = np.array([clocks.uncertainty(str(c)) or 0 for c in cats] + [0], dtype=np.int64)
    t = ev["t"].to_numpy()
    tx, rx = cand["tx"].to_numpy(), cand["rx"].to_numpy()
    delay = (t[rx] - offsets[node_codes[rx]]) - (t[tx] - offsets[node_codes[tx]])
    slack = unc[node_codes[rx]] + unc[node_codes[tx]] + 1_000
    keep = (delay >= -slack) & (delay <= max_link_delay_ns)
    tx, rx, delay = tx[keep], rx[keep], delay[keep]
    if not len(tx):
        return pd.DataFrame(
            {c: pd.Series(dtype=np.int64 if c != "ambiguous" else bool) for c in cols}
        )
    n_rx = _count(rx)  # candidates per rx
    n_tx = _count(tx)  # candidates per tx
    # Clusters of interchangeable events: same fingerprint, same node pair.
    fp = fingerprint(ev.iloc[rx][list(_FP_COLUMNS)])
    cluster = (
        pd.DataFrame({"fp": fp, "a": node_codes[tx], "b": node_codes[rx]})
        .groupby(["fp", "a", "b"], sort=False)
        .ngroup()
        .to_numpy()
    )
    tx_rank = pd.Series(t[tx]).groupby(cluster).rank(method="dense").to_numpy()
    rx_rank = pd.Series(t[rx]).groupby(cluster).rank(method="dense").to_numpy()
    ambiguous = (n_rx > 1) | (n_tx > 1)
    chosen = ~ambiguous | (tx_rank == rx_rank)
    frame = pd.DataFrame(
        {
            "tx": tx,
            "rx": rx,
            "delay_ns": delay.astype(np.int64),
            "candidates": np.maximum(n_rx, n_tx),
            "ambiguous": ambiguous,
            "chosen": chosen,
        }
    )
    # An rx whose rank partner is not among its candidates takes its nearest.
    picked = frame[frame["chosen"]].drop_duplicates("rx")
    rest = frame[~frame["rx"].isin(picked["rx"])]
    if len(rest):
        nearest = rest.assign(d=rest["delay_ns"].abs()).sort_values("d").drop_duplicates("rx")
        picked = pd.concat([picked, nearest[frame.columns]])
    return picked[cols].sort_values("rx").reset_index(drop=True)


# ---------------------------------------------------------------- packets


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes with edges a-b (min-label propagation)."""
    label = np.arange(n, dtype=np.int64)
    if not len(a):
        return label
    for _ in range(64):
        before = label.copy()
        m = np.minimum(label[a], label[b])
        np.minimum.at(label, a, m)
        np.minimum.at(label, b, m)
        label = label[label]
        if np.array_equal(label, before):
            break
    return label


def _depths(n: int, parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    """Longest chain of links leading to each segment (0 for a packet's first)."""
    depth = np.zeros(n, dtype=np.int64)
    for _ in range(32):
        before = depth.copy()
        np.maximum.at(depth, child, depth[parent] + 1)
        if np.array_equal(depth, before):
            break
    return depth


def _clock_pairs(ev: pd.DataFrame, cand: pd.DataFrame) -> pd.DataFrame:
    """The crossings that bound the clock offsets: candidates pairing exactly
    one tx with one rx on another node (tx_node, rx_node, tx_t, rx_t)."""
    multi_node = len(ev) and ev["node"].nunique() > 1
    if not (multi_node and len(cand)):
        return pd.DataFrame({"tx_node": [], "rx_node": [], "tx_t": [], "rx_t": []})
    node = ev["node"].cat.codes.to_numpy()
    cats = ev["node"].cat.categories
    tx, rx = cand["tx"].to_numpy(), cand["rx"].to_numpy()
    unique = (_count(tx) == 1) & (_count(rx) == 1) & (node[tx] != node[rx])
    t = ev["t"].to_numpy()
    return pd.DataFrame(
        {
            "tx_node": np.asarray(cats)[node[tx[unique]]],
            "rx_node": np.asarray(cats)[node[rx[unique]]],
            "tx_t": t[tx[unique]],
            "rx_t": t[rx[unique]],
        }
    )


def _with_segments(
    ev: pd.DataFrame, seg: np.ndarray, links: pd.DataFrame, clocks: ClockSolution
) -> tuple[pd.DataFrame, np.ndarray]:
    """The events with corrected time (t; t_raw as captured), segment, causal
    depth and the link columns; and each event's packet (linked component)."""
    out = ev.copy(deep=False)
    out["t_raw"] = out["t"]
    if len(out):
        offsets = clocks.offsets_for(out["node"].cat.categories)
        out["t"] = out["t"].to_numpy() - offsets[out["node"].cat.codes.to_numpy()]
    n_seg = int(seg.max()) + 1 if len(seg) else 0
    seg_parent, seg_child = seg[links["tx"].to_numpy()], seg[links["rx"].to_numpy()]
    comp = _components(n_seg, seg_parent, seg_child)
    depth = _depths(n_seg, seg_parent, seg_child)
    out["segment"] = seg
    out["depth"] = depth[seg] if len(seg) else np.zeros(0, dtype=np.int64)
    comp_ev = comp[seg] if len(seg) else np.zeros(0, dtype=np.int64)

    # Link columns on the rx event that starts the linked segment.
    link_from = np.full(len(out), -1, dtype=np.int64)
    link_amb = np.zeros(len(out), dtype=bool)
    link_cand = np.zeros(len(out), dtype=np.int64)
    rx = links["rx"].to_numpy()
    link_from[rx] = out["row"].to_numpy()[links["tx"].to_numpy()]
    link_amb[rx] = links["ambiguous"].to_numpy()
    link_cand[rx] = links["candidates"].to_numpy()
    out["link_from_row"] = link_from
    out["link_ambiguous"] = link_amb
    out["link_candidates"] = link_cand
    return out, comp_ev


def _number_packets(out: pd.DataFrame, seg: np.ndarray, comp_ev: np.ndarray) -> pd.DataFrame:
    """Events sorted into packets and hops: packet ids 1.. in order of each
    packet's first (corrected) time, hops in causal order, times since the
    packet's first and previous hop, ambiguity per packet."""
    if not len(out):
        for c in ("packet", "hop", "since_first_ns", "since_prev_ns", "candidates"):
            out[c] = np.zeros(0, dtype=np.int64)
        out["ambiguous"] = np.zeros(0, dtype=bool)
        return out
    t = out["t"].to_numpy()
    first_t = pd.Series(t).groupby(comp_ev).transform("min").to_numpy()
    seg_start = pd.Series(t).groupby(seg).transform("min").to_numpy()
    order = np.lexsort(
        (
            out["row"].to_numpy(),
            out["ts_ns"].to_numpy(),
            seg,
            seg_start,
            out["depth"].to_numpy(),
            comp_ev,
            first_t,
        )
    )
    out = out.iloc[order].reset_index(drop=True)
    comp_sorted = comp_ev[order]
    new_packet = np.r_[True, comp_sorted[1:] != comp_sorted[:-1]]
    packet = np.cumsum(new_packet)
    out["packet"] = packet
    start = np.flatnonzero(new_packet)
    first_idx = start[packet - 1]
    out["hop"] = np.arange(len(out)) - first_idx + 1
    ts = out["t"].to_numpy()
    out["since_first_ns"] = ts - ts[first_idx]
    prev = np.r_[ts[0], ts[:-1]]
    out["since_prev_ns"] = np.where(new_packet, 0, ts - prev)
    amb = pd.Series(out["link_ambiguous"].to_numpy()).groupby(packet).transform("any").to_numpy()
    cand_max = (
        pd.Series(out["link_candidates"].to_numpy()).groupby(packet).transform("max").to_numpy()
    )
    out["ambiguous"] = amb
    out["candidates"] = cand_max
    return out


def _links_by_row(ev: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """Links in terms of rows, with both ends' nodes and the corrected delay."""
    links_out = links.copy()
    if len(links_out):
        links_out["tx_row"] = ev["row"].to_numpy()[links_out["tx"].to_numpy()]
        links_out["rx_row"] = ev["row"].to_numpy()[links_out["rx"].to_numpy()]
        links_out["tx_node"] = ev["node"].to_numpy()[links_out["tx"].to_numpy()]
        links_out["rx_node"] = ev["node"].to_numpy()[links_out["rx"].to_numpy()]
    else:
        for c in ("tx_row", "rx_row"):
            links_out[c] = pd.Series(dtype=np.int64)
        for c in ("tx_node", "rx_node"):
            links_out[c] = pd.Series(dtype=object)
    return links_out.drop(columns=["tx", "rx"])


def assemble(
    events: EventSet, options: PacketOptions | None = None, clocks: ClockSolution | None = None
) -> Packets:
    """Packets of an EventSet: segment, link across nodes, correct clocks, order hops."""
    opts = options or PacketOptions()
    ev = events.events
    seg = segment_ids(ev, opts.max_gap_ns)
    cand = (
        crossing_candidates(
            ev, seg, opts.match_window_ns, opts.max_ttl_hops, opts.same_node_window_ns
        )
        if len(ev)
        else pd.DataFrame({"tx": [], "rx": []})
    )
    if clocks is None:
        clocks = solve(_clock_pairs(ev, cand), events.node_meta, opts.reference)
    links = resolve_links(ev, cand, clocks, opts.max_link_delay_ns)
    out, comp_ev = _with_segments(ev, seg, links, clocks)
    out = _number_packets(out, seg, comp_ev)
    return Packets(
        events=out, links=_links_by_row(ev, links), clocks=clocks, node_meta=events.node_meta,
        node_source=events.node_source,
    )
