"""Merges per-node captures into one capture, on one clock.

The clock offsets come from the traffic itself (tracer.analysis.clocks: every
packet that crossed between two nodes bounds their offset, as in NTP), the
cross-node packets from fingerprint matching (tracer.analysis.packets). The
merged directory has the ordinary capture format: every event of every node,
``time_ns`` corrected to the reference node's clock (``ts_ns`` untouched: it
stays the capturing node's CLOCK_MONOTONIC), and a ``merged_from`` metadata
entry per node with its estimated offset, uncertainty and source metadata.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracer.analysis.clocks import ClockSolution
from tracer.analysis.events import EventSet, load_events, to_capture_table
from tracer.analysis.packets import PacketOptions, Packets, assemble
from tracer.capfile import CaptureWriter, is_capture_file, write_meta
from tracer.errors import UsageError
from tracer.safe_output import StagedDir, refuse_overlap

PART_NS = 1_000_000_000  # about one second of events per part, like a live capture


@dataclass
class MergeResult:
    path: Path
    clocks: ClockSolution
    nodes: list[str]
    events: int
    links: int
    ambiguous_links: int
    causal_violations: int  # cross-node hops that still run backwards after correction

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "reference": self.clocks.reference,
            "nodes": self.nodes,
            "events": self.events,
            "cross_node_links": self.links,
            "ambiguous_links": self.ambiguous_links,
            "causal_violations": self.causal_violations,
            "clocks": {n: c.to_dict() for n, c in self.clocks.nodes.items()},
        }


def _sum_stats(metas: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for meta in metas:
        for key, value in (meta.get("stats") or {}).items():
            if isinstance(value, dict):
                sub = total.setdefault(key, {})
                for k, v in value.items():
                    if isinstance(v, int | float):
                        sub[k] = sub.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def merged_meta(events: EventSet, packets: Packets, out_events: int) -> dict[str, Any]:
    clocks = packets.clocks
    merged_from = []
    for node, meta in events.node_meta.items():
        clock = clocks.nodes[node]
        previous = meta.get("merged") or {}
        source_meta = {k: v for k, v in meta.items() if k != "merged"}
        # A node that came from an earlier merge was already shifted by that merge.
        total_offset = float(previous.get("offset_ns", 0.0)) + clock.offset_ns
        rmm = (source_meta.get("clock") or {}).get("realtime_minus_monotonic_ns")
        merged_from.append(
            {
                "node": node,
                "path": previous.get("path") or str(events.node_source.get(node, "")),
                "reference": node == clocks.reference,
                "offset_ns": round(total_offset, 1),
                "uncertainty_ns": None
                if clock.uncertainty_ns is None
                else round(clock.uncertainty_ns, 1),
                "method": clock.method,
                "lower_ns": clock.lower_ns,
                "upper_ns": clock.upper_ns,
                "packets_to": clock.packets_to,
                "packets_from": clock.packets_from,
                "via": clock.via,
                "consistent": clock.consistent,
                "realtime_minus_monotonic_ns": rmm,
                # What converts this node's ts_ns to the reference's UTC.
                # Integer arithmetic: rmm needs 61 bits, a float would round it to 256 ns.
                "corrected_realtime_minus_monotonic_ns": None
                if rmm is None
                else int(rmm) - round(total_offset),
                "meta": source_meta,
            }
        )
    metas = [m["meta"] for m in merged_from]
    ref_meta = events.node_meta.get(clocks.reference, {})
    service = next((m["service"] for m in metas if m.get("service")), None)
    hists = [
        {**h, "node": m["node"]}
        for m in merged_from
        for h in ((m["meta"].get("histograms") or {}).get("nat_hook_ns") or [])
    ]
    started = [m.get("started_at") for m in metas if m.get("started_at")]
    return {
        "node": ",".join(events.nodes),
        "nodes": events.nodes,
        "hostname": ref_meta.get("hostname"),
        "kernel": ref_meta.get("kernel"),
        "mode": ref_meta.get("mode", "events"),
        "service": service,
        "service_history": ref_meta.get("service_history", []),
        "filters": ref_meta.get("filters", {}),
        "clock": ref_meta.get("clock"),
        "started_ns": ref_meta.get("started_ns"),
        "ended_ns": ref_meta.get("ended_ns"),
        "started_at": min(started) if started else None,
        "stats": {**_sum_stats(metas), "events": out_events},
        "histograms": {"nat_hook_ns": hists},
        "complete": all(m.get("complete", False) for m in metas),
        "merged_from": merged_from,
        "correlation": {
            "reference": clocks.reference,
            "cross_node_links": len(packets.links),
            "ambiguous_links": int(packets.links["ambiguous"].sum()) if len(packets.links) else 0,
        },
    }


def causal_violations(packets: Packets) -> int:
    """Cross-node links whose corrected receive time precedes the send time."""
    links = packets.links
    if not len(links):
        return 0
    cross = links["tx_node"].astype(str).to_numpy() != links["rx_node"].astype(str).to_numpy()
    return int(np.sum((links["delay_ns"].to_numpy() < 0) & cross))


def merge(
    captures: Sequence[str | Path],
    out: str | Path,
    *,
    options: PacketOptions | None = None,
    overwrite: bool = False,
) -> MergeResult:
    """Estimate the node clocks from crossing traffic and write one merged
    capture: built beside `out` and renamed into place when complete, so an
    old capture there (replaced only with `overwrite`) survives any failure."""
    if len(captures) < 2:
        raise UsageError("correlate needs the captures of at least two nodes")
    out = Path(out)
    refuse_overlap(out, captures, replaces_dir=True)
    staged = StagedDir(out, force=overwrite, belongs=is_capture_file, what="capture")
    events = load_events(captures)
    if len(events.nodes) < 2:
        raise UsageError(f"all captures are of one node ({events.nodes[0]}): nothing to correlate")
    packets = assemble(events, options)
    ev = packets.events.sort_values(["t", "node", "ts_ns", "row"], kind="stable")
    table = to_capture_table(ev)
    with staged.writing() as staging:
        writer = CaptureWriter(staging)
        try:
            t = ev["t"].to_numpy()
            if len(t):
                part = (t - t[0]) // PART_NS
                cuts = np.flatnonzero(np.r_[True, part[1:] != part[:-1], True])
                for a, b in itertools.pairwise(cuts):
                    writer.submit(table.slice(int(a), int(b - a)))
        finally:
            writer.close()
        write_meta(staging, merged_meta(events, packets, len(ev)))
    return MergeResult(
        path=out,
        clocks=packets.clocks,
        nodes=events.nodes,
        events=len(ev),
        links=len(packets.links),
        ambiguous_links=int(packets.links["ambiguous"].sum()) if len(packets.links) else 0,
        causal_violations=causal_violations(packets),
    )
