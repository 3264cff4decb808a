"""Each client UDP flow to the Service and how it ended, as the client saw it.

UDP has no handshake: what conntrack (and so kube-proxy's DNAT) knows as one
connection is a flow, a pre-NAT client tuple (client ip and port -> Service
frontend ip and port, proto udp). A DNS client sending each query from a new
source port makes one flow per query. A flow begins with the first datagram
of its tuple in the capture, or with a later one that conntrack bound afresh
(its DNAT event is ``nat_first``: the old entry had expired or was deleted,
as kube-proxy does for a removed endpoint); a tuple whose first datagram
reused a binding made before the capture (DNAT not ``nat_first``) is counted
as ``already_open`` and not judged.

As for TCP (tracer.analysis.outcomes), the client's side is the first ``rx``
of each datagram toward a frontend, and the last ``tx`` of each datagram
whose source is a frontend (a pod's answer after reverse NAT). Outcomes:

- ``answered``: a datagram went back to the client;
- ``unreachable``: no answer and an ICMP error was sent for the flow
  (tracer.analysis.icmp, judged by tracer.analysis.diagnose);
- ``no_answer``: no answer and no ICMP error; like TCP's, judged only when
  the capture went on SETTLE_NS after the flow's last packet and lost no
  event, otherwise ``undetermined``.

The flows come out in the shape of tracer.analysis.outcomes's connections
(``ClientConnections``) so tracer.analysis.journeys and icmp follow them the
same way: every client datagram is marked ``is_syn`` (each asks for the
answer, as a SYN does), ``last_syn_packet`` is the flow's last client
datagram, ``syns`` is 0 (a datagram sent again is not a SYN retransmission)
and ``datagrams`` / ``answers`` count the datagrams each way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.events import PROBE_NAT
from tracer.analysis.outcomes import OUTCOMES, ClientConnections, client_and_reply

UDP, TCP = 17, 6
ANSWERED = "answered"
UDP_OUTCOMES = (ANSWERED, "unreachable", "no_answer")
# Every outcome diagnose counts, TCP's with UDP's "answered" after "succeeded".
ALL_OUTCOMES = (OUTCOMES[0], ANSWERED, *OUTCOMES[1:])


def _fresh_bindings(ev: pd.DataFrame) -> tuple[set[int], set[int]]:
    """Packets whose DNAT made a new conntrack binding, and packets whose
    DNAT reused one."""
    dnat = ev[(ev["probe_code"].to_numpy() == PROBE_NAT) & (ev["nat_kind"] == "dnat").to_numpy()]
    first = dnat["nat_first"].to_numpy().astype(bool)
    fresh = set(dnat["packet"].to_numpy()[first].tolist())
    return fresh, set(dnat["packet"].to_numpy()[~first].tolist()) - fresh


def _number_flows(client: pd.DataFrame, ev: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Number client datagrams by flow (column ``conn``); the datagrams of
    flows bound before the capture are left out and their tuples counted."""
    c = client.sort_values(["k1", "k2", "t", "row"], kind="stable").reset_index(drop=True)
    if c.empty:
        return c.assign(conn=np.zeros(0, np.int64), is_syn=np.zeros(0, bool),
                        starts=np.zeros(0, bool)), 0
    fresh, reused = _fresh_bindings(ev)
    packet = c["packet"].to_numpy()
    k1, k2 = c["k1"].to_numpy(), c["k2"].to_numpy()
    group_start = np.r_[True, (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])]
    is_fresh = np.isin(packet, list(fresh))
    was_bound = np.isin(packet, list(reused))
    starts = is_fresh | (group_start & ~was_bound)
    group = np.cumsum(group_start) - 1
    csum = np.cumsum(starts)
    before_group = (csum - starts)[np.flatnonzero(group_start)][group]
    conn = np.where(csum > before_group, csum - 1, -1)
    c = c.assign(conn=conn, is_syn=True, starts=starts)
    orphans = c[conn < 0]
    return c[conn >= 0], int(orphans[["k1", "k2"]].drop_duplicates().shape[0])


def find_flows(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]]) -> ClientConnections:
    """The client UDP flows in the packets' events (tracer.analysis.packets
    columns), judged answered or no_answer."""
    client, reply = client_and_reply(ev, node_meta, UDP)
    client, already_open = _number_flows(client, ev)
    starts = client[client["starts"]][["k1", "k2", "t", "conn"]].sort_values("t")
    reply = pd.merge_asof(
        reply.sort_values("t"), starts, on="t", by=["k1", "k2"], direction="backward"
    )
    reply = reply[reply["conn"].notna()].astype({"conn": np.int64})
    return ClientConnections(_judge(client, reply, starts), client, reply, already_open)


def _judge(client: pd.DataFrame, reply: pd.DataFrame, starts: pd.DataFrame) -> pd.DataFrame:
    """Per flow: the columns of a TCP connection (tracer.analysis.outcomes)
    that mean something for UDP, the others neutral, and the outcome."""
    n = int(starts["conn"].max()) + 1 if len(starts) else 0
    flows = pd.DataFrame({"conn": np.arange(n)})
    idx = flows["conn"]
    first = client[client["starts"]].set_index("conn")
    flows["start_t"] = first["t"].reindex(idx).to_numpy()
    flows["client_ip"] = first["src"].reindex(idx).to_numpy()
    flows["client_port"] = first["sport"].reindex(idx).to_numpy()
    flows["frontend_ip"] = first["dst"].reindex(idx).to_numpy()
    flows["frontend_port"] = first["dport"].reindex(idx).to_numpy()
    flows["isn"] = np.nan
    flows["ingress_node"] = first["node"].astype(str).reindex(idx).to_numpy()
    flows["syns"] = 0
    flows["last_syn_packet"] = client.groupby("conn")["packet"].last().reindex(idx).to_numpy(
        dtype=np.float64)
    flows["synack_sent"] = False
    flows["rst_packet"] = np.nan
    flows["handshake"] = False
    answers = reply.groupby("conn").size().reindex(idx, fill_value=0).to_numpy()
    flows["data_to_client"] = answers
    flows["data_acked"] = False
    flows["datagrams"] = client.groupby("conn").size().reindex(idx, fill_value=0).to_numpy()
    flows["answers"] = answers
    last_c = client.groupby("conn")["t"].max().reindex(idx)
    last_r = reply.groupby("conn")["t"].max().reindex(idx)
    flows["last_t"] = np.fmax(last_c.to_numpy(np.float64), last_r.to_numpy(np.float64))
    flows["outcome"] = np.where(answers > 0, ANSWERED, "no_answer")
    flows["proto"] = UDP
    return flows


def _after(first: pd.DataFrame, then: pd.DataFrame, by: int) -> pd.DataFrame:
    """first, then the rows of then with conn shifted by `by` (an empty side
    left out: concatenating it would blur the other's column types)."""
    then = then.assign(conn=then["conn"].to_numpy(np.int64) + by)
    if not len(then):
        return first.reset_index(drop=True)
    if not len(first):
        return then.reset_index(drop=True)
    return pd.concat([first, then], ignore_index=True)


def client_flows(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]],
                 tcp: ClientConnections) -> ClientConnections:
    """TCP connections (already found) and UDP flows in one set: the flows
    numbered after the connections; ``proto`` tells them apart."""
    udp = find_flows(ev, node_meta)
    n = len(tcp.conns)
    conns = _after(tcp.conns.assign(proto=TCP, datagrams=0, answers=0), udp.conns, n)
    client = _after(tcp.client_rows, udp.client_rows, n)
    reply = _after(tcp.reply_rows, udp.reply_rows, n)
    return ClientConnections(conns, client, reply, tcp.already_open + udp.already_open)
