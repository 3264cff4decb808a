"""On which node each Service endpoint lives: the Service metadata does not
say, so it is learned from the capture (packets delivered into a pod's
namespace, else the node that routes to the endpoint's IP over a pod veth).
Used by tracer.analysis.fairness, diagnose and report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.addresses import endpoint, int_to_ip
from tracer.analysis.events import PROBE_RX
from tracer.analysis.promises import dnat_decisions


def endpoint_nodes(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]]) -> dict[str, str]:
    """ip:port -> node, learned from packets delivered into a pod's namespace
    (an rx outside the node's own netns): the Service metadata does not say.
    An endpoint no packet reached is placed by the node that routes to its
    IP over a pod veth (the capture's ``workloads``), when one does."""
    out = _endpoints_reached(ev, node_meta)
    routed = {ip: node for node, m in node_meta.items() for ip in (m or {}).get("workloads") or ()}
    if routed:
        dnat = dnat_decisions(ev)
        for ip, port in zip(dnat["out_dst"].tolist(), dnat["out_dport"].tolist(), strict=True):
            key = endpoint(int(ip), int(port))
            if key not in out and int_to_ip(int(ip)) in routed:
                out[key] = routed[int_to_ip(int(ip))]
    return out


def _endpoints_reached(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]]) -> dict[str, str]:
    cats = list(map(str, ev["node"].cat.categories))
    node_ino = np.array(
        [((node_meta.get(n) or {}).get("netns") or {}).get("inode") or 0 for n in cats] + [0],
        dtype=np.int64,
    )
    codes = ev["node"].cat.codes.to_numpy()
    own = node_ino[codes]
    rx = (
        (ev["probe_code"].to_numpy() == PROBE_RX) & (own != 0) & (ev["netns_ino"].to_numpy() != own)
    )
    if not rx.any():
        return {}
    frame = pd.DataFrame(
        {"dst": ev["dst"].to_numpy()[rx], "dport": ev["dport"].to_numpy()[rx], "node": codes[rx]}
    )
    out = {}
    for row in frame.drop_duplicates().itertuples(index=False):
        out.setdefault(endpoint(int(row.dst), int(row.dport)), cats[int(row.node)])
    return out
