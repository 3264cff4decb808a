"""`tracer diagnose`: what is wrong with the Service (its words:
tracer.analysis.diagnose_text).

Every client connection's outcome (tracer.analysis.outcomes) and every UDP
flow's (tracer.analysis.udp_flows: ``answered``, ``unreachable``,
``no_answer``), and for the
failed ones where their packets stopped (tracer.analysis.journeys), grouped
by outcome and stop; each group says what its connections have in common
(the endpoint DNAT chose, the nodes) against the connections that succeeded.
A capture that lost events, or ended before a connection could be judged,
makes those connections ``undetermined``: the report says what it could not
judge instead of blaming.

The JSON document (``Diagnosis.to_dict``; docs/troubleshooting.md):
``verdict`` (healthy | failing | undetermined | no_connections), ``summary``,
``service``, ``nodes``, ``capture`` {events, lost, lost_by_node, end_t},
``connections`` {total, succeeded, answered, reset, unreachable, no_answer, stalled,
no_data, undetermined, already_open, tcp, udp} (UDP flows count as connections:
``tcp`` and ``udp`` say how many of each), ``endpoints`` [{endpoint, proto,
node, connections, succeeded (a UDP flow's: answered), failed}], ``failures``
[group], ``undetermined`` [{reason, proto, count, would_be}]. A group (of one
proto): {outcome, proto (tcp | udp), count, reset_by, stop, endpoints, dnat_nodes,
common {endpoint, endpoint_node, dnat_node}, finding, reset_from, syn_retransmits,
retransmitted_segments, largest_retransmitted, size_limit {smallest_lost,
largest_delivered} (a loss by size) or null, examples, rule, icmp}. ``rule``
is the netfilter rule that dropped or rejected the group's packets, from a
capture taken with --rules (tracer.analysis.rule_walks), null otherwise.
``icmp`` is the ICMP error sent for the group's connections
(tracer.analysis.icmp), null if none: {type, code, name, sender, sent_by
(pod | node | router), node, probe, device, netns (where it was first seen),
quoted, packet, count}. ``denied_by`` is set when every connection of the
group went to a load-balancer IP from a source outside the port's
loadBalancerSourceRanges (tracer.analysis.denials): {kind
"loadBalancerSourceRanges", ranges, chain (the firewall chain), load_balancer_ips
(ip:port), sources (client IPs)}, null otherwise. Such denials are the
Service working as configured: when every failure is one (and nothing is
undetermined) the verdict is ``healthy``, and the summary says how many were
denied and that the Service is healthy for admitted sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis import denials, rule_walks
from tracer.analysis.addresses import IPV6_BASE, endpoint, int_to_ip
from tracer.analysis.endpoint_placement import endpoint_nodes
from tracer.analysis.events import load_events
from tracer.analysis.icmp import attach as attach_icmp
from tracer.analysis.icmp import icmp_name
from tracer.analysis.journeys import add_dnat, locate
from tracer.analysis.outcomes import FAILED, SETTLE_NS, find_connections
from tracer.analysis.packets import Packets, assemble
from tracer.analysis.rule_walks import NodeWalk, blocking_rule
from tracer.analysis.service import service_name
from tracer.analysis.udp_flows import ALL_OUTCOMES, ANSWERED, UDP, client_flows

MAX_EXAMPLES = 3
OK = ("succeeded", ANSWERED)
PROTO = {6: "tcp", UDP: "udp"}


@dataclass
class Diagnosis:
    verdict: str
    summary: str
    service: str
    nodes: list[str]
    capture: dict[str, Any]
    connections: dict[str, int]
    endpoints: list[dict[str, Any]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    undetermined: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _capture_end(packets: Packets) -> int:
    """Latest time the capture covered: its nodes' recorded end, else the last event."""
    ends = []
    for node, meta in packets.node_meta.items():
        rmm = (meta.get("clock") or {}).get("realtime_minus_monotonic_ns")
        merged = meta.get("merged") or {}
        rmm = merged.get("corrected_realtime_minus_monotonic_ns", rmm)
        if meta.get("ended_ns") is not None and rmm is not None:
            clock = packets.clocks.nodes.get(node)
            ends.append(int(meta["ended_ns"]) + int(rmm) - int(clock.offset_ns if clock else 0))
    last = int(packets.events["t"].max()) if len(packets.events) else 0
    return max([last, *ends])


def _lost(packets: Packets) -> dict[str, int]:
    return {n: int((m.get("stats") or {}).get("lost") or 0) for n, m in packets.node_meta.items()}


def _endpoint_text(ip: float, port: float) -> str | None:
    return None if np.isnan(ip) else endpoint(int(ip), int(port))


def diagnose(source: Sequence[str | Path] | Packets, settle_ns: int = SETTLE_NS) -> Diagnosis:
    packets = source if isinstance(source, Packets) else assemble(load_events(source))
    ev = packets.events
    cc = client_flows(ev, packets.node_meta, find_connections(ev, packets.node_meta))
    add_dnat(cc, ev)
    conns = cc.conns
    conns["endpoint"] = [_endpoint_text(i, p) for i, p in
                         zip(conns["endpoint_ip"], conns["endpoint_port"], strict=True)]
    _judge_icmp(conns, attach_icmp(ev, conns, cc.client_rows))
    where = endpoint_nodes(ev, packets.node_meta)
    conns["endpoint_node"] = [where.get(e) if e else None for e in conns["endpoint"]]
    end_t, lost = _capture_end(packets), _lost(packets)
    absent = conns["outcome"].isin(["no_answer", "stalled"]).to_numpy()
    too_late = absent & (conns["last_t"].to_numpy() > end_t - settle_ns)
    lossy = absent & (sum(lost.values()) > 0)
    conns["undetermined"] = np.where(too_late, "capture_ended",
                                     np.where(lossy, "events_lost", ""))
    failed = conns["outcome"].isin(FAILED).to_numpy() & (conns["undetermined"] == "").to_numpy()
    located = locate(cc, ev, failed)
    meta = next((m for m in packets.node_meta.values() if m.get("service")), {})
    counts = {o: int(((conns["outcome"] == o) & (conns["undetermined"] == "")).sum())
              for o in ALL_OUTCOMES}
    counts = {"total": len(conns), **counts,
              "undetermined": int((conns["undetermined"] != "").sum()),
              "already_open": cc.already_open,
              "tcp": int((conns["proto"] != UDP).sum()), "udp": int((conns["proto"] == UDP).sum())}
    # Rule walks exist only in captures taken with --rules: without them the
    # connections' packet ids are not gathered at all.
    by_packet = _walks_by_packet(rule_walks.of(packets))
    rules = denials.source_ranges(meta.get("service"))
    conns["denied"] = [denials.denied_by(c, f, p, rules) for c, f, p in zip(
        conns["client_ip"], conns["frontend_ip"], conns["frontend_port"], strict=True)]
    failures = _groups(conns.assign(packet_ids=_packet_ids(cc) if by_packet else None), located,
                       failed, by_packet)
    undetermined = [
        {"reason": why, "count": len(g), "proto": PROTO[proto],
         "would_be": {str(k): int(v) for k, v in g["outcome"].value_counts().items()}}
        for (why, proto), g in conns[conns["undetermined"] != ""].groupby(["undetermined", "proto"])
    ]
    # Denials by loadBalancerSourceRanges are the Service doing as configured.
    faults = [g for g in failures if not g["denied_by"]]
    verdict = ("no_connections" if not len(conns) else "failing" if faults
               else "undetermined" if undetermined else "healthy")
    diag = Diagnosis(
        verdict=verdict, summary="", service=service_name(meta.get("service")),
        nodes=list(packets.node_meta),
        capture={"events": len(ev), "lost": sum(lost.values()), "lost_by_node": lost,
                 "end_t": end_t},
        connections=counts, endpoints=_endpoints(conns), failures=failures,
        undetermined=undetermined,
    )
    diag.summary = _summary(diag)
    return diag


def _judge_icmp(conns: pd.DataFrame, icmp: pd.DataFrame) -> None:
    """Each connection's ICMP error (a dict, or None), and ``unreachable``
    for a connection that got no answer but an ICMP error."""
    docs: list[dict[str, Any] | None] = [None] * len(conns)
    for i, conn in enumerate(conns["conn"].tolist()):
        if conn in icmp.index:
            r = icmp.loc[conn]
            docs[i] = {
                "type": int(r["icmp_type"]), "code": int(r["icmp_code"]),
                "name": icmp_name(int(r["icmp_type"]), int(r["icmp_code"]),
                                  int(r["sender"]) >= IPV6_BASE),
                "sender": int_to_ip(int(r["sender"])), "sent_by": str(r["sent_by"]),
                "node": str(r["node"]), "probe": str(r["probe"]), "device": str(r["device"]),
                "netns": str(r["netns"]), "quoted": str(r["quoted"]), "packet": int(r["packet"]),
            }
    conns["icmp"] = docs
    got = np.array([d is not None for d in docs], dtype=bool)
    conns.loc[got & (conns["outcome"] == "no_answer").to_numpy(), "outcome"] = "unreachable"


def _icmp_key(doc: Any) -> tuple:
    if not isinstance(doc, dict):
        return ()
    return (doc["type"], doc["code"], doc["sent_by"], doc["sender"], doc["node"])


def _endpoints(conns: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    judged = conns[conns["undetermined"] == ""]
    for (ep, proto), g in judged[judged["endpoint"].notna()].groupby(["endpoint", "proto"]):
        ok = int(g["outcome"].isin(OK).sum())
        out.append({"endpoint": ep, "proto": PROTO[proto], "node": g["endpoint_node"].iloc[0],
                    "connections": len(g), "succeeded": ok, "failed": len(g) - ok})
    return out


def _stop_key(stop: Any) -> tuple:
    if not isinstance(stop, dict):
        return ("", "", "", "", "")
    return (stop["node"], stop["probe"], stop["device"], stop["netns"], stop["drop_reason"] or "")


def _groups(conns: pd.DataFrame, located: pd.DataFrame, failed: np.ndarray,
            by_packet: dict[int, list[NodeWalk]]) -> list[dict]:
    if not failed.any():
        return []
    f = conns[failed].join(located)
    f["stop_key"] = [_stop_key(s) for s in f["stop"]]
    f["icmp_key"] = [_icmp_key(d) for d in f["icmp"]]
    f["denied_key"] = [(d[0], d[1]) if d else None for d in f["denied"]]
    ok = conns[conns["outcome"].isin(OK) & (conns["undetermined"] == "")]
    groups = []
    for (outcome, proto, reset_by, *_), g in f.groupby(
        ["outcome", "proto", f["reset_by"].fillna(""), "stop_key", "icmp_key", "denied_key"],
        sort=False, dropna=False,
    ):
        ok_by_ep = ok[ok["proto"] == proto]["endpoint"].value_counts()
        stop = g["stop"].iloc[0] if isinstance(g["stop"].iloc[0], dict) else None
        eps = g["endpoint"].fillna("(none)").value_counts()
        common = _common(g)
        group = {
            "outcome": outcome, "proto": PROTO[proto], "count": len(g),
            "reset_by": reset_by or None, "stop": stop,
            "endpoints": {str(k): int(v) for k, v in eps.items()},
            "dnat_nodes": {str(k): int(v) for k, v in g["dnat_node"].fillna("(none)")
                           .value_counts().items()},
            "common": common,
            "syn_retransmits": int((g["syns"] - 1).clip(lower=0).sum()),
            "retransmitted_segments": int(g["retransmitted_segments"].sum()),
            "reset_from": next((x for x in g.get("reset_from", []) if isinstance(x, dict)), None),
            "largest_retransmitted": None if g["largest_retransmitted"].isna().all()
            else int(g["largest_retransmitted"].max()),
            "size_limit": _size_limit(g),
            "examples": [_example(r) for _, r in g.head(MAX_EXAMPLES).iterrows()],
            "rule": _group_rule(g, by_packet),
            "icmp": _group_icmp(g),
            "denied_by": denials.group_doc(
                list(g["denied"]), [int_to_ip(int(c)) for c in g["client_ip"]]),
        }
        group["finding"] = (denials.finding(group["denied_by"], len(g)) if group["denied_by"]
                            else _finding(group, ok_by_ep))
        groups.append(group)
    return sorted(groups, key=lambda x: -x["count"])


def _group_rule(g: pd.DataFrame, by_packet: dict[int, list[NodeWalk]]) -> dict[str, Any] | None:
    """The netfilter rule that stopped the group's packets (captures taken
    with --rules): the client's packets, those sent back, and the stops."""
    if not by_packet:
        return None
    ids = {i for row in g["packet_ids"] for i in row}
    ids |= {s["packet"] for s in g["stop"] if isinstance(s, dict)}
    return blocking_rule([w for i in ids for w in by_packet.get(i, [])])


def _packet_ids(cc) -> list[list[int]]:
    """Per connection: its packets as the client's side shows them (its own
    and those sent back to it), whose rule walks say which rule stopped it."""
    rows = pd.concat([cc.client_rows[["conn", "packet"]], cc.reply_rows[["conn", "packet"]]])
    ids = rows.groupby("conn")["packet"].agg(list)
    return [ids.get(c, []) for c in cc.conns["conn"]]


def _walks_by_packet(rw: rule_walks.RuleWalks) -> dict[int, list[NodeWalk]]:
    out: dict[int, list[NodeWalk]] = {}
    for w in rw.walks:
        if w.packet is not None:
            out.setdefault(w.packet, []).append(w)
    return out


def _size_limit(g: pd.DataFrame) -> dict[str, int] | None:
    """A loss by size: in every connection of the group, each retransmitted
    (lost) segment is larger than every packet that reached the client. That
    is what a link whose MTU the packets exceed does (a switch drops an
    oversized frame without a word); None when the sizes overlap or are unknown."""
    lost, got = g["smallest_retransmitted"], g["largest_delivered"]
    if lost.isna().any() or got.isna().any() or not (lost > got).all():
        return None
    return {"smallest_lost": int(lost.min()), "largest_delivered": int(got.max())}


def _group_icmp(g: pd.DataFrame) -> dict[str, Any] | None:
    """The group's ICMP error (all its connections got the same kind from the
    same sender: the grouping key), with how many connections got one."""
    docs = [d for d in g["icmp"] if isinstance(d, dict)]
    return {**docs[0], "count": len(docs)} if docs else None


def _common(g: pd.DataFrame) -> dict[str, Any]:
    def one(col: str) -> Any:
        values = g[col].dropna().unique()
        return values[0] if len(values) == 1 and g[col].notna().all() else None
    return {"endpoint": one("endpoint"), "endpoint_node": one("endpoint_node"),
            "dnat_node": one("dnat_node")}


def _example(r: pd.Series) -> dict[str, Any]:
    return {
        "client": endpoint(int(r["client_ip"]), int(r["client_port"])),
        "frontend": endpoint(int(r["frontend_ip"]), int(r["frontend_port"])),
        "endpoint": r["endpoint"], "start_t": int(r["start_t"]),
        "syn_packet": None if np.isnan(r["last_syn_packet"]) else int(r["last_syn_packet"]),
    }


def _finding(group: dict[str, Any], ok_by_ep: pd.Series) -> str:
    """What the group's connections share, against the ones that succeeded."""
    n, c = group["count"], group["common"]
    if c["endpoint"]:
        where = f" on {c['endpoint_node']}" if c["endpoint_node"] else ""
        by = f" by {c['dnat_node']}" if c["dnat_node"] else ""
        text = f"all {n} were DNATed{by} to {c['endpoint']}{where}"
        same_ok = int(ok_by_ep.get(c["endpoint"], 0))
        verb = "were answered" if group["proto"] == "udp" else "succeeded"
        others = [f"the {int(v)} to {k} {verb}" for k, v in ok_by_ep.items()
                  if k != c["endpoint"]]
        if same_ok:
            others.insert(0, f"{same_ok} others to it {verb}")
        return "; ".join([text, *others])
    if set(group["endpoints"]) == {"(none)"}:
        return f"none of the {n} was DNATed: no endpoint was chosen"
    spread = ", ".join(f"{k} ({v})" for k, v in group["endpoints"].items())
    return f"spread over endpoints: {spread}"


def _summary(d: Diagnosis) -> str:
    c = d.connections
    if d.verdict == "no_connections":
        return "no client connection to the Service in the capture"
    tcp = [f"{c['succeeded']} of {c['tcp']} connections succeeded"] if c["tcp"] else []
    udp = [f"{c['answered']} of {c['udp']} flows answered"] if c["udp"] else []
    head = ", ".join(tcp + udp)
    denied = sum(g["count"] for g in d.failures if g["denied_by"])
    if d.verdict == "healthy" and denied:
        return (f"{head}, {denied} denied by loadBalancerSourceRanges: the Service is healthy "
                "for admitted sources")
    if d.verdict == "healthy":
        return " and ".join([f"all {c['tcp']} connections succeeded"] * bool(tcp) + [
            f"all {c['udp']} flows answered"] * bool(udp)) + "; nothing to blame"
    failed = sum(c[o] for o in FAILED)
    parts = [head]
    if failed:
        parts.append(f"{failed} failed" + (f" ({denied} of them denied by "
                                            "loadBalancerSourceRanges)" if denied else ""))
    if c["undetermined"]:
        parts.append(f"{c['undetermined']} could not be judged")
    return ", ".join(parts)
