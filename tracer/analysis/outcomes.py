"""Each client connection to the Service and how it ended, as the client saw it.

A client connection is what tracer.analysis.key_figures counts: a pre-NAT
client tuple (client -> Service frontend) with its SYN's sequence number. The
client's side of it is what crosses the node boundary facing the client: the
client's packets where they enter (the first ``rx`` whose destination is a
frontend of the Service: cluster/external/load-balancer IP and port, node
port, or any pre-DNAT destination a DNAT event saw) and the packets sent back
to it where they leave (the last ``tx`` whose *source* is a frontend: after
reverse NAT a pod's reply carries the Service address, and so does a RST that
a REJECT rule sends for it).

Outcomes (``OUTCOMES``), judged from those packets only:

- ``succeeded``: the handshake completed (a SYN-ACK left toward the client and
  the client acknowledged it: ACK = SYN-ACK seq + 1) and server data reached
  the client (the client acknowledged the end of a data segment it was sent);
- ``reset``: not succeeded, and a RST left toward the client;
- ``unreachable``: no completed handshake and no RST, and an ICMP error was
  sent for the connection (tracer.analysis.icmp; judged by
  tracer.analysis.diagnose, which follows the error to the flow it quotes);
- ``no_answer``: no completed handshake, no RST and no ICMP error;
- ``stalled``: the handshake completed, the server's data was never
  acknowledged, no RST;
- ``no_data``: the handshake completed and the connection closed (FIN toward
  the client) without any server data.

``no_answer`` and ``stalled`` rest on something *not* seen. They are judged
only when the capture went on for ``settle_ns`` (the 1 s initial SYN
retransmission timeout) after the connection's last packet, and when no
event was lost; otherwise the connection is ``undetermined`` (``would_be``
keeps the outcome it would have). Connections whose SYN the capture did not
see (open before it started) are counted as ``already_open`` and not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.events import PROBE_NAT, PROBE_RX, PROBE_TX
from tracer.analysis.service import parse_service

SYN, RST, ACK, FIN = 0x02, 0x04, 0x10, 0x01
OUTCOMES = ("succeeded", "reset", "unreachable", "no_answer", "stalled", "no_data")
FAILED = ("reset", "unreachable", "no_answer", "stalled", "no_data")
SETTLE_NS = 1_000_000_000
_HALF = 2**31


@dataclass
class ClientConnections:
    """One row per client connection (``conns``) and the events it is made of."""

    conns: pd.DataFrame
    client_rows: pd.DataFrame  # the client's packets at the ingress (one row per packet)
    reply_rows: pd.DataFrame  # packets leaving toward the client (one row per packet)
    already_open: int


def _tuple_key(ip: np.ndarray, port: np.ndarray) -> np.ndarray:
    return (ip.astype(np.int64) << 16) | port.astype(np.int64)


def frontend_mask(
    ev: pd.DataFrame, ip_col: str, port_col: str, node_meta: dict[str, dict[str, Any]]
) -> np.ndarray:
    """Events whose (ip_col, port_col, proto) is a frontend of the Service."""
    ports = [p for m in node_meta.values() for p in parse_service(m.get("service"))]
    probe = ev["probe_code"].to_numpy()
    dnat = (probe == PROBE_NAT) & (ev["nat_kind"] == "dnat").to_numpy()
    seen = set(
        zip(ev["dst"].to_numpy()[dnat].tolist(), ev["dport"].to_numpy()[dnat].tolist(),
            ev["proto"].to_numpy()[dnat].tolist(), strict=True)
    )
    key = (_tuple_key(ev[ip_col].to_numpy(), ev[port_col].to_numpy()) << 8) | ev[
        "proto"
    ].to_numpy().astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    ok = np.zeros(len(uniq), dtype=bool)
    for i, k in enumerate(uniq.tolist()):
        ip, port, proto = k >> 24, (k >> 8) & 0xFFFF, k & 0xFF
        ok[i] = (ip, port, proto) in seen or any(
            p.promise_for(ip, port, proto) is not None for p in ports
        )
    return ok[inv.reshape(-1)]


def _per_packet(ev: pd.DataFrame, mask: np.ndarray, last: bool) -> pd.DataFrame:
    """One event per packet among the masked ones (the first, or the last)."""
    sel = ev[mask]
    sel = sel.drop_duplicates("packet", keep="last" if last else "first")
    payload = (
        sel["len"].to_numpy(np.int64) - sel["ip_hlen"].to_numpy(np.int64)
        - sel["tcp_hlen"].to_numpy(np.int64)
    )
    return sel.assign(payload=np.maximum(payload, 0))


def _instances(client: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Number client packets by connection: a SYN with a sequence number new
    for its tuple starts one (a retransmitted SYN repeats it)."""
    c = client.sort_values(["k1", "k2", "t", "row"], kind="stable").reset_index(drop=True)
    if c.empty:  # no packet reached a frontend: no connection to number
        return c.assign(conn=np.zeros(0, np.int64), is_syn=np.zeros(0, bool),
                        starts=np.zeros(0, bool)), 0
    flags = c["tcp_flags"].to_numpy()
    is_syn = ((flags & SYN) != 0) & ((flags & ACK) == 0)
    k1, k2, seq = c["k1"].to_numpy(), c["k2"].to_numpy(), c["seq"].to_numpy()
    group_start = np.r_[True, (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])]
    group = np.cumsum(group_start) - 1
    # Previous SYN's sequence number within the tuple.
    syn_idx = np.flatnonzero(is_syn)
    new = np.zeros(len(c), dtype=bool)
    if len(syn_idx):
        g = group[syn_idx]
        s = seq[syn_idx]
        new[syn_idx] = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]
    csum = np.cumsum(new)
    before_group = (csum - new)[np.flatnonzero(group_start)][group]
    conn = np.where(csum > before_group, csum - 1, -1)
    c["conn"] = conn
    c["is_syn"] = is_syn
    c["starts"] = new
    orphans = c[conn < 0]
    return c[conn >= 0], int(orphans[["k1", "k2"]].drop_duplicates().shape[0])


def client_and_reply(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]], proto: int
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The packets of protocol proto the client sent to a Service frontend
    (each at its first rx there) and those sent back from one (each at its
    last tx), keyed alike by their tuple: k1 the client side, k2 the
    frontend side. What TCP connections and UDP flows are made from."""
    of_proto = ev["proto"].to_numpy() == proto
    probe = ev["probe_code"].to_numpy()
    to_fe = of_proto & (probe == PROBE_RX) & frontend_mask(ev, "dst", "dport", node_meta)
    from_fe = of_proto & (probe == PROBE_TX) & frontend_mask(ev, "src", "sport", node_meta)
    client = _per_packet(ev, to_fe, last=False)
    reply = _per_packet(ev, from_fe, last=True)
    client = client.assign(
        k1=_tuple_key(client["src"].to_numpy(), client["sport"].to_numpy()),
        k2=_tuple_key(client["dst"].to_numpy(), client["dport"].to_numpy()),
    )
    reply = reply.assign(
        k1=_tuple_key(reply["dst"].to_numpy(), reply["dport"].to_numpy()),
        k2=_tuple_key(reply["src"].to_numpy(), reply["sport"].to_numpy()),
    )
    return client, reply


def find_connections(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]]) -> ClientConnections:
    """The client connections in the packets' events (tracer.analysis.packets
    columns: ``packet`` and ``hop`` per event, events in packet/hop order)."""
    client, reply = client_and_reply(ev, node_meta, 6)
    client, already_open = _instances(client)
    starts = client[client["starts"]][["k1", "k2", "t", "conn"]].sort_values("t")
    reply = pd.merge_asof(
        reply.sort_values("t"), starts, on="t", by=["k1", "k2"], direction="backward"
    )
    reply = reply[reply["conn"].notna()].astype({"conn": np.int64})
    conns = _judge(client, reply, starts)
    return ClientConnections(conns, client, reply, already_open)


def _rel(values: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Sequence-space distance from base, mod 2^32 (negative beyond half)."""
    d = (values.astype(np.int64) - base.astype(np.int64)) % 2**32
    return np.where(d >= _HALF, d - 2**32, d)


def _judge(client: pd.DataFrame, reply: pd.DataFrame, starts: pd.DataFrame) -> pd.DataFrame:
    """Per connection: what the client's side shows, and the outcome."""
    n = int(starts["conn"].max()) + 1 if len(starts) else 0
    conns = pd.DataFrame({"conn": np.arange(n)})
    first = client[client["starts"]].set_index("conn")
    conns["start_t"] = first["t"].reindex(conns["conn"]).to_numpy()
    conns["client_ip"] = first["src"].reindex(conns["conn"]).to_numpy()
    conns["client_port"] = first["sport"].reindex(conns["conn"]).to_numpy()
    conns["frontend_ip"] = first["dst"].reindex(conns["conn"]).to_numpy()
    conns["frontend_port"] = first["dport"].reindex(conns["conn"]).to_numpy()
    conns["isn"] = first["seq"].reindex(conns["conn"]).to_numpy()
    conns["ingress_node"] = first["node"].astype(str).reindex(conns["conn"]).to_numpy()
    syns = client[client["is_syn"]]
    conns["syns"] = syns.groupby("conn").size().reindex(conns["conn"], fill_value=0).to_numpy()
    conns["last_syn_packet"] = syns.groupby("conn")["packet"].last().reindex(conns["conn"]).to_numpy()
    rf = reply["tcp_flags"].to_numpy() if len(reply) else np.zeros(0, np.uint8)
    synack = reply[((rf & SYN) != 0) & ((rf & ACK) != 0)]
    sa_seq = synack.groupby("conn")["seq"].first().reindex(conns["conn"])
    conns["synack_sent"] = sa_seq.notna().to_numpy()
    rst = reply[(rf & RST) != 0].groupby("conn")["packet"].first().reindex(conns["conn"])
    conns["rst_packet"] = rst.to_numpy()
    fin = reply[(rf & FIN) != 0].groupby("conn").size().reindex(conns["conn"], fill_value=0)
    base = sa_seq.to_numpy(dtype=np.float64)  # NaN where no SYN-ACK
    conn_base_c = base[client["conn"].to_numpy()]
    cf = client["tcp_flags"].to_numpy()
    has_base = ~np.isnan(conn_base_c)
    rel_ack = np.full(len(client), -1, dtype=np.int64)
    ack_rows = has_base & ((cf & ACK) != 0) & ((cf & SYN) == 0)
    rel_ack[ack_rows] = _rel(client["ack"].to_numpy()[ack_rows],
                             conn_base_c[ack_rows].astype(np.int64) + 1)
    acked = pd.Series(rel_ack).groupby(client["conn"].to_numpy()).max()
    max_ack = acked.reindex(conns["conn"], fill_value=-1).to_numpy()
    conns["handshake"] = max_ack >= 0
    data = reply[reply["payload"].to_numpy() > 0]
    d_base = base[data["conn"].to_numpy()]
    ok = ~np.isnan(d_base)
    rel_end = np.full(len(data), _HALF, dtype=np.int64)
    rel_end[ok] = _rel(
        data["seq"].to_numpy()[ok].astype(np.int64) + data["payload"].to_numpy()[ok],
        d_base[ok].astype(np.int64) + 1,
    )
    first_end = pd.Series(rel_end).groupby(data["conn"].to_numpy()).min()
    first_end = first_end.reindex(conns["conn"], fill_value=_HALF).to_numpy()
    conns["data_to_client"] = (
        data.groupby("conn").size().reindex(conns["conn"], fill_value=0).to_numpy()
    )
    conns["data_acked"] = max_ack >= first_end
    last_c = client.groupby("conn")["t"].max().reindex(conns["conn"])
    last_r = reply.groupby("conn")["t"].max().reindex(conns["conn"])
    conns["last_t"] = np.fmax(last_c.to_numpy(np.float64), last_r.to_numpy(np.float64))
    conns["outcome"] = np.select(
        [
            conns["handshake"] & conns["data_acked"],
            conns["rst_packet"].notna(),
            ~conns["handshake"],
            fin.to_numpy() > 0,
        ],
        ["succeeded", "reset", "no_answer", "no_data"],
        default="stalled",
    )
    return conns
