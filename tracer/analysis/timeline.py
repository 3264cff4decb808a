"""A packet's journey, hop by hop: selection, JSON documents and terminal text.

Builds on tracer.analysis.packets (which groups events into packets and orders
their hops causally); this module only selects packets and presents them."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis import rule_walks
from tracer.analysis.addresses import (
    IPV6_BASE,
    endpoint,
    int_to_ip,
    ints_to_strings,
    proto_name,
    tcp_flags_text,
    tuple_text,
)
from tracer.analysis.events import EventSet, load_events
from tracer.analysis.flows import FlowSpec, parse_flow, select_packets
from tracer.analysis.icmp import icmp_name, quote_text
from tracer.analysis.packets import PacketOptions, Packets, assemble
from tracer.errors import UsageError


def packets_of(
    captures: Sequence[str | Path] | EventSet, options: PacketOptions | None = None
) -> Packets:
    """Load captures (paths or an EventSet) and group their events into packets."""
    events = captures if isinstance(captures, EventSet) else load_events(captures)
    return assemble(events, options)


def select(
    packets: Packets, packet: int | None = None, flow: str | FlowSpec | None = None
) -> np.ndarray:
    """Packet ids chosen by --packet or --flow (all packets if neither)."""
    ev = packets.events
    if packet is not None and flow is not None:
        raise UsageError("give --packet or --flow, not both")
    if packet is not None:
        if not 1 <= packet <= packets.count:
            raise UsageError(f"no packet {packet}: this capture has packets 1..{packets.count}")
        return np.array([packet])
    if flow is not None:
        spec = parse_flow(flow) if isinstance(flow, str) else flow
        return select_packets(ev, spec)
    return np.arange(1, packets.count + 1)


# fmt: off
_ROW_FIELDS = (
    "row", "hop", "node", "probe", "hook", "netns", "netns_ino", "ifname", "ifindex", "t",
    "since_prev_ns", "since_first_ns", "proto", "src", "sport", "dst", "dport", "out_src",
    "out_sport", "out_dst", "out_dport", "ttl", "len", "ip_id", "skb", "tcp_flags", "seq", "ack",
    "nat_kind", "nat_first", "nat_ns", "drop_reason", "link_from_row", "link_ambiguous",
    "link_candidates", "ambiguous", "candidates", "encap", "outer_src", "outer_dst",
    "icmp_type", "icmp_code", "quoted_src", "quoted_sport", "quoted_dst", "quoted_dport",
    "quoted_proto",
)
# fmt: on
_Row = namedtuple("_Row", _ROW_FIELDS)


class _Rows:
    """The hop columns as numpy arrays, sliced per packet: building a journey
    from a pandas slice costs milliseconds, from array slices microseconds."""

    def __init__(self, ev: pd.DataFrame):
        self.columns = []
        for name in _ROW_FIELDS:
            col = ev[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                labels = np.array([str(c) for c in col.cat.categories] + [""], dtype=object)
                self.columns.append(labels[col.cat.codes.to_numpy()])
            else:
                self.columns.append(col.to_numpy())
        ids = ev["packet"].to_numpy()
        self.bounds = np.searchsorted(ids, np.arange(1, (int(ids.max()) if len(ids) else 0) + 2))

    def of(self, packet_id: int) -> list[_Row]:
        a, b = self.bounds[packet_id - 1], self.bounds[packet_id]
        return [_Row._make(v) for v in zip(*(c[a:b].tolist() for c in self.columns), strict=True)]


def _rows(packets: Packets) -> _Rows:
    if "rows" not in packets.cache:
        packets.cache["rows"] = _Rows(packets.events)
    return packets.cache["rows"]


def _ns(value: Any) -> int:
    return int(value)


def _where(row: Any) -> str:
    netns = row.netns or f"netns:{row.netns_ino}"
    return f"{netns}/{row.ifname}" if row.ifname else netns


def _nat(row: Any) -> dict[str, Any] | None:
    if row.probe != "nat":
        return None
    return {
        "kind": row.nat_kind,
        "hook": row.hook,
        "first": bool(row.nat_first),
        "ns": int(row.nat_ns) or None,  # 0: not measured
        "before": tuple_text(row.src, row.sport, row.dst, row.dport, row.proto),
        "after": tuple_text(row.out_src, row.out_sport, row.out_dst, row.out_dport, row.proto),
    }


def _outcome(hops: list[dict[str, Any]], node_meta: dict[str, dict[str, Any]]) -> str:
    last = hops[-1]
    if last["probe"] == "drop":
        return f"dropped on {last['node']}: {last['drop_reason'] or 'no reason given'}"
    node_ino = ((node_meta.get(last["node"]) or {}).get("netns") or {}).get("inode")
    if last["probe"] == "rx" and node_ino is not None and last["netns_ino"] != node_ino:
        return f"delivered into {last['netns'] or last['netns_ino']} ({last['ifname']})"
    if last["probe"] == "tx":
        return f"left {last['node']} via {last['ifname']}"
    return f"last seen: {last['probe']} on {last['node']} ({last['where']})"


def journey(packets: Packets, packet_id: int) -> dict[str, Any]:
    """One packet as a JSON-ready document: summary and hops in causal order."""
    rows = _rows(packets).of(packet_id)
    row_node = {}
    hops = []
    for r in rows:
        row_node[r.row] = r.node
        hop = {
            "hop": int(r.hop),
            "node": r.node,
            "probe": r.probe,
            "hook": r.hook or None,
            "netns": r.netns,
            "netns_ino": int(r.netns_ino),
            "ifname": r.ifname,
            "ifindex": int(r.ifindex),
            "where": _where(r),
            "time_ns": _ns(r.t),
            "since_prev_ns": _ns(r.since_prev_ns),
            "since_first_ns": _ns(r.since_first_ns),
            "proto": proto_name(r.proto),
            "src": endpoint(r.src, r.sport, r.proto),
            "dst": endpoint(r.dst, r.dport, r.proto),
            "ttl": int(r.ttl),
            "len": int(r.len),
            "ip_id": int(r.ip_id),
            "skb": f"{int(r.skb):#x}",
        }
        if r.proto == 6:
            hop.update(
                {"tcp_flags": tcp_flags_text(r.tcp_flags), "seq": int(r.seq), "ack": int(r.ack)}
            )
        hop["nat"] = _nat(r)
        hop["drop_reason"] = r.drop_reason or None
        # In a tunnel (Calico VXLAN/IPIP), the hop's fields above are the
        # inner packet's; the outer header goes between the tunnel's ends.
        hop["encap"] = (
            {"kind": r.encap, "outer_src": int_to_ip(r.outer_src), "outer_dst": int_to_ip(r.outer_dst)}
            if r.encap
            else None
        )
        # An ICMP error: what it says, and the packet it quotes (that
        # packet's tuple where this hop saw it: NAT rewrites the quote too).
        hop["icmp"] = (
            {"type": int(r.icmp_type), "code": int(r.icmp_code),
             "name": icmp_name(int(r.icmp_type), int(r.icmp_code), int(r.src) >= IPV6_BASE),
             "quoted": quote_text(int(r.quoted_src), int(r.quoted_sport), int(r.quoted_dst),
                                  int(r.quoted_dport), int(r.quoted_proto))
             if r.quoted_proto else None}
            if r.icmp_type
            else None
        )
        if r.link_from_row >= 0:
            hop["from_node"] = row_node.get(r.link_from_row)
            hop["crossed"] = {
                "ambiguous": bool(r.link_ambiguous),
                "candidates": int(r.link_candidates),
            }
        hops.append(hop)
    first = rows[0]
    nodes = list(dict.fromkeys(h["node"] for h in hops))
    doc = {
        "packet": int(packet_id),
        "proto": proto_name(first.proto),
        "src": endpoint(int(first.src), int(first.sport), int(first.proto)),
        "dst": endpoint(int(first.dst), int(first.dport), int(first.proto)),
        "time_ns": int(first.t),
        "duration_ns": int(rows[-1].since_first_ns),
        "nodes": nodes,
        "ambiguous": bool(first.ambiguous),
        "candidates": int(first.candidates) if first.ambiguous else 1,
        "outcome": _outcome(hops, packets.node_meta),
        "hops": hops,
        # The netfilter rules it walked (captures taken with --rules).
        "rules": [{**w.to_dict(), "lines": w.lines}
                  for w in rule_walks.of(packets).of_packets({int(packet_id)})],
    }
    return doc


def journeys(packets: Packets, ids: Sequence[int] | np.ndarray) -> Iterator[dict[str, Any]]:
    for pid in ids:
        yield journey(packets, int(pid))


# ---------------------------------------------------------------- text


def fmt_duration(ns: float | None) -> str:
    """Human scale: 850ns, 12.3us, 4.56ms, 1.20s; n/a for none."""
    if ns is None or ns != ns:  # None or NaN
        return "n/a"
    v = float(ns)
    a = abs(v)
    if a < 1_000:
        return f"{v:.0f}ns"
    if a < 1_000_000:
        return f"{v / 1e3:.1f}us"
    if a < 1_000_000_000:
        return f"{v / 1e6:.2f}ms"
    return f"{v / 1e9:.2f}s"


HOOK_SHORT = {
    "prerouting": "PRE",
    "input": "IN",
    "forward": "FWD",
    "output": "OUT",
    "postrouting": "POST",
}


def _detail(h: dict[str, Any]) -> str:
    if h["nat"]:
        n = h["nat"]
        first = " first" if n["first"] else ""
        took = "(time not measured)" if n["ns"] is None else f"in {fmt_duration(n['ns'])}"
        text = f"{n['kind'].upper()}{first} {took}: {n['before']}  =>  {n['after']}"
        if h.get("icmp") and h["icmp"]["quoted"]:
            text += f"  (icmp {h['icmp']['type']}/{h['icmp']['code']}, quote now {h['icmp']['quoted']})"
        return text
    # IPv6 calls its TTL the hop limit (the JSON keeps one name, ttl).
    ttl = f"{'hlim' if _is_ipv6_text(h['src']) else 'ttl'} {h['ttl']}"
    text = f"{h['src']} -> {h['dst']}  {ttl}"
    if h.get("encap"):
        e = h["encap"]
        text += f"  in {e['kind']} {e['outer_src']} -> {e['outer_dst']}"
    if h.get("icmp"):
        i = h["icmp"]
        text = (f"icmp {i['type']}/{i['code']} {i['name']} from {h['src']} to {h['dst']}, "
                + (f"quoting {i['quoted']}" if i["quoted"] else "quote unreadable")
                + f"  {ttl}")
    if h["drop_reason"]:
        text = f"DROP {h['drop_reason']}: {text}"
    if "from_node" in h:
        text += f"   <- from {h['from_node']}"
        if h["crossed"]["ambiguous"]:
            text += f" (AMBIGUOUS: {h['crossed']['candidates']} candidates)"
    return text


def _is_ipv6_text(text: str) -> bool:
    """'[2001:db8::1]:80' or '2001:db8::1', not '10.0.0.1:80'."""
    return text.startswith("[") or text.count(":") > 1


def _ip_id(first: dict[str, Any]) -> str:
    """' id N' for IPv4; nothing for IPv6, which has no IP ID."""
    return "" if _is_ipv6_text(str(first["src"])) else f" id {first['ip_id']}"


def format_journey(doc: dict[str, Any]) -> str:
    first = doc["hops"][0]
    flags = f" [{first['tcp_flags']}]" if "tcp_flags" in first else ""
    seq = f" seq {first['seq']} ack {first['ack']}" if "seq" in first else ""
    lines = [
        f"packet {doc['packet']}  {doc['proto']} {doc['src']} -> {doc['dst']}{flags} "
        f"len {first['len']}{_ip_id(first)}{seq}",
        f"  {' -> '.join(doc['nodes'])}: {len(doc['hops'])} hops "
        f"in {fmt_duration(doc['duration_ns'])}; "
        f"{doc['outcome']}",
    ]
    if doc["ambiguous"]:
        lines.append(
            f"  WARNING: a cross-node match had {doc['candidates']} candidates with the same "
            "fingerprint; the pairing shown is a guess (first sent, first received)"
        )
    node_w = max(len(h["node"]) for h in doc["hops"])
    where_w = max(len(h["where"]) for h in doc["hops"])
    lines.append(
        f"  {'hop':>3}  {'node':<{node_w}}  {'+prev':>8}  {'+first':>8}  {'probe':<8}  "
        f"{'where':<{where_w}}  what"
    )
    for h in doc["hops"]:
        probe = f"nat {HOOK_SHORT.get(h['hook'], h['hook'])}" if h["probe"] == "nat" else h["probe"]
        lines.append(
            f"  {h['hop']:>3}  {h['node']:<{node_w}}  {fmt_duration(h['since_prev_ns']):>8}  "
            f"{fmt_duration(h['since_first_ns']):>8}  {probe:<8}  "
            f"{h['where']:<{where_w}}  {_detail(h)}"
        )
    if doc.get("rules"):
        lines.append("  netfilter rules walked (--rules):")
        for w in doc["rules"]:
            lines.append(f"    {w['node']}: {w['lines'][0]}")
            lines += [f"    {line}" for line in w["lines"][1:]]
    return "\n".join(lines)


def summary_table(packets: Packets) -> pd.DataFrame:
    """One row per packet (vectorized): first tuple, nodes, hops, duration, last probe."""
    ev = packets.events
    if not len(ev):
        return pd.DataFrame(
            columns=[
                "packet",
                "src",
                "dst",
                "hops",
                "duration_ns",
                "last_probe",
                "nodes",
                "ambiguous",
            ]
        )
    g = ev.groupby("packet", sort=True)
    first = g.head(1).set_index("packet")
    last = g.tail(1).set_index("packet")
    table = pd.DataFrame(
        {
            "src": ints_to_strings(first["src"].to_numpy()),
            "sport": first["sport"].to_numpy(),
            "dst": ints_to_strings(first["dst"].to_numpy()),
            "dport": first["dport"].to_numpy(),
            "hops": g.size().to_numpy(),
            "duration_ns": last["since_first_ns"].to_numpy(),
            "last_probe": last["probe"].astype(str).to_numpy(),
            "nodes": g["node"].nunique().to_numpy(),
            "ambiguous": first["ambiguous"].to_numpy(),
        },
        index=first.index,
    )
    return table.reset_index()
