"""The capture's in-kernel counters and NAT histograms, read from the BPF
maps "stats" and "nat_hist" (per-CPU arrays, summed over CPUs)."""

from __future__ import annotations

from typing import Any

from tracer.capfile import HOOKS
from tracer.capture import abi
from tracer.histograms import log2_buckets


def read_kernel_counters(prog: Any) -> list[int]:
    """Every counter of the "stats" map, indexed by abi.STAT_*."""
    table = prog.table("stats")
    return [int(sum(table.getvalue(table.Key(i)))) for i in range(abi.STAT_NR)]


def stats_document(counts: list[int], *, events_read: int, events: int,
                   filter_overflow_user: int) -> dict[str, Any]:
    """The counters as the metadata and the summary name them. events_read:
    records the reader took from the ring; events: events kept (written, or
    read when nothing is written); filter_overflow_user: Service keys that
    did not fit in the in-kernel filter map."""
    return {
        "events_kernel": counts[abi.STAT_EVENTS],
        "events_read": events_read,
        "events": events,
        "lost": counts[abi.STAT_LOST],
        "lost_by_probe": {p: counts[abi.STAT_LOST_BASE + i + 1] for i, p in enumerate(abi.POINTS)},
        "filter_overflow": counts[abi.STAT_FLOW_OVERFLOW] + filter_overflow_user,
        "ipv6_skipped": counts[abi.STAT_IPV6_SKIPPED],
        "non_ip_skipped": counts[abi.STAT_NON_IP],
        "parse_errors": counts[abi.STAT_PARSE_ERROR],
        "nat_unpaired": counts[abi.STAT_NAT_UNPAIRED],
        "nat_untimed": counts[abi.STAT_NAT_UNTIMED],
        "icmp_unquoted": counts[abi.STAT_ICMP_UNQUOTED],
    }


def read_nat_histograms(prog: Any) -> list[dict[str, Any]]:
    """The non-empty NAT hook-time histograms, one per (hook, first packet)."""
    table = prog.table("nat_hist")
    out = []
    for h in range(abi.HIST_HOOKS):
        for first in (0, 1):
            base = (h * 2 + first) * abi.HIST_SLOTS
            slots = [int(sum(table.getvalue(table.Key(base + s)))) for s in range(abi.HIST_SLOTS)]
            if any(slots):
                out.append({"hook": HOOKS[h], "first": bool(first), "buckets": log2_buckets(slots)})
    return out
