"""Requests per connection: what exposes keep-alive pinning (one client's
connection carrying thousands of requests to one pod while connection counts
look fair).

A request is counted as a distinct TCP sequence number among the client's
PSH segments, seen where they enter the DNAT node (rx events carrying the
connection's pre-NAT tuple): HTTP clients push each request, and retransmits
repeat the sequence number. Pipelined requests written together count once;
requests split over several pushes count more than once.

For a UDP flow (one conntrack entry: one DNAT decision) a request is each
datagram the client sent in it, seen at the same place: a DNS query is one
datagram, and a resolver's retry from the same port is another request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.events import PROBE_RX

TCP_PSH = 0x08
TCP, UDP = 6, 17
COUNTED_TCP = "distinct seq of the client's TCP PSH segments, at the DNAT node's ingress rx"
COUNTED_UDP = "the client's datagrams of the UDP flow, at the DNAT node's ingress rx"
_KEYS = ["node", "src", "sport", "dst", "dport"]


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "node": frame["node"].cat.codes.to_numpy().astype(np.int64),
            "src": frame["src"].to_numpy().astype(np.int64),
            "sport": frame["sport"].to_numpy().astype(np.int64),
            "dst": frame["dst"].to_numpy().astype(np.int64),
            "dport": frame["dport"].to_numpy().astype(np.int64),
            "ts": frame["ts_ns"].to_numpy().astype(np.int64),
        }
    )


def _attribute(sent: pd.DataFrame, starts: pd.DataFrame) -> pd.DataFrame:
    """Each sent row (keyed) to the latest connection of its tuple begun at
    or before it (``conn`` NaN when none)."""
    return pd.merge_asof(sent.sort_values("ts"), starts.sort_values("ts"), on="ts", by=_KEYS,
                         direction="backward")


def _tcp_requests(ev: pd.DataFrame, c: pd.DataFrame, n: int) -> tuple[np.ndarray, int, bool]:
    """Per connection: distinct seq of its client PSH segments; the PSH
    segments no connection took; whether there was any."""
    psh = (
        (ev["probe_code"].to_numpy() == PROBE_RX)
        & (ev["proto"].to_numpy() == TCP)
        & ((ev["tcp_flags"].to_numpy() & TCP_PSH) != 0)
    )
    if not psh.any():
        return np.zeros(n), 0, False
    if not len(c):  # every connection is a UDP flow
        return np.zeros(n), int(psh.sum()), True
    p = _keyed(ev[psh])
    p["seq"] = ev["seq"].to_numpy()[psh]
    m = _attribute(p, c)
    attributed = m["conn"].notna()
    m = m[attributed].drop_duplicates(["conn", "seq"])
    per_conn = np.bincount(m["conn"].to_numpy(dtype=np.int64), minlength=n).astype(float)
    return per_conn, int((~attributed).sum()), True


def _udp_requests(ev: pd.DataFrame, c: pd.DataFrame, n: int) -> np.ndarray:
    """Per flow: its client datagrams (a DNS query is one). A flow begins
    with the rx of the datagram its DNAT decision was made for (same node,
    tuple and skb, just before the nat event), so that datagram counts too."""
    rx = (ev["probe_code"].to_numpy() == PROBE_RX) & (ev["proto"].to_numpy() == UDP)
    if not rx.any() or not len(c):
        return np.zeros(n)
    d = _keyed(ev[rx])
    d["skb"] = ev["skb"].to_numpy()[rx].astype(np.uint64)
    d["packet"] = ev["packet"].to_numpy()[rx] if "packet" in ev else np.arange(len(d))
    first_rx = pd.merge_asof(c.sort_values("ts"), d[[*_KEYS, "ts", "skb"]].assign(
        rx_ts=d["ts"]).sort_values("ts"), on="ts", by=[*_KEYS, "skb"], direction="backward")
    starts = first_rx.assign(ts=first_rx["rx_ts"].fillna(first_rx["ts"]).astype(np.int64))
    m = _attribute(d, starts[[*_KEYS, "ts", "conn"]])
    m = m[m["conn"].notna()].drop_duplicates(["conn", "packet"])
    return np.bincount(m["conn"].to_numpy(dtype=np.int64), minlength=n).astype(float)


def requests_per_connection(ev: pd.DataFrame, conns: pd.DataFrame) -> dict[str, Any]:
    """Requests of each connection in conns (DNAT decisions): distinct seq of
    client PSH segments for TCP, client datagrams for a UDP flow."""
    n = len(conns)
    udp = conns["proto"].to_numpy() == UDP
    counted = [COUNTED_TCP] * bool(not udp.all() or not n) + [COUNTED_UDP] * bool(udp.any())
    summary: dict[str, Any] = {"counted": "; for UDP flows: ".join(counted)}
    c = _keyed(conns)
    c["conn"] = np.arange(n)
    c["skb"] = conns["skb"].to_numpy().astype(np.uint64) if n else np.zeros(0, np.uint64)
    per_conn, unattributed, pushed = _tcp_requests(ev, c[~udp].drop(columns="skb"), n)
    per_conn += _udp_requests(ev, c[udp], n)
    if not n or not (pushed or udp.any()):
        summary.update({"connections": n, "requests": 0})
        return {"per_conn": per_conn, "summary": summary}
    pct = np.percentile(per_conn, [50, 90, 99])
    summary.update(
        {
            "connections": n,
            "requests": int(per_conn.sum()),
            "per_connection": {
                "mean": float(per_conn.mean()),
                "p50": float(pct[0]),
                "p90": float(pct[1]),
                "p99": float(pct[2]),
                "max": float(per_conn.max()),
            },
            "unattributed_psh_segments": unattributed,
        }
    )
    return {"per_conn": per_conn, "summary": summary}
