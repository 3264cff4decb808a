"""The netfilter rules each packet walked, from captures taken with
`tracer capture --rules` (tracer.capfile.rule_trace), matched to the
capture's packets.

A trace record carries the packet's IPv4 header as the hook saw it; the IP
ID and TCP sequence number with the addresses and ports (before or after
NAT, as the events show both) name the packet, and its node's clock orders
candidates: a trace message is read after the packet's event, so a record
goes to the last matching event of its node at or before its read time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from tracer.analysis.addresses import ip_to_int
from tracer.capfile.rule_trace import read_records
from tracer.rules.trace_events import TraceEvent
from tracer.rules.walk import TextOf, Walk, build_walks, format_walk, walk_lines

_EVENT_FIELDS = {f.name for f in fields(TraceEvent)}


@dataclass
class NodeWalk:
    node: str
    walk: Walk
    packet: int | None = None  # the capture's packet id (tracer.analysis.packets), if matched

    @property
    def line(self) -> str:
        return format_walk(self.walk)

    @property
    def lines(self) -> list[str]:
        return walk_lines(self.walk)

    def to_dict(self) -> dict:
        final = self.walk.final
        return {"node": self.node, "walk": self.line, "table": self.walk.table,
                "chain": final.chain if final else None,
                "handle": final.handle if final else None,
                "text": final.text if final else None, "verdict": self.walk.verdict,
                "packet": self.packet}


@dataclass
class RuleWalks:
    walks: list[NodeWalk]
    unreadable: int  # records cut short (a crash mid-line)
    traced_nodes: list[str]  # nodes whose capture was taken with --rules

    def of_packets(self, packets: set[int]) -> list[NodeWalk]:
        return [w for w in self.walks if w.packet in packets]


def load(node_source: Mapping[str, Path], node_meta: Mapping[str, dict]) -> RuleWalks:
    walks: list[NodeWalk] = []
    bad = 0
    traced = [n for n, m in node_meta.items() if (m or {}).get("rules")]
    for node, path in node_source.items():
        records, unreadable = read_records(path)
        bad += unreadable
        texts = {(r["family"], r["table"], r["chain"], r["handle"]): r.get("text") for r in records}
        events = [TraceEvent(**{k: v for k, v in r.items() if k in _EVENT_FIELDS})
                  for r in records]
        walks += [NodeWalk(node, w) for w in build_walks(events, _recorded(texts))]
    return RuleWalks(walks, bad, traced)


def _recorded(texts: dict) -> TextOf:
    """Rule texts as the capture recorded them."""
    return lambda family, table, chain, handle: texts.get((family, table, chain, handle))


def _ip(text: str | None) -> int:
    return ip_to_int(text) if text else -1


def attach(rw: RuleWalks, ev: pd.DataFrame) -> None:
    """Set each walk's packet: the last event of its node, at or before the
    walk's first record was read, with the same IP ID, TCP sequence number,
    protocol and addresses and ports (as they were before or after NAT)."""
    if not rw.walks or not len(ev):
        return
    ids = {w.walk.first.ip_id for w in rw.walks}
    sel = ev[np.isin(ev["ip_id"].to_numpy(), list(ids))]
    index: dict[tuple, list[tuple[int, int]]] = {}
    cols = [sel[c].to_numpy() for c in ("node", "src", "dst", "sport", "dport", "proto", "ip_id",
                                         "seq", "ts_ns", "packet", "out_src", "out_dst",
                                         "out_sport", "out_dport")]
    for (node, src, dst, sport, dport, proto, ip_id, seq, ts, packet,
         osrc, odst, osport, odport) in zip(*cols, strict=True):
        for tup in {(src, dst, sport, dport), (osrc, odst, osport, odport)}:
            key = (str(node), int(tup[0]), int(tup[1]), int(tup[2]), int(tup[3]), int(proto),
                   int(ip_id), int(seq) if proto == 6 else 0)
            index.setdefault(key, []).append((int(ts), int(packet)))
    for w in rw.walks:
        f = w.walk.first
        key = (w.node, _ip(f.src), _ip(f.dst), f.sport or 0, f.dport or 0, f.proto or 0,
               f.ip_id or 0, (f.seq or 0) if f.proto == 6 else 0)
        found = sorted(index.get(key, []))
        before = [p for t, p in found if t <= f.ts]
        if before or found:
            w.packet = before[-1] if before else found[0][1]


def of(packets) -> RuleWalks:
    """The rule walks of a Packets' captures, matched to its packets (once)."""
    if "rule_walks" not in packets.cache:
        rw = load(packets.node_source, packets.node_meta)
        attach(rw, packets.events)
        packets.cache["rule_walks"] = rw
    return packets.cache["rule_walks"]


def blocking_rule(walks: list[NodeWalk]) -> dict | None:
    """The rule that dropped or rejected most of these walks' packets, with
    how many it stopped (None when no walk ended in a drop)."""
    stopped = [w for w in walks if w.walk.verdict == "drop"]
    if not stopped:
        return None
    def key(w: NodeWalk) -> tuple:
        final = w.walk.final
        return (w.node, w.walk.table, final.chain if final else "", final.handle if final else None)
    counts: dict[tuple, list[NodeWalk]] = {}
    for w in stopped:
        counts.setdefault(key(w), []).append(w)
    top = max(counts.values(), key=len)
    return {**top[0].to_dict(), "packets": len(top)}
