"""What a capture saw, accumulated batch by batch in constant memory, and the
summary printed when it ends. Pure: no BCC, no kernel."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tracer.capfile import HOOKS
from tracer.histograms import StreamingHistogram, fill_bucket_gaps, format_buckets

_NP_TYPES = {pa.int32(): np.int32, pa.uint8(): np.uint8, pa.uint16(): np.uint16,
             pa.uint32(): np.uint32, pa.int64(): np.int64, pa.uint64(): np.uint64}


def _np(arr: pa.Array) -> np.ndarray:
    """A numpy view of a null-free numeric or bool Arrow array. (Array.to_numpy
    would import pandas, ~0.15 s, on the capture path.)"""
    if arr.null_count:
        raise ValueError("the capture schema has no nulls")
    buf = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        bits = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")
        return bits[arr.offset : arr.offset + len(arr)].view(bool)
    dtype = np.dtype(_NP_TYPES[arr.type])
    return np.frombuffer(buf, dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def _codes(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, list[str]]:
    """(dictionary indices, dictionary values) of a string column: the
    summary counts small integers, never a million Python strings."""
    col = batch.column(name)
    if not isinstance(col, pa.DictionaryArray):
        col = col.dictionary_encode()
    return _np(col.indices), col.dictionary.to_pylist()


def _count(counter: Counter, codes: np.ndarray, names: list[str]) -> None:
    for i, c in enumerate(np.bincount(codes, minlength=len(names)).tolist()):
        if c:
            counter[names[i]] += c


def _mask(codes: np.ndarray, names: list[str], wanted: str) -> np.ndarray:
    hits = [i for i, nm in enumerate(names) if nm == wanted]
    return np.isin(codes, hits) if len(hits) != 1 else codes == hits[0]


@dataclass
class CaptureSummary:
    service: dict[str, Any] | None = None
    events: int = 0
    by_probe: Counter = field(default_factory=Counter)
    nat_by_kind: Counter = field(default_factory=Counter)
    nat_first_by_kind: Counter = field(default_factory=Counter)
    new_connections: Counter = field(default_factory=Counter)  # "ip:port" -> DNAT choices
    drops_by_reason: Counter = field(default_factory=Counter)
    latency: dict[tuple[str, bool], StreamingHistogram] = field(default_factory=dict)

    def add(self, table: pa.Table | pa.RecordBatch) -> None:
        batches = [table] if isinstance(table, pa.RecordBatch) else table.to_batches()
        for batch in batches:
            if batch.num_rows:
                self._add(batch)

    def _add(self, b: pa.RecordBatch) -> None:
        self.events += b.num_rows
        probe, probe_names = _codes(b, "probe")
        _count(self.by_probe, probe, probe_names)
        nat = _mask(probe, probe_names, "nat")
        if nat.any():
            kind, kind_names = _codes(b, "nat_kind")
            kind = kind[nat]
            first = _np(b.column("nat_first"))[nat]
            hook, hook_names = _codes(b, "hook")
            hook = hook[nat]
            ns = _np(b.column("nat_ns"))[nat]
            timed = ns > 0  # 0: the hook time was not measured (bpf/nat.bpf.h)
            _count(self.nat_by_kind, kind, kind_names)
            if first.any():
                _count(self.nat_first_by_kind, kind[first], kind_names)
            chosen = _mask(kind, kind_names, "dnat") & first
            if chosen.any():  # first packets only: few, fine to format one by one
                daddr, daddr_names = _codes(b, "nat_daddr")
                dport = _np(b.column("nat_dport"))[nat][chosen]
                for a, p in zip(daddr[nat][chosen].tolist(), dport.tolist(), strict=True):
                    self.new_connections[f"{daddr_names[a]}:{p}"] += 1
            for h in np.unique(hook).tolist():
                for f in (False, True):
                    sel = (hook == h) & (first == f) & timed
                    if sel.any():
                        key = (str(hook_names[h]), f)
                        self.latency.setdefault(key, StreamingHistogram()).add(ns[sel])
        drop = _mask(probe, probe_names, "drop")
        if drop.any():
            reasons, reason_names = _codes(b, "drop_reason")
            _count(self.drops_by_reason, reasons[drop], reason_names)

    def expected_shares(self) -> dict[str, tuple[float, str]]:
        """endpoint "ip:port" -> (share kube-proxy's rules promise, KUBE-SEP chain)."""
        out: dict[str, tuple[float, str]] = {}
        for port in (self.service or {}).get("ports", []):
            for ep in port.get("endpoints", []):
                out[f"{ep['ip']}:{ep['port']}"] = (float(ep.get("share", 0.0)), ep.get("chain", ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "by_probe": {str(k): int(v) for k, v in self.by_probe.items()},
            "nat_by_kind": {str(k): int(v) for k, v in self.nat_by_kind.items()},
            "nat_first_by_kind": {str(k): int(v) for k, v in self.nat_first_by_kind.items()},
            "new_connections": {str(k): int(v) for k, v in self.new_connections.items()},
            "drops_by_reason": {str(k): int(v) for k, v in self.drops_by_reason.items()},
            "nat_latency_ns": [
                {"hook": h, "first": f, **hist.summary()}
                for (h, f), hist in sorted(self.latency.items(), key=_hook_order)
            ],
        }


def _hook_order(item: tuple[tuple[str, bool], StreamingHistogram]) -> tuple[int, bool]:
    (hook, first), _ = item
    return (HOOKS.index(hook) if hook in HOOKS else len(HOOKS), first)


def render_summary(
    summary: CaptureSummary,
    *,
    title: str,
    stats: dict[str, Any],
    kernel_histograms: list[dict[str, Any]] | None = None,
    show_kernel_histograms: bool = False,
) -> str:
    lines = [title]
    probes = ", ".join(f"{p} {summary.by_probe.get(p, 0)}" for p in ("rx", "nat", "tx", "drop"))
    lines.append(f"  events: {summary.events} ({probes})")
    lost = int(stats.get("lost", 0))
    lost_line = f"  lost events: {lost}"
    if lost:
        per = ", ".join(f"{k} {v}" for k, v in stats.get("lost_by_probe", {}).items() if v)
        lost_line += f"  <-- the ring buffer was full ({per}); enlarge it with --ringbuf-mb"
    lines.append(lost_line)
    skipped = {k: int(stats.get(k, 0)) for k in ("ipv6_skipped", "non_ip_skipped", "parse_errors",
                                                   "filter_overflow", "nat_unpaired")}
    if any(skipped.values()):
        lines.append("  not traced: " + ", ".join(f"{k} {v}" for k, v in skipped.items() if v))
    untimed = int(stats.get("nat_untimed", 0))
    if untimed:
        lines.append(f"  NAT hook time not measured: {untimed} packet(s) (their rewrites are "
                     "recorded; the exit probe found no entry on its CPU)")
    if summary.nat_by_kind:
        kinds = ", ".join(
            f"{k} {summary.nat_by_kind[k]} (first {summary.nat_first_by_kind.get(k, 0)})"
            for k in ("dnat", "snat", "rev_dnat", "rev_snat") if k in summary.nat_by_kind
        )
        lines.append(f"  NAT rewrites: {kinds}")
    shares = summary.expected_shares()
    if summary.new_connections or shares:
        total = sum(summary.new_connections.values())
        lines.append("  new connections per endpoint (one DNAT choice each):")
        for ep in sorted(set(shares) | set(summary.new_connections)):
            count = summary.new_connections.get(ep, 0)
            share, chain = shares.get(ep, (float("nan"), "(not in the rules)"))
            seen = 100.0 * count / total if total else 0.0
            lines.append(
                f"    {ep:<22} {chain:<26} {count:>7}  {seen:5.1f}%  (rules promise {100 * share:.1f}%)"
            )
    if summary.latency:
        lines.append("  NAT hook latency, ns (from events):")
        lines.append(f"    {'hook':<12} {'packet':<12} {'count':>8} {'p50':>8} {'p90':>8} "
                     f"{'p99':>8} {'p99.9':>8} {'max':>9}")
        for row in summary.to_dict()["nat_latency_ns"]:
            lines.append(
                f"    {row['hook']:<12} {'first' if row['first'] else 'established':<12} "
                f"{row['count']:>8} {row['p50']:>8.0f} {row['p90']:>8.0f} {row['p99']:>8.0f} "
                f"{row['p99.9']:>8.0f} {row['max']:>9.0f}"
            )
    if show_kernel_histograms and kernel_histograms:
        for h in kernel_histograms:
            if sum(c for _, _, c in h["buckets"]) == 0:
                continue
            kind = "first packet (rule walk)" if h["first"] else "established"
            lines.append(f"\n  NAT hook {h['hook']}, {kind}: in-kernel histogram")
            lines.append(format_buckets(fill_bucket_gaps(h["buckets"]), "nsecs"))
    return "\n".join(lines)


def dropped_line(dropped: dict[str, Any]) -> str:
    """The summary's line for what --keep / --max-size removed (metadata "dropped")."""
    return (f"dropped by {' and '.join(dropped['reasons'])}: {dropped['events']} events in "
            f"{dropped['files']} oldest file(s), {dropped['bytes']} bytes "
            f"(parts {dropped['first_part']}-{dropped['last_part']}); the rest is intact")
