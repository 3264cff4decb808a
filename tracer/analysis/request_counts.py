"""Requests per connection: what exposes keep-alive pinning (one client's
connection carrying thousands of requests to one pod while connection counts
look fair).

A request is counted as a distinct TCP sequence number among the client's
PSH segments, seen where they enter the DNAT node (rx events carrying the
connection's pre-NAT tuple): HTTP clients push each request, and retransmits
repeat the sequence number. Pipelined requests written together count once;
requests split over several pushes count more than once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.events import PROBE_RX

TCP_PSH = 0x08


def requests_per_connection(ev: pd.DataFrame, conns: pd.DataFrame) -> dict[str, Any]:
    """Requests (distinct seq of client PSH segments) of each connection in conns."""
    n = len(conns)
    per_conn = np.zeros(n)
    summary: dict[str, Any] = {
        "counted": "distinct seq of the client's TCP PSH segments, at the DNAT node's ingress rx",
    }
    probe = ev["probe_code"].to_numpy()
    psh = (
        (probe == PROBE_RX)
        & (ev["proto"].to_numpy() == 6)
        & ((ev["tcp_flags"].to_numpy() & TCP_PSH) != 0)
    )
    if not n or not psh.any():
        summary.update({"connections": n, "requests": 0})
        return {"per_conn": per_conn, "summary": summary}
    keys = ["node", "src", "sport", "dst", "dport"]

    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
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

    c = keyed(conns)
    c["conn"] = np.arange(n)
    p = keyed(ev[psh])
    p["seq"] = ev["seq"].to_numpy()[psh]
    c = c.sort_values("ts")
    p = p.sort_values("ts")
    m = pd.merge_asof(p, c, on="ts", by=keys, direction="backward")
    attributed = m["conn"].notna()
    m = m[attributed].drop_duplicates(["conn", "seq"])
    per_conn = np.bincount(m["conn"].to_numpy(dtype=np.int64), minlength=n).astype(float)
    pct = np.percentile(per_conn, [50, 90, 99]) if n else [float("nan")] * 3
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
            "unattributed_psh_segments": int((~attributed).sum()),
        }
    )
    return {"per_conn": per_conn, "summary": summary}
