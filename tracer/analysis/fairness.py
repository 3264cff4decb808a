"""Does the Service spread connections the way kube-proxy's rules promise?

What is counted: one DNAT decision per connection, i.e. nat events with
``nat_kind == "dnat"`` and ``nat_first`` (the packet that walked the
KUBE-SVC/KUBE-SEP rules). Later packets reuse the conntrack binding and are
never counted, so a chatty connection weighs as much as a quiet one.

Per endpoint: observed connections against the promised share (from
``meta["service"]``, era by era when ``service_history`` shows the endpoint
set changing), a chi-square goodness-of-fit p-value, a Wilson confidence
interval on each observed share, the largest deviation, and Jain's fairness
index of observed/promised (1 = exactly as promised, 1/n = one endpoint took
everything). The same per client (pre-NAT source address) and per time window.

Requests per connection expose keep-alive pinning (one client's connection
carrying thousands of requests to one pod while connection counts look fair).
A request is counted as a distinct TCP sequence number among the client's
PSH segments, seen where they enter the DNAT node (rx events carrying the
connection's pre-NAT tuple): HTTP clients push each request, and retransmits
repeat the sequence number. Pipelined requests written together count once;
requests split over several pushes count more than once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracer.analysis.addresses import int_to_ip
from tracer.analysis.events import PROBE_NAT, PROBE_RX, EventSet
from tracer.analysis.packets import Packets
from tracer.analysis.service import era_index, eras, service_name
from tracer.analysis.stats import ChiSquare, chi_square_gof, jain_index, wilson_interval

TCP_PSH = 0x08


@dataclass
class EndpointShare:
    endpoint: str
    node: str | None
    connections: int
    observed_share: float
    promised_share: float
    expected: float
    ci_low: float
    ci_high: float
    requests: int = 0

    @property
    def deviation(self) -> float:
        return self.observed_share - self.promised_share

    @property
    def significant(self) -> bool:
        return not (self.ci_low <= self.promised_share <= self.ci_high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "node": self.node,
            "connections": self.connections,
            "observed_share": self.observed_share,
            "promised_share": self.promised_share,
            "expected": self.expected,
            "ci": [self.ci_low, self.ci_high],
            "deviation": self.deviation,
            "outside_ci": self.significant,
            "requests": self.requests,
            "requests_per_connection": self.requests / self.connections
            if self.connections
            else None,
        }


@dataclass
class GroupFairness:
    """Fairness of one set of connections (all, one client, one time window)."""

    label: str
    connections: int
    endpoints: list[EndpointShare]
    chi2: ChiSquare
    jain: float

    @property
    def largest(self) -> EndpointShare | None:
        return max(self.endpoints, key=lambda e: abs(e.deviation), default=None)

    def to_dict(self) -> dict[str, Any]:
        largest = self.largest
        return {
            "label": self.label,
            "connections": self.connections,
            "endpoints": [e.to_dict() for e in self.endpoints],
            "chi_square": self.chi2.to_dict(),
            "jain_index": self.jain,
            "largest_deviation": None
            if largest is None
            else {
                "endpoint": largest.endpoint,
                "deviation": largest.deviation,
                "ci": [
                    largest.ci_low - largest.promised_share,
                    largest.ci_high - largest.promised_share,
                ],
            },
        }


@dataclass
class FairnessReport:
    service: str
    confidence: float
    overall: GroupFairness
    per_client: list[GroupFairness]
    windows: list[GroupFairness]
    window_ns: int
    window_start_ns: int
    requests: dict[str, Any]
    excluded_dnat: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "confidence": self.confidence,
            "counted": "one DNAT decision per connection (nat_kind dnat, nat_first)",
            "overall": self.overall.to_dict(),
            "per_client": [g.to_dict() for g in self.per_client],
            "window_ns": self.window_ns,
            "window_start_ns": self.window_start_ns,
            "windows": [g.to_dict() for g in self.windows],
            "requests": self.requests,
            "excluded_dnat": self.excluded_dnat,
            "notes": self.notes,
        }


def _nice_window(span_ns: int, connections: int, min_per_window: int = 30, most: int = 10) -> int:
    """A round window length (1, 2 or 5 x 10^k ns, >= 1 ms) giving at most
    `most` windows and, on average, at least `min_per_window` connections in
    each: a chi-square of a handful of connections says nothing."""
    target = max(1, min(most, connections // min_per_window))
    raw = max(span_ns / target, 1_000_000)
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * exp >= raw:
            return int(m * exp)
    return int(10 * exp)


def _group(
    label: str,
    observed: np.ndarray,
    expected: np.ndarray,
    keys: list[str],
    nodes: list[str | None],
    confidence: float,
    requests: np.ndarray | None = None,
) -> GroupFairness:
    n = int(observed.sum())
    total_expected = float(expected.sum())
    shares = []
    for i, key in enumerate(keys):
        lo, hi = wilson_interval(observed[i], n, confidence)
        shares.append(
            EndpointShare(
                endpoint=key,
                node=nodes[i],
                connections=int(observed[i]),
                observed_share=observed[i] / n if n else float("nan"),
                promised_share=expected[i] / total_expected if total_expected else float("nan"),
                expected=float(expected[i]),
                ci_low=lo,
                ci_high=hi,
                requests=int(requests[i]) if requests is not None else 0,
            )
        )
    chi2 = chi_square_gof(observed, expected)
    promised = expected > 0
    jain = (
        jain_index(observed[promised] / expected[promised])
        if promised.any() and n
        else float("nan")
    )
    return GroupFairness(label, n, shares, chi2, jain)


def endpoint_nodes(ev: pd.DataFrame, node_meta: dict[str, dict[str, Any]]) -> dict[str, str]:
    """ip:port -> node, learned from packets delivered into a pod's namespace
    (an rx outside the node's own netns): the Service metadata does not say."""
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
        out.setdefault(f"{int_to_ip(int(row.dst))}:{int(row.dport)}", cats[int(row.node)])
    return out


def analyze(
    source: Packets | EventSet, *, window_ns: int | None = None, confidence: float = 0.95
) -> FairnessReport:
    ev = source.events
    node_meta = source.node_meta
    probe = ev["probe_code"].to_numpy()
    kind_codes = list(ev["nat_kind"].cat.categories)
    dnat_code = kind_codes.index("dnat") if "dnat" in kind_codes else -2
    is_dnat = (probe == PROBE_NAT) & (ev["nat_kind"].cat.codes.to_numpy() == dnat_code)
    conns = ev[is_dnat & ev["nat_first"].to_numpy()]

    services = [m.get("service") for m in node_meta.values() if m.get("service")]
    name = service_name(services[0] if services else None)
    notes: list[str] = []
    node_names = list(map(str, ev["node"].cat.categories))
    era_lists = {n: eras(node_meta.get(n, {})) for n in node_names}
    known = any(era.ports for el in era_lists.values() for era in el)
    if not known:
        notes.append("no Service in the capture metadata: promised shares unknown, assumed equal")

    # Each connection's promise: its node's Service version at the time, and
    # the frontend it came through (cluster IP, external IP, node port).
    target = (conns["out_dst"].to_numpy().astype(np.int64) << 16) | conns[
        "out_dport"
    ].to_numpy().astype(np.int64)
    uniq_t, inv_t = np.unique(target, return_inverse=True)
    target_key = (
        np.array(
            [f"{int_to_ip(int(c) >> 16)}:{int(c) & 0xFFFF}" for c in uniq_t] + [""], dtype=object
        )[inv_t.reshape(-1)]
        if len(conns)
        else np.array([], dtype=object)
    )
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
        }
    )
    combo_id = (
        combo.groupby(list(combo.columns), sort=False).ngroup().to_numpy()
        if len(combo)
        else np.zeros(0, int)
    )
    promises: list[tuple | None] = []
    keys: list[str] = []
    for row in combo.drop_duplicates().itertuples(index=False):
        promise = (
            era_lists[node_names[row.node]][row.era].promise_for(
                int(row.dst), int(row.dport), int(row.proto), row.to
            )
            if known
            else ()
        )
        promises.append(promise)
        for e in promise or ():
            if e.key not in keys:
                keys.append(e.key)
    promised_keys = list(keys)
    belongs = np.array([promises[c] is not None for c in combo_id], dtype=bool)
    excluded = int((~belongs).sum())
    conns, target_key, combo_id = conns[belongs], target_key[belongs], combo_id[belongs]
    for k in target_key:
        if k not in keys:
            keys.append(k)
    key_index = {k: i for i, k in enumerate(keys)}
    k = len(keys)
    ep = np.array([key_index[x] for x in target_key], dtype=np.int64)
    unexpected = [x for x in keys if x not in promised_keys]
    if unexpected and known:
        notes.append(f"connections to endpoints the rules do not list: {', '.join(unexpected)}")
    table = np.zeros((max(len(promises), 1), k))
    for ci, promise in enumerate(promises):
        if promise:
            for e in promise:
                table[ci, key_index[e.key]] += e.share
        elif promise is not None:  # no metadata: equal over the endpoints seen
            table[ci, :] = 1.0 / max(k, 1)
    share_rows = table[combo_id] if len(combo_id) else np.zeros((0, k))
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

    observed = np.bincount(ep, minlength=k).astype(float)
    expected = share_rows.sum(axis=0)
    requests = requests_per_connection(ev, conns, ep)
    req_by_ep = (
        np.bincount(ep, weights=requests["per_conn"], minlength=k) if len(ep) else np.zeros(k)
    )
    where = endpoint_nodes(ev, node_meta)
    nodes = [where.get(x) for x in keys]
    overall = _group("all", observed, expected, keys, nodes, confidence, req_by_ep)

    # Per client (pre-NAT source).
    per_client = []
    src = conns["src"].to_numpy()
    for client in np.unique(src):
        sel = src == client
        per_client.append(
            _group(
                int_to_ip(int(client)),
                np.bincount(ep[sel], minlength=k).astype(float),
                share_rows[sel].sum(axis=0),
                keys,
                nodes,
                confidence,
                np.bincount(ep[sel], weights=requests["per_conn"][sel], minlength=k),
            )
        )
    per_client.sort(key=lambda g: -g.connections)

    # Over time.
    t = conns["t"].to_numpy()
    windows = []
    start = int(t.min()) if len(t) else 0
    if window_ns is None:
        window_ns = _nice_window(int(t.max() - t.min()) if len(t) else 0, len(t))
    if len(t):
        w = (t - start) // window_ns
        for wi in np.unique(w):
            sel = w == wi
            windows.append(
                _group(
                    f"+{int(wi) * window_ns / 1e9:g}s",
                    np.bincount(ep[sel], minlength=k).astype(float),
                    share_rows[sel].sum(axis=0),
                    keys,
                    nodes,
                    confidence,
                )
            )
    return FairnessReport(
        service=name,
        confidence=confidence,
        overall=overall,
        per_client=per_client,
        windows=windows,
        window_ns=int(window_ns),
        window_start_ns=start,
        requests=requests["summary"],
        excluded_dnat=excluded,
        notes=notes,
    )


def requests_per_connection(
    ev: pd.DataFrame, conns: pd.DataFrame, ep: np.ndarray
) -> dict[str, Any]:
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


# ---------------------------------------------------------------- text


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def _verdict(g: GroupFairness, alpha: float) -> str:
    c = g.chi2
    if c.impossible:
        return "p = 0: connections reached endpoints the rules never choose"
    if c.p_value != c.p_value:
        return "p-value n/a (one endpoint)"
    verdict = "deviates from the promise" if c.p_value < alpha else "consistent with the promise"
    caveat = "" if c.reliable else " (expected counts < 5: approximate)"
    return f"chi-square {c.statistic:.2f} (df {c.df}), p = {c.p_value:.3g}: {verdict}{caveat}"


def format_text(report: FairnessReport, max_rows: int = 10) -> str:
    o = report.overall
    alpha = 1 - report.confidence
    ci = f"{round(100 * report.confidence)}% CI"
    lines = [
        f"Service {report.service}: {o.connections} new connections "
        f"(DNAT decisions: nat events dnat + nat_first; never per packet)"
    ]
    heads = [
        "endpoint",
        "node",
        "conns",
        "observed",
        "promised",
        ci,
        "deviation",
        "requests",
        "req/conn",
    ]
    rows = []
    for e in o.endpoints:
        rows.append(
            [
                e.endpoint,
                e.node or "",
                str(e.connections),
                _pct(e.observed_share),
                _pct(e.promised_share),
                f"[{_pct(e.ci_low)}, {_pct(e.ci_high)}]",
                f"{100 * e.deviation:+.1f} pts" + (" *" if e.significant else ""),
                str(e.requests),
                f"{e.requests / e.connections:.2f}" if e.connections else "-",
            ]
        )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)
    ]
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
    for r in rows:
        lines.append(
            "  "
            + "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    lines.append(f"  {_verdict(o, alpha)}")
    big = o.largest
    if big is not None:
        lines.append(
            f"  largest deviation: {big.endpoint} {100 * big.deviation:+.1f} points "
            f"({ci} {100 * (big.ci_low - big.promised_share):+.1f} .. "
            f"{100 * (big.ci_high - big.promised_share):+.1f})"
            + ("  * promised share outside the CI" if big.significant else "")
        )
    lines.append(f"  Jain's fairness index of observed/promised: {o.jain:.4f} (1 = as promised)")
    r = report.requests
    if r.get("per_connection"):
        pc = r["per_connection"]
        lines.append(
            f"\nRequests per connection ({r['counted']}): "
            f"mean {pc['mean']:.2f}, p50 {pc['p50']:g}, "
            f"p90 {pc['p90']:g}, p99 {pc['p99']:g}, max {pc['max']:g}"
        )
    if report.per_client:
        lines.append(
            f"\nPer client (pre-NAT source), {min(max_rows, len(report.per_client))} of "
            f"{len(report.per_client)} by connections:"
        )
        for g in report.per_client[:max_rows]:
            counts = " ".join(f"{e.connections}" for e in g.endpoints)
            req = sum(e.requests for e in g.endpoints)
            lines.append(
                f"  {g.label:<16} conns {g.connections:>6}  per endpoint [{counts}]  "
                f"req/conn {req / g.connections if g.connections else 0:.2f}  "
                f"Jain {g.jain:.3f}  p {g.chi2.p_value:.3g}"
            )
    if report.windows:
        lines.append(f"\nOver time (windows of {report.window_ns / 1e9:g} s):")
        for g in report.windows[: max_rows * 5]:
            counts = " ".join(f"{e.connections}" for e in g.endpoints)
            lines.append(
                f"  {g.label:>8}  conns {g.connections:>6}  per endpoint [{counts}]  "
                f"Jain {g.jain:.3f}  p {g.chi2.p_value:.3g}"
            )
    if report.excluded_dnat:
        lines.append(
            f"\n{report.excluded_dnat} DNAT decisions were for other services and not counted"
        )
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
