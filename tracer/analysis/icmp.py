"""ICMP errors about the Service's connections, followed to the flow they quote.

An ICMP error (destination unreachable, time exceeded, parameter problem)
carries its own addresses (the sender of the error -> the offending packet's
source) and, in its body, the offending packet's IP header and first 8
bytes (ICMPv6, protocol 58, for IPv6: its own type numbers, ICMPV6_CODES):
the capture records that quoted tuple (``quoted_*`` columns). The
quote is the packet as the error's sender saw it, so it may be any
translation of the connection: the client's tuple (a REJECT on the node that
received it), the DNATed one (a router or node between it and the pod), the
masqueraded one (the pod itself); the NAT hook that carries the error back
rewrites the quote with the connection (``nat`` events carry the quote as the
hook left it). A connection is known here by every tuple its SYNs showed at
any hop, before and after each NAT event: an error is attached to the latest
connection begun before it whose tuples include the quote, either way round
(an error about a reply quotes the tuple reversed).

Who sent it: the pod (the error's source is the endpoint DNAT chose), a node
(the error begins on a captured node: a REJECT rule, no route, a too-small
MTU), or a router outside the captured nodes (the error's first hop is a
receive from outside).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracer.analysis.addresses import IPV6_BASE, endpoint, int_to_ip, proto_name
from tracer.analysis.events import PROBE_NAT, PROBE_RX

# (type, code) -> name; a type's name alone where the code is not listed.
ICMP_TYPES = {3: "destination unreachable", 11: "time exceeded", 12: "parameter problem"}
ICMP_CODES = {
    (3, 0): "net unreachable", (3, 1): "host unreachable", (3, 2): "protocol unreachable",
    (3, 3): "port unreachable", (3, 4): "fragmentation needed", (3, 6): "net unknown",
    (3, 7): "host unknown", (3, 9): "net prohibited", (3, 10): "host prohibited",
    (3, 13): "administratively prohibited", (11, 0): "TTL exceeded in transit",
    (11, 1): "fragment reassembly time exceeded",
}


# ICMPv6 (RFC 4443): the same errors under other numbers.
ICMPV6_TYPES = {1: "destination unreachable", 2: "packet too big", 3: "time exceeded",
                4: "parameter problem"}
ICMPV6_CODES = {
    (1, 0): "no route", (1, 1): "administratively prohibited", (1, 2): "beyond scope",
    (1, 3): "address unreachable", (1, 4): "port unreachable",
    (1, 5): "source address failed policy", (1, 6): "reject route",
    (3, 0): "hop limit exceeded in transit", (3, 1): "fragment reassembly time exceeded",
}
# (type, codes) of errors that say "refused" rather than "unreachable".
_REFUSED = {False: (3, (3, 9, 10, 13)), True: (1, (1, 4, 5, 6))}


def icmp_name(icmp_type: int, code: int, v6: bool = False) -> str:
    """The error's name; v6: an ICMPv6 error (an IPv6 packet's)."""
    codes, types = (ICMPV6_CODES, ICMPV6_TYPES) if v6 else (ICMP_CODES, ICMP_TYPES)
    return codes.get((icmp_type, code), types.get(icmp_type, f"type {icmp_type}"))


def quote_text(src: int, sport: int, dst: int, dport: int, proto: int) -> str:
    a = endpoint(src, sport, 0) if sport else int_to_ip(src)
    b = endpoint(dst, dport, 0) if dport else int_to_ip(dst)
    return f"{a} -> {b} {proto_name(proto)}"


def error_text(icmp_type: int, code: int, sender: int) -> str:
    """``icmp 3/3 port unreachable from 192.168.64.57``."""
    name = icmp_name(icmp_type, code, int(sender) >= IPV6_BASE)
    return f"icmp {icmp_type}/{code} {name} from {int_to_ip(sender)}"


def _key(ip: np.ndarray, port: np.ndarray) -> np.ndarray:
    return (ip.astype(np.int64) << 16) | port.astype(np.int64)


def _conn_tuples(ev: pd.DataFrame, syn_packets: pd.DataFrame) -> pd.DataFrame:
    """Every tuple the connections' SYNs showed (before and after each NAT
    event), both ways round: k1 (source), k2 (destination), proto, conn."""
    of_syn = ev[ev["packet"].isin(syn_packets["packet"])].merge(syn_packets, on="packet")
    frames = []
    for s, sp, d, dp in (("src", "sport", "dst", "dport"),
                         ("out_src", "out_sport", "out_dst", "out_dport")):
        a = _key(of_syn[s].to_numpy(), of_syn[sp].to_numpy())
        b = _key(of_syn[d].to_numpy(), of_syn[dp].to_numpy())
        for k1, k2 in ((a, b), (b, a)):
            frames.append(pd.DataFrame({"k1": k1, "k2": k2, "proto": of_syn["proto"].to_numpy(),
                                        "conn": of_syn["conn"].to_numpy(),
                                        "start_t": of_syn["start_t"].to_numpy()}))
    if not frames:
        return pd.DataFrame(columns=["k1", "k2", "proto", "conn", "start_t"])
    return pd.concat(frames).drop_duplicates()


def error_rows(ev: pd.DataFrame) -> pd.DataFrame:
    """The events of ICMP errors whose quote was read."""
    return ev[(ev["icmp_type"].to_numpy() != 0) & (ev["quoted_proto"].to_numpy() != 0)]


def attach(ev: pd.DataFrame, conns: pd.DataFrame, client_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per connection that an ICMP error was sent for: its first
    error (the packet, its hops' first event row), type, code, sender
    address, where it began, and who sent it (``pod``, ``node``, ``router``).
    Index: the connection's ``conn``."""
    cols = ["conn", "packet", "icmp_type", "icmp_code", "sender", "sent_by", "node", "probe",
            "device", "netns", "quoted"]
    errors = error_rows(ev)
    if not len(errors) or not len(conns):
        return pd.DataFrame(columns=cols).set_index("conn")
    syn = client_rows[client_rows["is_syn"]][["packet", "conn"]].drop_duplicates("packet")
    syn = syn.merge(conns[["conn", "start_t"]], on="conn")
    tuples = _conn_tuples(ev, syn)
    q = pd.DataFrame({
        "row": errors.index.to_numpy(), "packet": errors["packet"].to_numpy(),
        "t": errors["t"].to_numpy(),
        "k1": _key(errors["quoted_src"].to_numpy(), errors["quoted_sport"].to_numpy()),
        "k2": _key(errors["quoted_dst"].to_numpy(), errors["quoted_dport"].to_numpy()),
        "proto": errors["quoted_proto"].to_numpy().astype(tuples["proto"].dtype
                                                         if len(tuples) else np.uint8),
    })
    m = q.merge(tuples, on=["k1", "k2", "proto"])
    m = m[m["start_t"].to_numpy() <= m["t"].to_numpy()]
    # The latest connection begun before the error, for each error packet.
    m = m.sort_values(["packet", "start_t"]).drop_duplicates("packet", keep="last")
    m = m.sort_values("t").drop_duplicates("conn", keep="first")
    out = []
    first_rows = ev.reset_index(drop=True).drop_duplicates("packet", keep="first").set_index("packet")
    endpoint = conns.set_index("conn")["endpoint_ip"] if "endpoint_ip" in conns else None
    for r in m.itertuples(index=False):
        e = first_rows.loc[r.packet]
        sender = int(e["src"])
        ep = None if endpoint is None else endpoint.get(r.conn)
        # A nat event's "before" source of an ICMP error is conntrack's word
        # (the reply tuple's source: the pod), not the packet's: an error
        # first seen at a NAT hook began on that node (ip_local_out).
        if int(e["probe_code"]) == PROBE_NAT:
            by = "node"
        elif ep is not None and not np.isnan(ep) and int(ep) == sender:
            by = "pod"
        elif int(e["probe_code"]) == PROBE_RX:
            by = "router"
        else:
            by = "node"
        out.append({
            "conn": int(r.conn), "packet": int(r.packet), "icmp_type": int(e["icmp_type"]),
            "icmp_code": int(e["icmp_code"]), "sender": sender, "sent_by": by,
            "node": str(e["node"]), "probe": str(e["probe"]), "device": str(e["ifname"]),
            "netns": str(e["netns"]),
            "quoted": quote_text(int(e["quoted_src"]), int(e["quoted_sport"]), int(e["quoted_dst"]),
                                 int(e["quoted_dport"]), int(e["quoted_proto"])),
        })
    return pd.DataFrame(out, columns=cols).set_index("conn")


def who_text(icmp: dict) -> str:
    """``the pod``, ``node lab-node-a``, ``a router``."""
    return {"pod": "the pod", "node": f"node {icmp['node']}"}.get(icmp["sent_by"], "a router")


def judgement_text(icmp: dict) -> str:
    """``refused by ICMP 3/3 (port unreachable) from 10.0.0.1 (node lab-node-a)``,
    of a diagnosis document's ``icmp`` (type, code, sender, sent_by, node)."""
    v6 = ":" in str(icmp["sender"])
    refused_type, refused_codes = _REFUSED[v6]
    refused = icmp["type"] == refused_type and icmp["code"] in refused_codes
    return (f"{'refused' if refused else 'unreachable'} by ICMP{'v6' if v6 else ''} "
            f"{icmp['type']}/{icmp['code']} ({icmp_name(icmp['type'], icmp['code'], v6)}) "
            f"from {icmp['sender']} ({who_text(icmp)})")
