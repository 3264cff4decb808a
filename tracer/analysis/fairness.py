"""Does the Service spread connections the way kube-proxy's rules promise?

What is counted: one DNAT decision per connection, i.e. nat events with
``nat_kind == "dnat"`` and ``nat_first`` (the packet that walked the
KUBE-SVC/KUBE-SEP rules). Later packets reuse the conntrack binding and are
never counted, so a chatty connection weighs as much as a quiet one.

Per endpoint: observed connections against the promised share (from
``meta["service"]``, era by era when ``service_history`` shows the endpoint
set changing), a chi-square goodness-of-fit p-value, a Wilson confidence
interval on each observed share, the largest deviation, and Jain's fairness
index of observed/promised (1 = exactly as promised, 1/n = one endpoint took
everything). The same per client (pre-NAT source address) and per time window.
With session affinity (ClientIP) the endpoint table and windows count each
client's first connections only, and the rest are checked for stickiness
(tracer.analysis.affinity).

A UDP port's DNAT decisions are flows (conntrack's entry per client tuple):
``unit`` (unit_of) says what was counted, ``connections``, ``flows`` or
``connections and flows``, in the JSON and the text.

Requests per connection (tracer.analysis.request_counts) expose keep-alive
pinning: one client's connection carrying thousands of requests to one pod
while connection counts look fair. Which connections are counted and which
endpoints each was promised: tracer.analysis.promises; on which node each
endpoint lives: tracer.analysis.endpoint_placement; the report as text:
tracer.analysis.fairness_text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracer.analysis import affinity
from tracer.analysis.addresses import IPV6_BASE, int_to_ip
from tracer.analysis.affinity import AffinityReport
from tracer.analysis.endpoint_placement import endpoint_nodes
from tracer.analysis.events import EventSet
from tracer.analysis.packets import Packets
from tracer.analysis.promises import PromisedConnections, dnat_decisions, promise_connections
from tracer.analysis.request_counts import requests_per_connection
from tracer.analysis.service import service_name
from tracer.analysis.source_preservation import SourceRewrite, rewrite_notes, rewritten_sources
from tracer.analysis.stats import ChiSquare, chi_square_gof, jain_index, wilson_interval


@dataclass
class EndpointShare:
    endpoint: str
    node: str | None
    connections: int
    observed_share: float
    promised_share: float
    expected: float
    ci_low: float
    ci_high: float
    requests: int = 0

    @property
    def deviation(self) -> float:
        return self.observed_share - self.promised_share

    @property
    def significant(self) -> bool:
        return not (self.ci_low <= self.promised_share <= self.ci_high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "node": self.node,
            "connections": self.connections,
            "observed_share": self.observed_share,
            "promised_share": self.promised_share,
            "expected": self.expected,
            "ci": [self.ci_low, self.ci_high],
            "deviation": self.deviation,
            "outside_ci": self.significant,
            "requests": self.requests,
            "requests_per_connection": self.requests / self.connections
            if self.connections
            else None,
        }


@dataclass
class GroupFairness:
    """Fairness of one set of connections (all, one client, one time window)."""

    label: str
    connections: int
    endpoints: list[EndpointShare]
    chi2: ChiSquare
    jain: float

    @property
    def largest(self) -> EndpointShare | None:
        return max(self.endpoints, key=lambda e: abs(e.deviation), default=None)

    def to_dict(self) -> dict[str, Any]:
        largest = self.largest
        return {
            "label": self.label,
            "connections": self.connections,
            "endpoints": [e.to_dict() for e in self.endpoints],
            "chi_square": self.chi2.to_dict(),
            "jain_index": self.jain,
            "largest_deviation": None
            if largest is None
            else {
                "endpoint": largest.endpoint,
                "deviation": largest.deviation,
                "ci": [
                    largest.ci_low - largest.promised_share,
                    largest.ci_high - largest.promised_share,
                ],
            },
        }


@dataclass
class FairnessReport:
    service: str
    confidence: float
    overall: GroupFairness
    per_client: list[GroupFairness]
    windows: list[GroupFairness]
    window_ns: int
    window_start_ns: int
    requests: dict[str, Any]
    excluded_dnat: int
    notes: list[str] = field(default_factory=list)
    affinity: AffinityReport | None = None  # session affinity: stickiness
    # Connections whose source kube-proxy keeps (externalTrafficPolicy Local) but a SNAT rewrote.
    source_rewrites: list[SourceRewrite] = field(default_factory=list)
    unit: str = "connections"  # what a DNAT decision is here: see unit_of
    # A dual-stack Service with connections of both families: one group per
    # family (IPv4, IPv6), each against its own port's promise; else empty.
    per_family: list[GroupFairness] = field(default_factory=list)


    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "confidence": self.confidence,
            "unit": self.unit,
            "counted": "one DNAT decision per connection (nat_kind dnat, nat_first)",
            "overall": self.overall.to_dict(),
            "per_family": [g.to_dict() for g in self.per_family],
            "per_client": [g.to_dict() for g in self.per_client],
            "source_rewrites": [w.to_dict() for w in self.source_rewrites],
            "window_ns": self.window_ns,
            "window_start_ns": self.window_start_ns,
            "windows": [g.to_dict() for g in self.windows],
            "requests": self.requests,
            "excluded_dnat": self.excluded_dnat,
            "notes": self.notes,
            "affinity": self.affinity.to_dict() if self.affinity else None,
        }


def unit_of(protocols: np.ndarray) -> str:
    """A DNAT decision is a TCP connection's or a UDP flow's (conntrack's
    entry for a client tuple: a DNS query from a fresh port is one):
    ``connections``, ``flows``, or ``connections and flows`` for both."""
    kinds = {"flows" if p == 17 else "connections" for p in np.unique(protocols).tolist()}
    return " and ".join(sorted(kinds)) if kinds else "connections"


def _nice_window(span_ns: int, connections: int, min_per_window: int = 30, most: int = 10) -> int:
    """A round window length (1, 2 or 5 x 10^k ns, >= 1 ms) giving at most
    `most` windows and, on average, at least `min_per_window` connections in
    each: a chi-square of a handful of connections says nothing."""
    target = max(1, min(most, connections // min_per_window))
    raw = max(span_ns / target, 1_000_000)
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * exp >= raw:
            return int(m * exp)
    return int(10 * exp)


def _group(
    label: str,
    observed: np.ndarray,
    expected: np.ndarray,
    keys: list[str],
    nodes: list[str | None],
    confidence: float,
    requests: np.ndarray | None = None,
) -> GroupFairness:
    n = int(observed.sum())
    total_expected = float(expected.sum())
    shares = []
    for i, key in enumerate(keys):
        lo, hi = wilson_interval(observed[i], n, confidence)
        shares.append(
            EndpointShare(
                endpoint=key,
                node=nodes[i],
                connections=int(observed[i]),
                observed_share=observed[i] / n if n else float("nan"),
                promised_share=expected[i] / total_expected if total_expected else float("nan"),
                expected=float(expected[i]),
                ci_low=lo,
                ci_high=hi,
                requests=int(requests[i]) if requests is not None else 0,
            )
        )
    chi2 = chi_square_gof(observed, expected)
    promised = expected > 0
    jain = (
        jain_index(observed[promised] / expected[promised])
        if promised.any() and n
        else float("nan")
    )
    return GroupFairness(label, n, shares, chi2, jain)


def _per_client(
    p: PromisedConnections, nodes: list[str | None], confidence: float, requests: np.ndarray
) -> list[GroupFairness]:
    """One group per client (pre-NAT source), most connections first."""
    k = len(p.keys)
    per_client = []
    src = p.conns["src"].to_numpy()
    for client in np.unique(src):
        sel = src == client
        per_client.append(
            _group(
                int_to_ip(int(client)),
                np.bincount(p.endpoint[sel], minlength=k).astype(float),
                p.shares[sel].sum(axis=0),
                p.keys,
                nodes,
                confidence,
                np.bincount(p.endpoint[sel], weights=requests[sel], minlength=k),
            )
        )
    per_client.sort(key=lambda g: -g.connections)
    return per_client


def _per_family(
    p: PromisedConnections, nodes: list[str | None], confidence: float, per_conn: np.ndarray
) -> list[GroupFairness]:
    """IPv4 and IPv6 apart, when both have connections: a dual-stack
    Service's families are separate promises (a port each, separate
    iptables and ip6tables rules), so each is judged over its own endpoints."""
    six = p.conns["src"].to_numpy() >= IPV6_BASE
    if six.all() or not six.any():
        return []
    k = len(p.keys)
    out = []
    for label, sel in (("IPv4", ~six), ("IPv6", six)):
        # An IPv6 endpoint is written [addr]:port (tracer.analysis.addresses.endpoint).
        cols = [i for i, key in enumerate(p.keys) if key.startswith("[") == (label == "IPv6")]
        observed = np.bincount(p.endpoint[sel], minlength=k).astype(float)[cols]
        expected = p.shares[sel].sum(axis=0)[cols]
        requests = np.bincount(p.endpoint[sel], weights=per_conn[sel], minlength=k)[cols]
        out.append(_group(label, observed, expected, [p.keys[i] for i in cols],
                          [nodes[i] for i in cols], confidence, requests))
    return out


def _time_windows(
    p: PromisedConnections, nodes: list[str | None], confidence: float, window_ns: int | None
) -> tuple[list[GroupFairness], int, int]:
    """One group per time window (a round length unless given): the groups,
    the window length and the first connection's time."""
    k = len(p.keys)
    t = p.conns["t"].to_numpy()
    windows = []
    start = int(t.min()) if len(t) else 0
    if window_ns is None:
        window_ns = _nice_window(int(t.max() - t.min()) if len(t) else 0, len(t))
    if len(t):
        w = (t - start) // window_ns
        for wi in np.unique(w):
            sel = w == wi
            windows.append(
                _group(
                    f"+{int(wi) * window_ns / 1e9:g}s",
                    np.bincount(p.endpoint[sel], minlength=k).astype(float),
                    p.shares[sel].sum(axis=0),
                    p.keys,
                    nodes,
                    confidence,
                )
            )
    return windows, int(window_ns), start


def analyze(
    source: Packets | EventSet, *, window_ns: int | None = None, confidence: float = 0.95
) -> FairnessReport:
    ev = source.events
    node_meta = source.node_meta
    services = [m.get("service") for m in node_meta.values() if m.get("service")]
    every = promise_connections(dnat_decisions(ev), node_meta)
    requests = requests_per_connection(ev, every.conns)
    # With session affinity only each client's first connections are draws.
    p, per_conn, sticky = affinity.judged(every, node_meta, requests["per_conn"])
    k = len(p.keys)
    observed = np.bincount(p.endpoint, minlength=k).astype(float)
    expected = p.shares.sum(axis=0)
    req_by_ep = np.bincount(p.endpoint, weights=per_conn, minlength=k) if len(p.endpoint) else np.zeros(k)
    where = endpoint_nodes(ev, node_meta)
    nodes = [where.get(x) for x in p.keys]
    windows, window_ns, start = _time_windows(p, nodes, confidence, window_ns)
    rewrites = rewritten_sources(ev, p.conns, node_meta)
    return FairnessReport(
        service=service_name(services[0] if services else None),
        confidence=confidence,
        overall=_group("all", observed, expected, p.keys, nodes, confidence, req_by_ep),
        per_client=_per_client(every, nodes, confidence, requests["per_conn"]),
        windows=windows,
        window_ns=window_ns,
        window_start_ns=start,
        requests=requests["summary"],
        excluded_dnat=p.excluded,
        notes=p.notes + rewrite_notes(rewrites),
        affinity=sticky,
        source_rewrites=rewrites,
        unit=unit_of(every.conns["proto"].to_numpy()),
        per_family=_per_family(p, nodes, confidence, per_conn) if len(p.endpoint) else [],
    )
