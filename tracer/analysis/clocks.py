"""Node clock offsets, estimated from the traffic the nodes captured.

Each node stamps events with its own clock (``time_ns``: CLOCK_MONOTONIC plus
that node's idea of UTC). Let ``theta_N`` be how far node N's ``time_ns`` runs
ahead of the reference node R's. A packet sent by R at ``tx`` (R's clock) and
received by N at ``rx`` (N's clock) took ``(rx - theta_N) - tx > 0``, so

    theta_N < rx - tx                 for every packet R -> N   (upper bound)
    theta_N > tx - rx                 for every packet N -> R   (lower bound)

as in NTP. The tightest bounds come from the fastest packet each way; the
estimate is the middle of the feasible interval and the uncertainty its half
width, so with one-way delays of tens of microseconds the offset is known to
tens of microseconds or better, and *any* value in the interval orders every
matched packet causally. When only one direction has traffic, the bound is
intersected with what the captures' own clock metadata claims
(``clock.uncertainty_ns``). Nodes without direct traffic to the reference are
reached through other nodes, adding uncertainties along the way.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class PairBounds:
    """theta_b - theta_a lies in [lower_ns, upper_ns] (either may be unknown)."""

    a: str
    b: str
    lower_ns: float | None
    upper_ns: float | None
    packets_ab: int
    packets_ba: int


@dataclass
class NodeClock:
    node: str
    offset_ns: float  # this node's time_ns minus the reference's, estimated
    uncertainty_ns: float | None  # half-width of the feasible interval; None = unknown
    method: str  # reference | traffic | traffic+metadata | metadata | none
    lower_ns: float | None = None
    upper_ns: float | None = None
    packets_to: int = 0  # crossing packets reference -> node used for the bound
    packets_from: int = 0  # crossing packets node -> reference
    via: str | None = None  # node the estimate was chained through, if not direct
    consistent: bool = True  # False: the bounds contradict each other (see method)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class ClockSolution:
    reference: str
    nodes: dict[str, NodeClock]
    pairs: list[PairBounds]

    def offset(self, node: str) -> float:
        clock = self.nodes.get(node)
        return clock.offset_ns if clock else 0.0

    def offsets_for(self, categories) -> np.ndarray:
        """Whole-ns offsets indexed by categorical code (trailing 0 for code -1).
        Integers on purpose: UTC ns since the epoch need 61 bits, and float64
        arithmetic on them would round to 256 ns."""
        return np.array([round(self.offset(str(c))) for c in categories] + [0], dtype=np.int64)

    def uncertainty(self, node: str) -> float | None:
        clock = self.nodes.get(node)
        return clock.uncertainty_ns if clock else None

    def summary(self) -> list[str]:
        lines = []
        for clock in self.nodes.values():
            if clock.method == "reference":
                lines.append(f"{clock.node}: reference clock")
                continue
            unc = (
                "unknown"
                if clock.uncertainty_ns is None
                else f"{clock.uncertainty_ns / 1e3:.1f} us"
            )
            where = f" via {clock.via}" if clock.via else ""
            warn = "" if clock.consistent else "  (bounds inconsistent!)"
            lines.append(
                f"{clock.node}: offset {clock.offset_ns / 1e3:+.1f} us +/- {unc} "
                f"({clock.method}{where}; "
                f"{clock.packets_to} packets to it, {clock.packets_from} from it){warn}"
            )
        return lines


def pair_bounds(pairs: pd.DataFrame) -> dict[tuple[str, str], PairBounds]:
    """Bounds per unordered node pair from matched crossings
    (columns tx_node, rx_node, tx_t, rx_t)."""
    out: dict[tuple[str, str], PairBounds] = {}
    if not len(pairs):
        return out
    delay = pairs["rx_t"].to_numpy(np.int64) - pairs["tx_t"].to_numpy(np.int64)
    frame = pd.DataFrame(
        {
            "tx": pairs["tx_node"].astype(str).to_numpy(),
            "rx": pairs["rx_node"].astype(str).to_numpy(),
            "d": delay,
        }
    )
    frame = frame[frame["tx"] != frame["rx"]]
    grouped = frame.groupby(["tx", "rx"], sort=True)["d"].agg(["min", "size"])
    for (tx, rx), row in grouped.iterrows():
        a, b = sorted((tx, rx))
        bounds = out.setdefault((a, b), PairBounds(a, b, None, None, 0, 0))
        if (tx, rx) == (a, b):  # a -> b: theta_b - theta_a < min(rx - tx)
            bounds.upper_ns, bounds.packets_ab = float(row["min"]), int(row["size"])
        else:  # b -> a: theta_a - theta_b < min  =>  theta_b - theta_a > -min
            bounds.lower_ns, bounds.packets_ba = -float(row["min"]), int(row["size"])
    return out


def _meta_uncertainty(meta: dict[str, Any] | None) -> float | None:
    clock = (meta or {}).get("clock") or {}
    value = clock.get("uncertainty_ns")
    return float(value) if value is not None else None


def _edge_estimate(
    bounds: PairBounds, prior_ns: float | None
) -> tuple[float, float | None, str, bool, float | None, float | None]:
    """(estimate, half-width, method, consistent, lower, upper) of theta_b - theta_a."""
    lower, upper = bounds.lower_ns, bounds.upper_ns
    if lower is not None and upper is not None:
        mid, half = (lower + upper) / 2, (upper - lower) / 2
        return mid, abs(half), "traffic", half >= 0, lower, upper
    # One direction only: intersect with the metadata's claim |theta| <= prior.
    if prior_ns is None:
        bound = lower if lower is not None else upper
        return float(bound), None, "traffic (one direction, no metadata bound)", True, lower, upper
    lo = -prior_ns if lower is None else max(lower, -prior_ns)
    hi = prior_ns if upper is None else min(upper, prior_ns)
    if lo > hi:  # the traffic says the metadata's clock claim is wrong
        bound = lower if lower is not None else upper
        return (
            float(bound),
            None,
            "traffic (one direction; contradicts metadata)",
            False,
            lower,
            upper,
        )
    return (lo + hi) / 2, (hi - lo) / 2, "traffic+metadata", True, lo, hi


# (other node, offset estimate other - this, half-width, method, consistent,
#  bounds used, whether the bounds are this -> other)
Edge = tuple[str, float, float | None, str, bool, PairBounds, bool]


def _edges(
    bounds: dict[tuple[str, str], PairBounds], prior: dict[str, float | None]
) -> dict[str, list[Edge]]:
    """Each node's edge estimates to the nodes it exchanged packets with, in
    both orientations."""
    edges: dict[str, list[Edge]] = {n: [] for n in prior}
    for (a, b), pb in bounds.items():
        if a not in edges or b not in edges:
            continue
        pa_, pb_ = prior.get(a), prior.get(b)
        p = None if pa_ is None or pb_ is None else pa_ + pb_
        est, half, method, ok, lo, hi = _edge_estimate(pb, p)
        # The interval actually used (traffic bounds, narrowed by metadata when one-sided).
        used = PairBounds(a, b, lo, hi, pb.packets_ab, pb.packets_ba)
        edges[a].append((b, est, half, method, ok, used, True))
        edges[b].append((a, -est, half, method, ok, used, False))
    return edges


def _through(base: NodeClock, reference: str, edge: Edge) -> NodeClock:
    """The clock of the edge's other node, reached from base's node."""
    other, est, half, method, ok, pb, forward = edge
    total_unc = None if half is None or base.uncertainty_ns is None else base.uncertainty_ns + half
    lower, upper = (
        (pb.lower_ns, pb.upper_ns)
        if forward
        else (
            None if pb.upper_ns is None else -pb.upper_ns,
            None if pb.lower_ns is None else -pb.lower_ns,
        )
    )
    to_count, from_count = (
        (pb.packets_ab, pb.packets_ba) if forward else (pb.packets_ba, pb.packets_ab)
    )
    return NodeClock(
        node=other,
        offset_ns=base.offset_ns + est,
        uncertainty_ns=total_unc,
        method=method,
        lower_ns=None if lower is None else base.offset_ns + lower,
        upper_ns=None if upper is None else base.offset_ns + upper,
        packets_to=to_count,
        packets_from=from_count,
        via=None if base.node == reference else base.node,
        consistent=ok and base.consistent,
    )


def _least_uncertain_paths(edges: dict[str, list[Edge]], reference: str) -> dict[str, NodeClock]:
    """Dijkstra from the reference on uncertainty (unknown counts as very
    large): the clocks of the nodes crossing traffic reaches."""
    result: dict[str, NodeClock] = {reference: NodeClock(reference, 0.0, 0.0, "reference")}
    best: dict[str, float] = {reference: 0.0}
    heap: list[tuple[float, str]] = [(0.0, reference)]
    while heap:
        cost, node = heapq.heappop(heap)
        if cost > best.get(node, math.inf):
            continue
        base = result[node]
        for edge in edges[node]:
            other, half = edge[0], edge[2]
            new_cost = cost + (1e18 if half is None else half)
            if new_cost >= best.get(other, math.inf):
                continue
            best[other] = new_cost
            result[other] = _through(base, reference, edge)
            heapq.heappush(heap, (new_cost, other))
    return result


def solve(
    pairs: pd.DataFrame,
    node_meta: dict[str, dict[str, Any]],
    reference: str | None = None,
) -> ClockSolution:
    """Offsets of every node relative to the reference (default: the first node)."""
    nodes = list(node_meta)
    if not nodes:
        raise ValueError("no nodes")
    reference = reference or nodes[0]
    bounds = pair_bounds(pairs)
    prior = {n: _meta_uncertainty(node_meta.get(n)) for n in nodes}
    result = _least_uncertain_paths(_edges(bounds, prior), reference)
    for node in nodes:
        if node in result:
            continue
        # No crossing traffic: trust the captures' UTC clocks, as far as they claim.
        p = prior.get(node)
        pr = prior.get(reference)
        unc = None if p is None or pr is None else p + pr
        result[node] = NodeClock(node, 0.0, unc, "metadata" if unc is not None else "none")
    ordered = {n: result[n] for n in nodes}
    return ClockSolution(reference=reference, nodes=ordered, pairs=list(bounds.values()))
