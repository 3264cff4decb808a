"""Session affinity (sessionAffinity: ClientIP) in the fairness verdict.

With affinity kube-proxy's split applies to a client's *first* connection
only: the rules send every later connection of that client address, within
the timeout of its previous one, to the endpoint it already has (iptables:
the endpoint's `recent` list, refreshed by each new connection; nftables: the
endpoint's affinity- set, whose element each new connection renews). So
counting every connection against the shares is wrong by construction: one
client with a thousand connections is one draw, not a thousand.

Per node and service port (kube-proxy keeps the lists per node and per
endpoint chain of the port), each client address's connections in time
order are split into
  - first connections: its first one in the capture, and any that came at
    least the timeout after its previous one (the entry had expired). These
    are the draws whose spread fairness judges against the promised shares;
  - returning connections: within the timeout of the previous one. Each must
    reach the endpoint the previous one reached; those that did not are
    stickiness violations, listed.
A client's first connection in the capture may still be pinned by one made
before the capture began; it is counted as a draw all the same.
Connections to ports without affinity are all first connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.addresses import int_to_ip
from tracer.analysis.promises import PromisedConnections
from tracer.analysis.service import PortPromise, era_index, eras

LISTED_VIOLATIONS = 1000  # in JSON; the count is always complete


@dataclass(frozen=True)
class Violation:
    """A returning connection that reached another endpoint than its client's previous one."""

    client: str
    node: str
    port: str  # the service port, "8088/tcp"
    t_ns: int  # the connection's time (the analysis' common timeline)
    gap_s: float  # since the client's previous connection
    previous: str  # the previous connection's endpoint
    endpoint: str  # this connection's endpoint

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AffinityReport:
    timeout_s: float | None  # None: no timeout (the rules name none)
    clients: int  # distinct client addresses of affinity ports
    connections: int  # their connections
    first: int  # draws judged for the spread (first connections)
    expired: int  # of which came after the timeout had expired
    returning: int  # within the timeout of the client's previous connection
    violations: list[Violation] = field(default_factory=list)

    @property
    def sticky(self) -> int:
        return self.returning - len(self.violations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ClientIP",
            "timeout_seconds": self.timeout_s,
            "clients": self.clients,
            "connections": self.connections,
            "first_connections": self.first,
            "expired_reconnections": self.expired,
            "returning_connections": self.returning,
            "sticky_connections": self.sticky,
            "violation_count": len(self.violations),
            "violations": [v.to_dict() for v in self.violations[:LISTED_VIOLATIONS]],
        }


def _port_label(port: PortPromise) -> str:
    proto = {6: "tcp", 17: "udp", 132: "sctp"}.get(port.protocol or -1, "?")
    return f"{port.port if port.port is not None else port.node_port}/{proto}"


def _timeouts(
    p: PromisedConnections, node_meta: dict[str, dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Each connection's affinity timeout in ns (nan: none, inf: no expiry)
    and service port (an index into the labels); None when no port of the
    metadata has affinity."""
    conns = p.conns
    nodes = list(map(str, conns["node"].cat.categories))
    era_lists = {n: eras(node_meta.get(n, {})) for n in nodes}
    if not any(port.affinity_timeout_s is not None
               for el in era_lists.values() for era in el for port in era.ports):
        return None
    codes = conns["node"].cat.codes.to_numpy()
    era_of = np.zeros(len(conns), dtype=np.int64)
    for ni, n in enumerate(nodes):
        sel = codes == ni
        if sel.any():
            era_of[sel] = era_index(era_lists[n], conns["ts_ns"].to_numpy()[sel])
    combo = pd.DataFrame({"node": codes, "era": era_of, "dst": conns["dst"].to_numpy(),
                          "dport": conns["dport"].to_numpy(), "proto": conns["proto"].to_numpy(),
                          "to": np.asarray(p.keys, dtype=object)[p.endpoint]})
    combo_id = combo.groupby(list(combo.columns), sort=False).ngroup().to_numpy()
    timeout_of, port_of, labels = [], [], []
    for row in combo.drop_duplicates().itertuples(index=False):
        port = era_lists[nodes[row.node]][row.era].port_for(
            int(row.dst), int(row.dport), int(row.proto), row.to)
        seconds = None if port is None else port.affinity_timeout_s
        label = "?" if port is None else _port_label(port)
        labels += [label] if label not in labels else []
        timeout_of.append(np.nan if seconds is None else seconds * 1e9)
        port_of.append(labels.index(label))
    return np.array(timeout_of)[combo_id], np.array(port_of)[combo_id], labels


def _split(p: PromisedConnections, timeout: np.ndarray, port: np.ndarray) -> pd.DataFrame:
    """Connections of affinity ports in (node, port, client, time) order, each
    with its previous connection's time and endpoint (the same client's)."""
    conns = p.conns
    frame = pd.DataFrame({
        "i": np.arange(len(conns)), "node": conns["node"].cat.codes.to_numpy(), "port": port,
        "src": conns["src"].to_numpy(), "ts": conns["ts_ns"].to_numpy().astype(np.int64),
        "t": conns["t"].to_numpy().astype(np.int64), "ep": p.endpoint, "timeout": timeout,
    })
    frame = frame[~np.isnan(timeout)].sort_values(["node", "port", "src", "ts"], kind="stable")
    same = (frame[["node", "port", "src"]] == frame[["node", "port", "src"]].shift()).all(axis=1)
    frame["gap"] = np.where(same, frame["ts"] - frame["ts"].shift().fillna(0), np.nan)
    frame["prev_ep"] = np.where(same, frame["ep"].shift().fillna(-1), -1).astype(np.int64)
    frame["returning"] = same & (frame["gap"] < frame["timeout"])
    return frame


def judged(
    p: PromisedConnections, node_meta: dict[str, dict[str, Any]], per_conn: np.ndarray
) -> tuple[PromisedConnections, np.ndarray, AffinityReport | None]:
    """The connections whose spread fairness judges (all of them without
    affinity; the first connections with it), their requests, and the
    stickiness report (None without affinity)."""
    found = _timeouts(p, node_meta) if len(p.conns) else None
    if found is None:
        return p, per_conn, None
    timeout, port, labels = found
    frame = _split(p, timeout, port)
    first = np.ones(len(p.conns), dtype=bool)
    first[frame["i"].to_numpy()[frame["returning"].to_numpy()]] = False
    nodes = list(map(str, p.conns["node"].cat.categories))
    moved = frame[frame["returning"] & (frame["ep"] != frame["prev_ep"])]
    violations = [
        Violation(int_to_ip(int(r.src)), nodes[int(r.node)], labels[int(r.port)], int(r.t),
                  float(r.gap) / 1e9, p.keys[int(r.prev_ep)], p.keys[int(r.ep)])
        for r in moved.itertuples(index=False)
    ]
    finite = [t for t in np.unique(frame["timeout"]) if np.isfinite(t)]
    report = AffinityReport(
        timeout_s=finite[0] / 1e9 if finite else None,
        clients=int(frame["src"].nunique()),
        connections=len(frame),
        first=int((~frame["returning"]).sum()),
        expired=int((frame["gap"] >= frame["timeout"]).sum()),
        returning=int(frame["returning"].sum()),
        violations=sorted(violations, key=lambda v: v.t_ns),
    )
    notes = [*p.notes, (
        f"session affinity (ClientIP): the spread is judged on {report.first} first "
        f"connections of {report.clients} clients, not on all {report.connections}; "
        f"the other {report.returning} are checked for stickiness")]
    subset = PromisedConnections(p.conns[first], p.endpoint[first], p.keys, p.shares[first],
                                 p.excluded, notes)
    return subset, per_conn[first], report


def format_lines(report: AffinityReport | None, max_rows: int = 10) -> list[str]:
    if report is None:
        return []
    timeout = "no timeout" if report.timeout_s is None else f"timeout {report.timeout_s:g} s"
    lines = [
        f"\nSession affinity ClientIP ({timeout}): {report.clients} clients, "
        f"{report.connections} connections",
        f"  spread judged on {report.first} first connections "
        f"({report.expired} after the affinity expired): the table above",
    ]
    moved = len(report.violations)
    verdict = ("sticky: every one kept its endpoint" if not moved
               else f"NOT sticky: {moved} moved to another endpoint")
    lines.append(f"  {report.returning} later connections within the timeout, {report.sticky} "
                 f"kept their client's endpoint; {verdict}")
    for v in report.violations[:max_rows]:
        lines.append(f"  violation: {v.client} via {v.node} {v.port}: {v.previous} -> "
                     f"{v.endpoint}, {v.gap_s:.3g} s after its previous connection")
    if moved > max_rows:
        lines.append(f"  ... {moved - max_rows} more violations (--json lists them)")
    return lines
