"""Where kube-proxy promises a client's address reaches the pod unchanged,
and the connections whose source was rewritten anyway.

Under externalTrafficPolicy Local, kube-proxy does not masquerade external
clients that come through an external IP, a load-balancer IP or a node port
(KUBE-EXT / external-<B> has no unconditional KUBE-MARK-MASQ; only the node's
own traffic is marked, and pods are short-circuited to the cluster chain).
The endpoint is on the node, so the reply comes back through it without
SNAT. A SNAT of such a connection in POSTROUTING (a masquerade by another
rule, a CNI, a stray MASQUERADE) breaks that promise: the pod sees the node's
address instead of the client's. The check joins each such connection's DNAT
decision with the first SNAT of the same (post-DNAT) tuple on the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.addresses import endpoint
from tracer.analysis.events import PROBE_NAT
from tracer.analysis.promises import from_node
from tracer.analysis.service import era_index, eras

_KEY = ["node", "src", "sport", "dst", "dport", "proto"]


@dataclass(frozen=True)
class SourceRewrite:
    """One connection kube-proxy promised not to masquerade, masqueraded."""

    node: str
    client: str  # ip:port as the client sent it
    frontend: str  # the Service address it reached (before DNAT)
    endpoint: str  # the pod (after DNAT)
    seen_as: str  # the source the pod saw (after SNAT)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        return (f"{self.client} -> {self.frontend} reached {self.endpoint} as "
                f"{self.seen_as} on {self.node}")


def _preserving(conns: pd.DataFrame, node_meta: dict[str, dict[str, Any]]) -> np.ndarray:
    """Which DNAT decisions kube-proxy promised to leave the source of."""
    out = np.zeros(len(conns), dtype=bool)
    if not len(conns):
        return out
    local = from_node(conns)
    nodes = conns["node"].astype(str).to_numpy()
    for node in np.unique(nodes):
        era_list = eras(node_meta.get(node, {}))
        sel = np.flatnonzero(nodes == node)
        era_of = era_index(era_list, conns["ts_ns"].to_numpy()[sel])
        rows = zip(era_of.tolist(), conns["dst"].to_numpy()[sel].tolist(),
                   conns["dport"].to_numpy()[sel].tolist(),
                   conns["proto"].to_numpy()[sel].tolist(),
                   conns["src"].to_numpy()[sel].tolist(), local[sel].tolist(), strict=True)
        cache: dict[tuple, bool] = {}
        for i, key in zip(sel, rows, strict=True):
            if key not in cache:
                era, dst, dport, proto, src, mine = key
                cache[key] = any(p.preserves_source(dst, dport, proto, src, mine)
                                 for p in era_list[era].ports)
            out[i] = cache[key]
    return out


def rewritten_sources(
    ev: pd.DataFrame, conns: pd.DataFrame, node_meta: dict[str, dict[str, Any]]
) -> list[SourceRewrite]:
    """The connections among conns (first-packet DNAT decisions) whose source
    kube-proxy promised to keep and a SNAT on the same node rewrote."""
    kept = conns[_preserving(conns, node_meta)]
    if not len(kept):
        return []
    kinds = ev["nat_kind"].astype(str).to_numpy()
    snat = ev[(ev["probe_code"].to_numpy() == PROBE_NAT) & (kinds == "snat")
              & ev["nat_first"].to_numpy()]
    if not len(snat):
        return []
    # The SNAT sees the tuple after DNAT: the client's source, the endpoint.
    left = pd.DataFrame({
        "node": kept["node"].astype(str).to_numpy(), "src": kept["src"].to_numpy(),
        "sport": kept["sport"].to_numpy(), "dst": kept["out_dst"].to_numpy(),
        "dport": kept["out_dport"].to_numpy(), "proto": kept["proto"].to_numpy(),
        "frontend_ip": kept["dst"].to_numpy(), "frontend_port": kept["dport"].to_numpy(),
    })
    right = pd.DataFrame({
        "node": snat["node"].astype(str).to_numpy(), "src": snat["src"].to_numpy(),
        "sport": snat["sport"].to_numpy(), "dst": snat["dst"].to_numpy(),
        "dport": snat["dport"].to_numpy(), "proto": snat["proto"].to_numpy(),
        "new_src": snat["out_src"].to_numpy(), "new_sport": snat["out_sport"].to_numpy(),
    }).drop_duplicates(_KEY)
    both = left.merge(right, on=_KEY)
    both = both[both["new_src"].to_numpy() != both["src"].to_numpy()]
    return [
        SourceRewrite(
            node=str(r.node), client=endpoint(int(r.src), int(r.sport)),
            frontend=endpoint(int(r.frontend_ip), int(r.frontend_port)),
            endpoint=endpoint(int(r.dst), int(r.dport)),
            seen_as=endpoint(int(r.new_src), int(r.new_sport)),
        )
        for r in both.itertuples(index=False)
    ]


def rewrite_notes(rewrites: list[SourceRewrite], shown: int = 3) -> list[str]:
    """One note for `tracer fairness` (none when the promise was kept)."""
    if not rewrites:
        return []
    listed = "; ".join(r.text() for r in rewrites[:shown])
    more = f" (and {len(rewrites) - shown} more)" if len(rewrites) > shown else ""
    return [
        f"{len(rewrites)} connection(s) from external clients to an externalTrafficPolicy "
        f"Local address were masqueraded, though kube-proxy keeps their source: {listed}{more}"
    ]
