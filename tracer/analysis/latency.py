"""How long the hot path takes: NAT hook time, node traversal, cross-node hops.

- NAT hook time is ``nat_ns`` of nat events (the time between the programs
  bracketing the NAT hook), per node, hook and kind, with a connection's first
  packet (``nat_first``: rule walk + new conntrack binding) apart from the
  established ones (binding reused). Events whose time was not measured
  (``nat_ns`` 0) are left out and counted in the group's note.
- Node traversal is, per packet and node, the first rx to the last tx of the
  packet's segment on that node (e.g. eth0 -> cali veth), grouped by the
  interfaces it came in and left by.
- Cross-node hop time is the corrected one-way delay of every packet matched
  between two nodes; it is only as exact as the clock offset (its uncertainty
  is reported with it).

Percentiles use linear interpolation between order statistics (numpy's
default); a p99.9 of fewer than 1000 samples is the maximum in disguise, so
each row carries its count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.events import PROBE_NAT, PROBE_RX, PROBE_TX
from tracer.analysis.packets import Packets
from tracer.analysis.timeline import fmt_duration
from tracer.histograms import fill_bucket_gaps, format_buckets, log2_rows, log2_slot_counts

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Plot bins: quarter octaves from 1 ns to ~17 s.
FINE_EDGES = 2.0 ** np.arange(0, 34.01, 0.25)


@dataclass
class Distribution:
    """Summary of one group of durations (ns)."""

    labels: dict[str, Any]
    count: int
    mean: float
    percentiles: dict[str, float]
    max: float
    log2: np.ndarray = field(repr=False)  # counts per kernel log2 slot (tracer.histograms)
    fine: np.ndarray = field(repr=False)  # counts over FINE_EDGES
    note: str = ""

    @property
    def name(self) -> str:
        if "from" in self.labels and "to" in self.labels:
            return f"{self.labels['from']} → {self.labels['to']}"
        return " ".join(f"{v}" for v in self.labels.values() if v not in (None, ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.labels,
            "count": self.count,
            "mean_ns": round(self.mean, 1),
            **{f"p{k}_ns": round(v, 1) for k, v in self.percentiles.items()},
            "max_ns": self.max,
            "log2_buckets": [list(b) for b in log2_rows(self.log2)],
            **({"note": self.note} if self.note else {}),
        }


def describe(values: np.ndarray, labels: dict[str, Any], note: str = "") -> Distribution:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return Distribution(
            labels,
            0,
            float("nan"),
            {f"{p:g}": float("nan") for p in PERCENTILES},
            float("nan"),
            np.zeros(1, dtype=np.int64),
            np.zeros(len(FINE_EDGES) - 1),
            note,
        )
    pct = np.percentile(v, PERCENTILES)
    fine, _ = np.histogram(np.clip(v, 1, None), bins=FINE_EDGES)
    return Distribution(
        labels=labels,
        count=len(v),
        mean=float(v.mean()),
        percentiles={f"{p:g}": float(x) for p, x in zip(PERCENTILES, pct, strict=True)},
        max=float(v.max()),
        log2=log2_slot_counts(v),
        fine=fine,
        note=note,
    )


def _by_codes(columns: list[np.ndarray], values: np.ndarray, label) -> list[Distribution]:
    """One Distribution per distinct row of integer code columns; label(row)
    turns a row of codes into the labels dict. Works on codes so a million
    categorical values are never turned into Python strings."""
    if not len(values):
        return []
    key = np.zeros(len(values), dtype=np.int64)
    for col in columns:
        col = col.astype(np.int64) + 1  # -1 (missing) -> 0
        key = key * (int(col.max()) + 1) + col
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
    out = [
        describe(
            values[order[bounds[g] : bounds[g + 1]]], label([int(c[first[g]]) for c in columns])
        )
        for g in range(len(uniq))
    ]
    return sorted(out, key=lambda d: [str(v) for v in d.labels.values()])


def _cats(ev: pd.DataFrame, name: str) -> tuple[np.ndarray, list[str]]:
    return ev[name].cat.codes.to_numpy(), [str(c) for c in ev[name].cat.categories]


def nat_times(packets: Packets) -> list[Distribution]:
    ev = packets.events
    nat = ev[ev["probe_code"].to_numpy() == PROBE_NAT]
    (node, nodes), (hook, hooks), (kind, kinds) = (
        _cats(nat, c) for c in ("node", "hook", "nat_kind")
    )
    first = nat["nat_first"].to_numpy().astype(np.int64)

    def label(row: list[int]) -> dict[str, Any]:
        return {
            "node": nodes[row[0]],
            "hook": hooks[row[1]],
            "kind": kinds[row[2]],
            "first": "first" if row[3] else "established",
        }

    codes = [node, hook, kind, first]
    ns = nat["nat_ns"].to_numpy(np.int64)
    # nat_ns 0: the rewrite was recorded but its hook time was not measured
    # (exit found no entry: bpf/nat.bpf.h); left out of the figures, and said.
    measured = ns > 0
    out = _by_codes([c[measured] for c in codes], ns[measured], label)
    if measured.all():
        return out
    by_labels = {tuple(d.labels.values()): d for d in out}
    for missing in _by_codes([c[~measured] for c in codes], ns[~measured], label):
        note = f"{missing.count} more without a measured time (left out)"
        d = by_labels.get(tuple(missing.labels.values()))
        if d is None:
            out.append(describe(np.array([]), missing.labels, note))
        else:
            d.note = note
    return sorted(out, key=lambda d: [str(v) for v in d.labels.values()])


def _iface(node: str, netns: str, ifname: str) -> str:
    return ifname if netns in (node, "host", "") else f"{netns}:{ifname}"


def traversal_times(packets: Packets) -> list[Distribution]:
    """First rx -> last tx of each segment, per node and (in, out) interface."""
    ev = packets.events
    probe = ev["probe_code"].to_numpy()
    t = ev["t"].to_numpy()
    seg = ev["segment"].to_numpy()
    rx = np.flatnonzero(probe == PROBE_RX)
    tx = np.flatnonzero(probe == PROBE_TX)
    if not len(rx) or not len(tx):
        return []
    # Events are in hop order within a packet, so a segment's first rx and
    # last tx are its first and last occurrences among rx and tx events.
    _, first_rx = np.unique(seg[rx], return_index=True)
    rx = rx[first_rx]
    _, last_tx = np.unique(seg[tx][::-1], return_index=True)
    tx = tx[::-1][last_tx]
    i_rx = rx[np.isin(seg[rx], seg[tx])]
    i_tx = tx[np.isin(seg[tx], seg[rx])]  # both sorted by segment id: aligned
    ok = t[i_tx] >= t[i_rx]
    i_rx, i_tx = i_rx[ok], i_tx[ok]
    (node, nodes), (netns, names), (ifname, ifnames) = (
        _cats(ev, c) for c in ("node", "netns", "ifname")
    )

    def label(row: list[int]) -> dict[str, Any]:
        n = nodes[row[0]]
        return {
            "node": n,
            "path": f"{_iface(n, names[row[1]], ifnames[row[2]])} -> "
            f"{_iface(n, names[row[3]], ifnames[row[4]])}",
        }

    return _by_codes(
        [node[i_rx], netns[i_rx], ifname[i_rx], netns[i_tx], ifname[i_tx]], t[i_tx] - t[i_rx], label
    )


def hop_times(packets: Packets) -> list[Distribution]:
    links = packets.links
    if not len(links):
        return []
    frame = pd.DataFrame(
        {
            "from": links["tx_node"].astype(str).to_numpy(),
            "to": links["rx_node"].astype(str).to_numpy(),
            "ns": links["delay_ns"].to_numpy(),
            "amb": links["ambiguous"].to_numpy(),
        }
    )
    frame = frame[(frame["from"] != frame["to"]) & ~frame["amb"]]
    out = []
    for (a, b), group in frame.groupby(["from", "to"], sort=True):
        ua = packets.clocks.uncertainty(a)
        ub = packets.clocks.uncertainty(b)
        unc = None if ua is None or ub is None else ua + ub
        note = (
            f"clock uncertainty +/- {fmt_duration(unc)}"
            if unc is not None
            else "clock offset unknown"
        )
        out.append(describe(group["ns"].to_numpy(), {"from": a, "to": b}, note))
    return out


def kernel_histograms(node_meta: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """In-kernel NAT hook histograms from each node's metadata (mode "hist" or alongside events)."""
    out = []
    for node, meta in node_meta.items():
        for h in (meta.get("histograms") or {}).get("nat_hook_ns") or []:
            out.append(
                {
                    "node": h.get("node", node),
                    "hook": h.get("hook", ""),
                    "first": bool(h.get("first", False)),
                    "buckets": h.get("buckets", []),
                }
            )
    return out


@dataclass
class LatencyReport:
    nat: list[Distribution]
    traversal: list[Distribution]
    hops: list[Distribution]
    kernel: list[dict[str, Any]]
    clock_lines: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "percentile_method": "linear interpolation (numpy default)",
            "nat_hook": [d.to_dict() for d in self.nat],
            "node_traversal": [d.to_dict() for d in self.traversal],
            "cross_node_hop": [d.to_dict() for d in self.hops],
            "kernel_histograms": self.kernel,
            "clocks": self.clock_lines,
        }


def analyze(packets: Packets) -> LatencyReport:
    return LatencyReport(
        nat=nat_times(packets),
        traversal=traversal_times(packets),
        hops=hop_times(packets),
        kernel=kernel_histograms(packets.node_meta),
        clock_lines=packets.clocks.summary(),
    )


# ---------------------------------------------------------------- text


def table(rows: Sequence[Distribution], label_columns: Sequence[str]) -> str:
    if not rows:
        return "  (none)"
    heads = [*label_columns, "count", "p50", "p90", "p99", "p99.9", "max"]
    body = []
    for d in rows:
        body.append(
            [str(d.labels.get(c, "")) for c in label_columns]
            + [str(d.count)]
            + [fmt_duration(d.percentiles[k]) for k in ("50", "90", "99", "99.9")]
            + [fmt_duration(d.max)]
        )
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(heads)]
    n_labels = len(label_columns)

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(
            c.ljust(w) if i < n_labels else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(heads)] + [line(r) for r in body]
    notes = [f"  {d.name}: {d.note}" for d in rows if d.note]
    return "\n".join(out + notes)


def format_text(report: LatencyReport, histograms: bool = True) -> str:
    parts = [
        "NAT hook time (nat_ns), per node, hook, kind; first packet of a connection apart",
        table(report.nat, ["node", "hook", "kind", "first"]),
    ]
    if histograms:
        for d in report.nat:
            parts.append(f"\n  {d.name}:")
            parts.append(format_buckets(log2_rows(d.log2)))
    parts += [
        "",
        "Node traversal (first rx -> last tx of a packet on one node)",
        table(report.traversal, ["node", "path"]),
    ]
    parts += [
        "",
        "Cross-node hop (tx on one node -> rx on the next, clocks corrected)",
        table(report.hops, ["from", "to"]),
    ]
    if report.kernel:
        parts += ["", "In-kernel NAT hook histograms (capture metadata)"]
        for h in report.kernel:
            parts.append(f"\n  {h['node']} {h['hook']} {'first' if h['first'] else 'established'}:")
            parts.append(format_buckets(fill_bucket_gaps(h["buckets"])))
    if report.clock_lines and len(report.clock_lines) > 1:
        parts += ["", "Clocks:"] + [f"  {line}" for line in report.clock_lines]
    return "\n".join(parts)
