"""The few figures that sum up a capture of a Service, for a terminal.

What `tracer demo` prints at the end (and a notebook's first cell can show):
requests seen, DNAT choices per endpoint against the promised share, NAT hook
time p50/p99 of a connection's first packet vs established ones, and each
node's clock offset. Everything comes from the analysis modules; this module
only picks and flattens.

Client connections vs DNAT choices: each DNAT choice (``dnat`` + ``nat_first``)
is a new NAT binding. A client connection normally makes exactly one, but when
MASQUERADE --random-fully picks a source port the pod still holds in
TIME_WAIT, the pod answers the SYN with a bare ACK, the client resets, and its
retransmitted SYN (same client port, same sequence number) is chosen afresh.
So a client connection is a distinct pre-NAT client tuple *with its SYN's
sequence number*, and the difference is reported as ``rebound``. The tuple
alone is not enough: a client whose connections the server closes first holds
no TIME_WAIT, and connect() (__inet_hash_connect()) may give the same source
port to its next connection to the same Service at once (seen on the lab: two
connections 0.25 ms and 2 ms apart on one port, with their own initial
sequence numbers). That is a new connection, not a second choice for the old one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tracer.analysis import fairness as fairness_mod
from tracer.analysis import latency as latency_mod
from tracer.analysis.events import PROBE_NAT, load_events
from tracer.analysis.packets import Packets, assemble

NAT_KINDS = ("dnat", "snat")  # the rewrites a Service's connection is made of


@dataclass(frozen=True)
class EndpointFigures:
    endpoint: str  # pod ip:port
    node: str | None
    dnat_choices: int
    share: float
    promised_share: float
    requests: int


@dataclass(frozen=True)
class NatFigures:
    node: str
    hook: str
    kind: str
    first_count: int
    first_p50_ns: float
    first_p99_ns: float
    established_count: int
    established_p50_ns: float
    established_p99_ns: float


@dataclass(frozen=True)
class ClockFigures:
    node: str
    reference: bool
    offset_ns: float
    uncertainty_ns: float | None
    method: str
    crossing_packets: int


@dataclass(frozen=True)
class Summary:
    service: str
    nodes: list[str]
    events: int
    lost: int
    dnat_choices: int
    client_connections: int  # distinct (pre-NAT client tuple, SYN seq) among the DNAT choices
    requests: int
    requests_per_connection_mean: float
    requests_per_connection_max: float
    endpoints: list[EndpointFigures]
    chi_square_p: float
    jain_index: float
    nat: list[NatFigures]
    clocks: list[ClockFigures]

    @property
    def rebound(self) -> int:
        """DNAT choices beyond one per client connection (TIME_WAIT clashes)."""
        return self.dnat_choices - self.client_connections

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rebound": self.rebound}


def client_connections(packets: Packets) -> int:
    """Client connections among the DNAT choices: distinct pre-NAT tuples and
    sequence numbers of the packets chosen for (a TCP connection's SYN: its
    retransmission repeats the number, a new connection on a reused port
    does not; UDP carries none, so there the tuple alone counts)."""
    ev = packets.events
    first = ev[(ev["probe_code"].to_numpy() == PROBE_NAT) & ev["nat_first"].to_numpy()
               & (ev["nat_kind"] == "dnat").to_numpy()]
    return len(first[["src", "sport", "dst", "dport", "proto", "seq"]].drop_duplicates())


def nat_figures(report: latency_mod.LatencyReport) -> list[NatFigures]:
    groups: dict[tuple[str, str, str], dict[str, latency_mod.Distribution]] = {}
    for d in report.nat:
        if d.labels["kind"] in NAT_KINDS:
            key = (d.labels["node"], d.labels["hook"], d.labels["kind"])
            groups.setdefault(key, {})[d.labels["first"]] = d
    nan = float("nan")
    out = []
    for (node, hook, kind), by in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        f, e = by.get("first"), by.get("established")
        out.append(NatFigures(
            node=node, hook=hook, kind=kind,
            first_count=f.count if f else 0,
            first_p50_ns=f.percentiles["50"] if f else nan,
            first_p99_ns=f.percentiles["99"] if f else nan,
            established_count=e.count if e else 0,
            established_p50_ns=e.percentiles["50"] if e else nan,
            established_p99_ns=e.percentiles["99"] if e else nan,
        ))
    return out


def clock_figures(packets: Packets) -> list[ClockFigures]:
    """From a merged capture: the offsets its correlation estimated (kept in
    merged_from); from per-node captures: estimated now."""
    out = []
    for node, meta in packets.node_meta.items():
        merged = meta.get("merged")
        if merged:
            out.append(ClockFigures(
                node=node, reference=bool(merged.get("reference")),
                offset_ns=float(merged.get("offset_ns") or 0.0),
                uncertainty_ns=merged.get("uncertainty_ns"), method=str(merged.get("method")),
                crossing_packets=int(merged.get("packets_to") or 0)
                + int(merged.get("packets_from") or 0),
            ))
            continue
        c = packets.clocks.nodes.get(node)
        if c is not None:
            out.append(ClockFigures(
                node=node, reference=c.method == "reference", offset_ns=c.offset_ns,
                uncertainty_ns=c.uncertainty_ns, method=c.method,
                crossing_packets=c.packets_to + c.packets_from,
            ))
    return out


def summarize(captures: Sequence[str | Path] | Packets) -> Summary:
    packets = captures if isinstance(captures, Packets) else assemble(load_events(captures))
    fair = fairness_mod.analyze(packets)
    lat = latency_mod.analyze(packets)
    o = fair.overall
    per_conn = fair.requests.get("per_connection") or {}
    stats = [m.get("stats") or {} for m in packets.node_meta.values()]
    return Summary(
        service=fair.service,
        nodes=list(packets.node_meta),
        events=len(packets.events),
        lost=int(sum(s.get("lost") or 0 for s in stats)),
        dnat_choices=o.connections,
        client_connections=client_connections(packets),
        requests=int(sum(e.requests for e in o.endpoints)),
        requests_per_connection_mean=float(per_conn.get("mean", float("nan"))),
        requests_per_connection_max=float(per_conn.get("max", float("nan"))),
        endpoints=[
            EndpointFigures(e.endpoint, e.node, e.connections, float(e.observed_share),
                            float(e.promised_share), e.requests)
            for e in o.endpoints
        ],
        chi_square_p=float(o.chi2.p_value),
        jain_index=float(o.jain),
        nat=nat_figures(lat),
        clocks=clock_figures(packets),
    )


def fmt_us(ns: float | None) -> str:
    """Microseconds with two decimals: every summary figure in one unit."""
    return "n/a" if ns is None or ns != ns else f"{ns / 1e3:.2f} us"
