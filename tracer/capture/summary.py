"""What a capture saw, accumulated batch by batch in constant memory, and the
summary printed when it ends. Pure: no BCC, no kernel."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tracer.capture_schema import HOOKS
from tracer.histograms import StreamingHistogram, format_log2_hist


def _strings(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if isinstance(col, pa.DictionaryArray):
        return np.asarray(col.dictionary.to_pylist(), dtype=object)[col.indices.to_numpy()]
    return np.asarray(col.to_pylist(), dtype=object)


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

    def add(self, table: pa.Table) -> None:
        n = table.num_rows
        if n == 0:
            return
        self.events += n
        probe = _strings(table, "probe")
        self.by_probe.update(dict(zip(*np.unique(probe, return_counts=True), strict=True)))
        nat = probe == "nat"
        if nat.any():
            sub = table.filter(pa.array(nat))
            kind = _strings(sub, "nat_kind")
            first = sub.column("nat_first").to_numpy(zero_copy_only=False)
            hook = _strings(sub, "hook")
            ns = sub.column("nat_ns").to_numpy()
            self.nat_by_kind.update(dict(zip(*np.unique(kind, return_counts=True), strict=True)))
            if first.any():
                self.nat_first_by_kind.update(
                    dict(zip(*np.unique(kind[first], return_counts=True), strict=True))
                )
            chosen = (kind == "dnat") & first
            if chosen.any():
                daddr = _strings(sub, "nat_daddr")[chosen]
                dport = sub.column("nat_dport").to_numpy()[chosen]
                for key, count in Counter(f"{a}:{p}" for a, p in zip(daddr, dport, strict=True)).items():
                    self.new_connections[key] += count
            for h in np.unique(hook):
                for f in (False, True):
                    sel = (hook == h) & (first == f)
                    if sel.any():
                        self.latency.setdefault((str(h), f), StreamingHistogram()).add(ns[sel])
        drop = probe == "drop"
        if drop.any():
            reasons = _strings(table.filter(pa.array(drop)), "drop_reason")
            self.drops_by_reason.update(dict(zip(*np.unique(reasons, return_counts=True), strict=True)))

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
            lines.append(format_log2_hist([tuple(b) for b in h["buckets"]], "nsecs"))
    return "\n".join(lines)
