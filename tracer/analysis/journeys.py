"""Where each failed client connection's packets went, and where they stopped.

tracer.analysis.outcomes judges a connection from the client's side; this
module follows its packets inside the nodes (tracer.analysis.packets links a
packet's hops across nodes and NAT):

- the endpoint DNAT chose (the DNAT event of the connection's SYN) and the
  node that chose it;
- the server side: packets with the post-NAT tuple reversed (the endpoint
  answering the masqueraded source), which the client never sees when they
  are lost, for a stall's retransmitted segments;
- the stop: for a connection whose packets met a drop event, the latest drop
  (node, device, the kernel's reason); otherwise the last hop of the packet
  that should have got through (the last SYN, or the pod's SYN-ACK, for no
  answer; the server's data for a stall); for a reset, where the RST began
  and whether a pod sent it (it passed through the endpoint's address or the
  reverse NAT) or the node did (a REJECT: no pod involved).

A UDP flow (tracer.analysis.udp_flows) is followed the same way: its first
datagram's DNAT, and for no answer its last datagram or the pod's answer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracer.analysis.events import PROBE_DROP, PROBE_NAT
from tracer.analysis.outcomes import ACK, RST, SYN, ClientConnections


class PacketIndex:
    """First and last event of every packet (events in packet/hop order)."""

    def __init__(self, ev: pd.DataFrame) -> None:
        self.ev = ev
        packet = ev["packet"].to_numpy()
        size = int(packet.max()) + 2 if len(packet) else 1
        self.first = np.full(size, -1, dtype=np.int64)
        self.last = np.full(size, -1, dtype=np.int64)
        if len(packet):
            starts = np.flatnonzero(np.r_[True, packet[1:] != packet[:-1]])
            ends = np.r_[starts[1:] - 1, len(packet) - 1]
            self.first[packet[starts]] = starts
            self.last[packet[ends]] = ends

    def rows(self, packet: int) -> pd.DataFrame:
        a, b = self.first[packet], self.last[packet]
        return self.ev.iloc[a: b + 1] if a >= 0 else self.ev.iloc[0:0]


def add_dnat(cc: ClientConnections, ev: pd.DataFrame) -> None:
    """Endpoint, DNAT node and post-NAT tuple per connection (from its SYNs)."""
    conns = cc.conns
    syn_packets = cc.client_rows[cc.client_rows["is_syn"]][["packet", "conn"]]
    of_syn = ev[ev["packet"].isin(syn_packets["packet"])].merge(syn_packets, on="packet")
    dnat = of_syn[(of_syn["probe_code"] == PROBE_NAT) & (of_syn["nat_kind"] == "dnat")]
    dnat = dnat.drop_duplicates("conn").set_index("conn")
    idx = conns["conn"]
    conns["endpoint_ip"] = dnat["out_dst"].reindex(idx).to_numpy()
    conns["endpoint_port"] = dnat["out_dport"].reindex(idx).to_numpy()
    conns["dnat_node"] = dnat["node"].astype(str).reindex(idx).to_numpy()
    last = of_syn.drop_duplicates("conn", keep="last").set_index("conn")
    for col in ("out_src", "out_sport"):
        conns["post_" + col[4:]] = last[col].reindex(idx).to_numpy()


def server_rows(cc: ClientConnections, ev: pd.DataFrame) -> pd.DataFrame:
    """Events of the endpoint's side: source the endpoint, destination the
    connection's post-NAT source; each event to the latest connection begun
    before it."""
    conns = cc.conns[cc.conns["endpoint_ip"].notna()]
    if not len(conns):
        return ev.iloc[0:0].assign(conn=pd.Series(dtype=np.int64),
                                    payload=pd.Series(dtype=np.int64))
    keys = pd.DataFrame({
        "src": conns["endpoint_ip"].astype(np.int64), "sport": conns["endpoint_port"].astype(np.int64),
        "dst": conns["post_src"].astype(np.int64), "dport": conns["post_sport"].astype(np.int64),
        "proto": conns["proto"].astype(np.int64) if "proto" in conns else 6,
        "conn": conns["conn"], "start_t": conns["start_t"],
    })
    cand = ev[np.isin(ev["src"].to_numpy(), keys["src"].unique())]
    cand = cand.astype({c: np.int64 for c in ("src", "sport", "dst", "dport", "proto")})
    m = cand.merge(keys, on=["src", "sport", "dst", "dport", "proto"])
    m = m[m["t"].to_numpy() >= m["start_t"].to_numpy()]
    m = m.sort_values(["row", "start_t"]).drop_duplicates(["node", "row"], keep="last")
    payload = m["len"].to_numpy(np.int64) - m["ip_hlen"].to_numpy(np.int64) - m[
        "tcp_hlen"].to_numpy(np.int64)
    return m.assign(payload=np.maximum(payload, 0)).sort_values(["packet", "hop"])


def _stop(ix: PacketIndex, row: int, kind: str) -> dict:
    e = ix.ev.iloc[row]
    prev = ix.ev.iloc[row - 1] if row > ix.first[e["packet"]] else None
    return {
        "kind": kind,  # dropped | last_seen | sent_by
        "node": str(e["node"]), "probe": str(e["probe"]), "device": str(e["ifname"]),
        "netns": str(e["netns"]), "hook": str(e["hook"]) or None,
        "drop_reason": str(e["drop_reason"]) or None,
        "after": None if prev is None else _hop_text(prev),
        "packet": int(e["packet"]), "hop": int(e["hop"]),
    }


def _hop_text(e: pd.Series) -> str:
    if e["probe"] == "nat":
        return f"{e['node']} {e['nat_kind']} at {e['hook']} on {e['ifname']}"
    return f"{e['node']} {e['probe']} {e['ifname']}"


def _reset_by(ix: PacketIndex, packet: int, endpoint_ip: float) -> str:
    rows = ix.rows(packet)
    if not np.isnan(endpoint_ip) and (rows["src"].to_numpy() == int(endpoint_ip)).any():
        return "pod"
    if rows["nat_kind"].isin(["rev_snat", "rev_dnat"]).any():
        return "pod"
    return "node"


def locate(cc: ClientConnections, ev: pd.DataFrame, failed: np.ndarray) -> pd.DataFrame:
    """Stop (a dict), reset sender and stall evidence for the failed connections."""
    ix = PacketIndex(ev)
    server = server_rows(cc, ev)
    conns = cc.conns
    out = {}
    packets = pd.concat([
        cc.client_rows[["packet", "conn"]], cc.reply_rows[["packet", "conn"]],
        server[["packet", "conn"]],
    ]).drop_duplicates("packet")
    packets = packets[packets["conn"].isin(conns["conn"].to_numpy()[failed])]
    drops = ev[(ev["probe_code"].to_numpy() == PROBE_DROP) & ev["packet"].isin(packets["packet"])]
    drops = drops.merge(packets, on="packet").sort_values("t")
    last_drop = drops.drop_duplicates("conn", keep="last").set_index("conn")
    sf = server["tcp_flags"].to_numpy()
    tcp = server["proto"].to_numpy() == 6
    # The answer that should have reached the client: the SYN-ACK of a TCP
    # connection, any datagram of a UDP flow.
    synack = server[(tcp & ((sf & SYN) != 0) & ((sf & ACK) != 0)) | (server["proto"] == 17)]
    synack = synack.drop_duplicates("conn", keep="last")
    data = server[tcp & (server["payload"].to_numpy() > 0)]
    seg = data.drop_duplicates("packet").groupby(["conn", "seq"]).agg(
        copies=("packet", "size"), size=("len", "max"), packet=("packet", "last"))
    retx = seg[seg["copies"] > 1].reset_index()
    retx_by = retx.groupby("conn").agg(segments=("seq", "size"), largest=("size", "max"),
                                       smallest=("size", "min"), packet=("packet", "last"))
    # The largest packet that did reach the client: against the smallest lost
    # one, it tells a loss by size (a link whose MTU the packet exceeds).
    delivered = cc.reply_rows.groupby("conn")["len"].max()
    last_data = data.drop_duplicates("conn", keep="last").set_index("conn")["packet"]
    synack = synack.set_index("conn")["packet"]
    for c in conns.index[failed]:
        r = conns.loc[c]
        conn = int(r["conn"])
        res: dict = {"reset_by": None, "reset_from": None, "retransmitted_segments": 0,
                     "largest_retransmitted": None, "smallest_retransmitted": None,
                     "largest_delivered": None}
        if r["outcome"] == "reset":
            res["reset_by"] = _reset_by(ix, int(r["rst_packet"]), r["endpoint_ip"])
            res["reset_from"] = _stop(ix, int(ix.first[int(r["rst_packet"])]), "sent_by")
        if conn in retx_by.index:
            res["retransmitted_segments"] = int(retx_by.at[conn, "segments"])
            res["largest_retransmitted"] = int(retx_by.at[conn, "largest"])
            res["smallest_retransmitted"] = int(retx_by.at[conn, "smallest"])
            if conn in delivered.index:
                res["largest_delivered"] = int(delivered.at[conn])
        if conn in last_drop.index:
            row = int(ix.first[int(last_drop.at[conn, "packet"])])
            rows = ix.rows(int(last_drop.at[conn, "packet"]))
            row += int(np.flatnonzero(rows["probe_code"].to_numpy() == PROBE_DROP)[-1])
            res["stop"] = _stop(ix, row, "dropped")
        elif r["outcome"] == "reset":
            res["stop"] = _stop(ix, int(ix.first[int(r["rst_packet"])]), "sent_by")
        else:
            pkt = _expected_packet(r, conn, synack, retx_by, last_data)
            res["stop"] = _stop(ix, int(ix.last[pkt]), "last_seen") if pkt else None
        out[c] = res
    return pd.DataFrame.from_dict(out, orient="index")


def _expected_packet(r: pd.Series, conn: int, synack: pd.Series, retx_by: pd.DataFrame,
                     last_data: pd.Series) -> int | None:
    """The packet that should have reached the other side and did not."""
    if r["outcome"] in ("no_answer", "unreachable"):
        if conn in synack.index:
            return int(synack.at[conn])
        return None if np.isnan(r["last_syn_packet"]) else int(r["last_syn_packet"])
    if conn in retx_by.index:
        return int(retx_by.at[conn, "packet"])
    if conn in last_data.index:
        return int(last_data.at[conn])
    return None


__all__ = ["RST", "PacketIndex", "add_dnat", "locate", "server_rows"]
