"""Each counted connection's promise: which endpoints kube-proxy's rules
offered it, and with what share (tracer.analysis.service reads the rules).
The connections counted are the DNAT decisions (dnat_decisions: one per
connection, the first packet's DNAT).

A connection is held to its node's Service version in force when it began
(``service_history`` eras), to the frontend it came through (cluster IP,
external IP, node port: the DNAT decision's pre-NAT destination) and, under
a Local traffic policy, to its source: an external client, a pod or the node
(tracer.analysis.service.PortPromise). DNAT
decisions no Service port of the metadata covers are other Services' and are
left out. Without Service metadata every connection is promised an equal
share of the endpoints seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.addresses import endpoint
from tracer.analysis.events import PROBE_NAT
from tracer.analysis.service import Era, PromisedEndpoint, era_index, eras

Promise = tuple[PromisedEndpoint, ...] | None  # None: not this Service's; (): no metadata


@dataclass
class PromisedConnections:
    """The connections counted, their endpoint and what they were promised."""

    conns: pd.DataFrame  # the DNAT decisions of the Service (others excluded)
    endpoint: np.ndarray  # each connection's endpoint: an index into keys
    keys: list[str]  # endpoints "ip:port": the promised ones, then any others reached
    shares: np.ndarray  # (connections x keys): each connection's promised share
    excluded: int  # DNAT decisions for other services
    notes: list[str]


def _target_keys(conns: pd.DataFrame) -> np.ndarray:
    """Each connection's endpoint as "ip:port" or "[ipv6]:port" (its post-DNAT destination)."""
    if not len(conns):
        return np.array([], dtype=object)
    target = (conns["out_dst"].to_numpy().astype(np.int64) << 16) | conns[
        "out_dport"
    ].to_numpy().astype(np.int64)
    uniq_t, inv_t = np.unique(target, return_inverse=True)
    return np.array(
        [endpoint(int(c) >> 16, int(c) & 0xFFFF) for c in uniq_t] + [""], dtype=object
    )[inv_t.reshape(-1)]


def from_node(conns: pd.DataFrame) -> np.ndarray:
    """Connections the node itself opened: DNATed in the OUTPUT hook."""
    if "hook" not in conns or not len(conns):
        return np.zeros(len(conns), dtype=bool)
    return conns["hook"].astype(str).to_numpy() == "output"


def _promise_groups(
    conns: pd.DataFrame, node_names: list[str], era_lists: dict[str, list[Era]], target_key
) -> tuple[pd.DataFrame, np.ndarray]:
    """Connections sharing node, era, frontend and endpoint share a promise:
    the distinct combinations (in order of first appearance) and each
    connection's combination."""
    node_codes = conns["node"].cat.codes.to_numpy()
    era_of = np.zeros(len(conns), dtype=np.int64)
    for ni, n in enumerate(node_names):
        sel = node_codes == ni
        if sel.any():
            era_of[sel] = era_index(era_lists[n], conns["ts_ns"].to_numpy()[sel])
    combo = pd.DataFrame(
        {
            "node": node_codes,
            "era": era_of,
            "dst": conns["dst"].to_numpy(),
            "dport": conns["dport"].to_numpy(),
            "proto": conns["proto"].to_numpy(),
            "to": target_key,
            # Traffic policies make the promise depend on the source: a pod,
            # the node itself (DNATed in OUTPUT) or an external client.
            "src": conns["src"].to_numpy(),
            "from_node": from_node(conns),
        }
    )
    combo_id = (
        combo.groupby(list(combo.columns), sort=False).ngroup().to_numpy()
        if len(combo)
        else np.zeros(0, int)
    )
    return combo, combo_id


def _look_up_promises(
    combo: pd.DataFrame, node_names: list[str], era_lists: dict[str, list[Era]], known: bool
) -> tuple[list[Promise], list[str]]:
    """The promise of each combination, and the endpoints promised (in order)."""
    promises: list[Promise] = []
    keys: list[str] = []
    for row in combo.drop_duplicates().itertuples(index=False):
        promise = (
            era_lists[node_names[row.node]][row.era].promise_for(
                int(row.dst), int(row.dport), int(row.proto), row.to, int(row.src),
                bool(row.from_node),
            )
            if known
            else ()
        )
        promises.append(promise)
        for e in promise or ():
            if e.key not in keys:
                keys.append(e.key)
    return promises, keys


def _share_table(promises: list[Promise], key_index: dict[str, int]) -> np.ndarray:
    """(combinations x endpoints) promised shares."""
    k = len(key_index)
    table = np.zeros((max(len(promises), 1), k))
    for ci, promise in enumerate(promises):
        if promise:
            for e in promise:
                table[ci, key_index[e.key]] += e.share
        elif promise is not None:  # no metadata: equal over the endpoints seen
            table[ci, :] = 1.0 / max(k, 1)
    return table


def _history_notes(node_meta: dict[str, dict[str, Any]], promises: list[Promise]) -> list[str]:
    notes = []
    changes = max((len(m.get("service_history") or []) for m in node_meta.values()), default=0)
    if changes > 1:
        notes.append(
            f"the Service's endpoints changed during the capture ({changes} versions in "
            "service_history); each connection is held to the version in force when it began"
        )
    if len({p for p in promises if p is not None}) > 1:
        notes.append(
            "connections were promised different endpoint sets (frontend, node or time); "
            "expected counts follow each connection's own promise"
        )
    return notes


def dnat_decisions(ev: pd.DataFrame) -> pd.DataFrame:
    """The events counted: one per connection, the first packet's DNAT."""
    probe = ev["probe_code"].to_numpy()
    kind_codes = list(ev["nat_kind"].cat.categories)
    dnat_code = kind_codes.index("dnat") if "dnat" in kind_codes else -2
    is_dnat = (probe == PROBE_NAT) & (ev["nat_kind"].cat.codes.to_numpy() == dnat_code)
    return ev[is_dnat & ev["nat_first"].to_numpy()]


def promise_connections(
    conns: pd.DataFrame, node_meta: dict[str, dict[str, Any]]
) -> PromisedConnections:
    """conns: the DNAT decisions (nat events dnat + nat_first) of every service."""
    notes: list[str] = []
    # Without events (a quiet capture) the nodes are those of the metadata.
    node_names = list(map(str, conns["node"].cat.categories)) or list(node_meta)
    era_lists = {n: eras(node_meta.get(n, {})) for n in node_names}
    known = any(era.ports for el in era_lists.values() for era in el)
    if not known:
        notes.append("no Service in the capture metadata: promised shares unknown, assumed equal")

    target_key = _target_keys(conns)
    combo, combo_id = _promise_groups(conns, node_names, era_lists, target_key)
    promises, keys = _look_up_promises(combo, node_names, era_lists, known)
    promised_keys = list(keys)
    belongs = np.array([promises[c] is not None for c in combo_id], dtype=bool)
    excluded = int((~belongs).sum())
    conns, target_key, combo_id = conns[belongs], target_key[belongs], combo_id[belongs]
    for key in target_key:
        if key not in keys:
            keys.append(key)
    key_index = {key: i for i, key in enumerate(keys)}
    endpoint = np.array([key_index[x] for x in target_key], dtype=np.int64)
    unexpected = [x for x in keys if x not in promised_keys]
    if unexpected and known:
        notes.append(f"connections to endpoints the rules do not list: {', '.join(unexpected)}")
    table = _share_table(promises, key_index)
    shares = table[combo_id] if len(combo_id) else np.zeros((0, len(keys)))
    notes += _history_notes(node_meta, promises)
    return PromisedConnections(conns, endpoint, keys, shares, excluded, notes)
