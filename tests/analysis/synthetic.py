"""Synthetic captures of the seed scenario, with the ground truth kept aside.

Client(s) 192.168.64.x connect to the Service's external IP 192.168.64.57:8088
on node A (lab-node-a). kube-proxy DNATs each new connection to a pod, either
10.217.120.72:80 on node A or 10.217.121.8:80 on node B (lab-node-b,
192.168.64.58), and MASQUERADEs the source to 192.168.64.57. A request to the
pod on B leaves A's eth0, enters B's eth0, leaves through B's cali veth and
arrives on the pod's eth0; the reply comes back the same way and node A
un-NATs it (rev_snat in prerouting, rev_dnat in postrouting).

Each node records what *it* sees, with its own CLOCK_MONOTONIC and its own
(possibly wrong) idea of UTC, exactly like two real captures: skb addresses
are per node and reused (including the kernel's LIFO habit of handing the
freed request's skb to the pod's reply), TTL drops at each routed hop, IP ID /
seq / ack / length survive forwarding, ports and addresses change only at NAT.

Everything is generated with numpy, a connection template at a time, so the
benchmark can make a million events in about a second. The truth (which
packet each event belongs to, each connection's endpoint, each node's clock
error) is returned next to the events, never written into the capture.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tracer.analysis.addresses import ints_to_strings, ip_to_int
from tracer.capfile import COLUMN_NAMES, COLUMNS, SCHEMA, CaptureWriter, prepare_directory, write_meta
from tracer.capfile.rolling import RollPolicy
from tracer.histograms import log2_buckets_of

# A writer policy under which every part stands as a segment of its own, for
# tests that need a capture of many parts (segments of at most one byte).
KEEP_EVERY_PART = RollPolicy(segment_bytes=1)

NODE_A, NODE_B = "lab-node-a", "lab-node-b"
NODE_A_IP, NODE_B_IP = "192.168.64.57", "192.168.64.58"
VIP, VIP_PORT, POD_PORT = "192.168.64.57", 8088, 80
START_UTC_NS = int(datetime(2026, 11, 25, 10, 40, tzinfo=UTC).timestamp()) * 10**9


@dataclass(frozen=True)
class Pod:
    ip: str
    node: str
    netns: str
    netns_ino: int
    veth: str  # host side, in the node's namespace
    veth_ifindex: int
    chain: str


PODS = (
    Pod(
        "10.217.120.72",
        NODE_A,
        "lab-pod-nginx-demo-1-7c9f4",
        4026532460,
        "cali3f1e2a4b5c6",
        7,
        "KUBE-SEP-CRT5ID3374EWFAWN",
    ),
    Pod(
        "10.217.121.8",
        NODE_B,
        "lab-pod-nginx-demo-1-x2k8p",
        4026532545,
        "cali1087c975dd9",
        9,
        "KUBE-SEP-SRE6BJUIAABTZ4UR",
    ),
)
NODE_NETNS_INO = {NODE_A: 4026532281, NODE_B: 4026532377}
NODE_BOOT_NS = {NODE_A: START_UTC_NS - 5 * 3600 * 10**9, NODE_B: START_UTC_NS - 7 * 3600 * 10**9}
NODE_SKB_BASE = {NODE_A: 0xFFFF8881_0A000000, NODE_B: 0xFFFF8882_3C000000}
NODE_CT_BASE = {NODE_A: 0xFFFF8881_7E000000, NODE_B: 0xFFFF8882_41000000}
ETH0_IFINDEX, POD_ETH0_IFINDEX = 2, 3


@dataclass
class Scenario:
    connections: int = 200
    rate_per_s: float = 400.0
    clients: Sequence[str] = ("192.168.64.10",)
    client_weights: Sequence[float] | None = None
    requests_per_connection: int = 1
    # Keep-alive pinning: these clients send this many requests per connection.
    pinned_clients: dict[str, int] = field(default_factory=dict)
    # Clients whose every connection goes to one endpoint (index into PODS).
    sticky_clients: dict[str, int] = field(default_factory=dict)
    # kube-proxy's statistic probabilities (the last endpoint takes the rest).
    probabilities: Sequence[float] = (0.5,)
    # How DNAT really chose; None = as promised.
    actual_shares: Sequence[float] | None = None
    # What each node's UTC clock is off by (time_ns error), ns.
    clock_error_ns: dict[str, int] = field(default_factory=lambda: {NODE_A: 0, NODE_B: 0})
    # One-way wire delay A->B and B->A: (minimum, mean of the exponential extra), ns.
    delay_ab_ns: tuple[int, int] = (18_000, 6_000)
    delay_ba_ns: tuple[int, int] = (18_000, 6_000)
    # Fraction of requests to the remote pod dropped on node B (then retransmitted).
    drop_fraction: float = 0.0
    drop_reason: str = "NETFILTER_DROP"
    # Fraction of remote replies duplicated on the wire (same fingerprint: ambiguous).
    duplicate_fraction: float = 0.0
    # Fraction of pod replies that reuse the skb freed by the request (LIFO slab).
    skb_reuse_fraction: float = 0.7
    skb_pool: int = 512
    think_ns: int = 2_000_000
    lost_events: dict[str, int] = field(default_factory=dict)
    # kube-proxy rules changing mid-capture: from this many seconds after the
    # first connection, these probabilities (recorded in service_history).
    change_after_s: float | None = None
    changed_probabilities: Sequence[float] = (0.8,)
    seed: int = 1


@dataclass
class Simulation:
    scenario: Scenario
    events: dict[str, pd.DataFrame]  # node -> capture columns + truth columns
    metas: dict[str, dict[str, Any]]
    connections: pd.DataFrame  # truth per connection

    @property
    def nodes(self) -> list[str]:
        return list(self.events)

    def write(self, root: Path, *, part_seconds: float = 1.0,
              policy: RollPolicy | None = None) -> dict[str, Path]:
        """One capture directory per node under root; returns node -> path."""
        out = {}
        for node, frame in self.events.items():
            path = Path(root) / node
            write_capture(path, frame, self.metas[node], part_seconds=part_seconds, policy=policy)
            out[node] = path
        return out


# Packet kinds within a connection, in order.
SYN, SYNACK, ACK_HS, REQ, RESP, ACK_DATA, FIN, FINACK, LAST_ACK = range(9)
CLIENT_SENDS = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
KIND_FLAGS = np.array([0x02, 0x12, 0x10, 0x18, 0x18, 0x10, 0x11, 0x11, 0x10], dtype=np.uint8)

# Hop templates: (node, probe, hook, where, stage, nat_kind, ttl, delay_min, delay_mean).
# where: "eth0", "veth" (host side of the pod's veth), "pod" (the pod's eth0).
# stage: which tuple the packet carries (0 as sent; nat hops rewrite stage -> stage+1).
_A, _B = NODE_A, NODE_B
PATHS = {
    "c2s_remote": [
        (_A, "rx", "", "eth0", 0, "", 64, 0, 0),
        (_A, "nat", "prerouting", "eth0", 0, "dnat", 64, 800, 400),
        (_A, "nat", "postrouting", "eth0", 1, "snat", 63, 2_000, 800),
        (_A, "tx", "", "eth0", 2, "", 63, 1_000, 500),
        (_B, "rx", "", "eth0", 2, "", 63, -1, -1),  # wire A->B
        (_B, "tx", "", "veth", 2, "", 62, 3_000, 1_000),
        (_B, "rx", "", "pod", 2, "", 62, 4_000, 2_000),
    ],
    "c2s_local": [
        (_A, "rx", "", "eth0", 0, "", 64, 0, 0),
        (_A, "nat", "prerouting", "eth0", 0, "dnat", 64, 800, 400),
        (_A, "nat", "postrouting", "veth", 1, "snat", 63, 2_000, 800),
        (_A, "tx", "", "veth", 2, "", 63, 1_000, 500),
        (_A, "rx", "", "pod", 2, "", 63, 4_000, 2_000),
    ],
    "c2s_dropped": [
        (_A, "rx", "", "eth0", 0, "", 64, 0, 0),
        (_A, "nat", "prerouting", "eth0", 0, "dnat", 64, 800, 400),
        (_A, "nat", "postrouting", "eth0", 1, "snat", 63, 2_000, 800),
        (_A, "tx", "", "eth0", 2, "", 63, 1_000, 500),
        (_B, "rx", "", "eth0", 2, "", 63, -1, -1),
        (_B, "drop", "", "eth0", 2, "", 62, 2_000, 500),
    ],
    "s2c_remote": [
        (_B, "tx", "", "pod", 0, "", 64, 0, 0),
        (_B, "rx", "", "veth", 0, "", 64, 4_000, 2_000),
        (_B, "tx", "", "eth0", 0, "", 63, 3_000, 1_000),
        (_A, "rx", "", "eth0", 0, "", 63, -2, -2),  # wire B->A
        (_A, "nat", "prerouting", "eth0", 0, "rev_snat", 63, 800, 400),
        (_A, "nat", "postrouting", "eth0", 1, "rev_dnat", 62, 2_000, 800),
        (_A, "tx", "", "eth0", 2, "", 62, 1_000, 500),
    ],
    "s2c_local": [
        (_A, "tx", "", "pod", 0, "", 64, 0, 0),
        (_A, "rx", "", "veth", 0, "", 64, 4_000, 2_000),
        (_A, "nat", "prerouting", "veth", 0, "rev_snat", 64, 800, 400),
        (_A, "nat", "postrouting", "eth0", 1, "rev_dnat", 63, 2_000, 800),
        (_A, "tx", "", "eth0", 2, "", 63, 1_000, 500),
    ],
}
PATH_NAMES = list(PATHS)
MAX_HOPS = max(len(p) for p in PATHS.values())

# NAT hook time, ns: (median, lognormal sigma). The first packet walks the
# rules and creates the conntrack binding (~15 us measured); later packets
# reuse the binding (~0.5-0.7 us).
NAT_NS = {
    ("dnat", True): (15_000, 0.25),
    ("snat", True): (6_000, 0.3),
    ("dnat", False): (600, 0.2),
    ("snat", False): (500, 0.2),
    ("rev_snat", False): (550, 0.2),
    ("rev_dnat", False): (500, 0.2),
}


def shares_from_probabilities(probabilities: Sequence[float], n: int) -> list[float]:
    """kube-proxy's cascade: rule i matches with p_i among what rules < i left."""
    p = [*list(probabilities)[: n - 1], 1.0]
    shares, left = [], 1.0
    for pi in p:
        shares.append(left * pi)
        left *= 1 - pi
    return shares


def service_meta(probabilities: Sequence[float], pods: Sequence[Pod] = PODS) -> dict[str, Any]:
    """As tracer.kube.iptables_parse.ResolvedService.to_dict() writes it."""
    shares = shares_from_probabilities(probabilities, len(pods))
    probs = [*list(probabilities)[: len(pods) - 1], 1.0]
    return {
        "namespace": "default",
        "name": "nginx-demo-1",
        "name_source": "comment",
        "ports": [
            {
                "port_name": "",
                "protocol": "tcp",
                "port": VIP_PORT,
                "cluster_ips": ["10.96.112.40"],
                "external_ips": [VIP],
                "load_balancer_ips": [],
                "node_port": None,
                "service_chain": "KUBE-SVC-JKOCBQALQGD3X3RT",
                "external_chain": "KUBE-EXT-JKOCBQALQGD3X3RT",
                "local_chain": None,
                "firewall_chain": None,
                "external_policy": "Cluster",
                "endpoints": [
                    {
                        "ip": pod.ip,
                        "port": POD_PORT,
                        "protocol": "tcp",
                        "probability": prob,
                        "share": share,
                        "chain": pod.chain,
                    }
                    for pod, prob, share in zip(pods, probs, shares, strict=True)
                ],
                "local_endpoints": [],
            }
        ],
    }


def _grouped_exclusive_cumsum(values: np.ndarray, group_start: np.ndarray, group_of: np.ndarray):
    total = np.cumsum(values) - values
    return total - total[group_start][group_of]


def simulate(sc: Scenario) -> Simulation:
    rng = np.random.default_rng(sc.seed)
    n_conn = sc.connections

    # ---- connections ----
    clients = np.array(list(sc.clients))
    weights = (
        None
        if sc.client_weights is None
        else np.asarray(sc.client_weights) / np.sum(sc.client_weights)
    )
    client_idx = rng.choice(len(clients), size=n_conn, p=weights)
    conn_start = (
        START_UTC_NS
        + 50_000_000
        + np.cumsum(rng.exponential(1e9 / sc.rate_per_s, n_conn)).astype(np.int64)
    )
    shares = sc.actual_shares or shares_from_probabilities(sc.probabilities, len(PODS))
    endpoint = rng.choice(len(PODS), size=n_conn, p=np.asarray(shares) / np.sum(shares))
    change_at = None
    if sc.change_after_s is not None:
        change_at = int(conn_start[0] + sc.change_after_s * 1e9)
        later = conn_start >= change_at
        new_shares = np.asarray(shares_from_probabilities(sc.changed_probabilities, len(PODS)))
        endpoint[later] = rng.choice(
            len(PODS), size=int(later.sum()), p=new_shares / new_shares.sum()
        )
    for client, ep in sc.sticky_clients.items():
        endpoint[clients[client_idx] == client] = ep
    requests = np.full(n_conn, sc.requests_per_connection, dtype=np.int64)
    for client, r in sc.pinned_clients.items():
        requests[clients[client_idx] == client] = r
    # Ephemeral ports: sequential per client from a random base, so a 4-tuple
    # is not reused within a capture (as with Linux's port allocator and TIME_WAIT).
    client_port = np.zeros(n_conn, dtype=np.int64)
    for ci in range(len(clients)):
        sel = np.flatnonzero(client_idx == ci)
        base = rng.integers(32768, 60000)
        client_port[sel] = 32768 + (base - 32768 + np.arange(len(sel)) * 7) % 28000
    isn_c = rng.integers(0, 2**32, n_conn, dtype=np.int64)
    isn_s = rng.integers(0, 2**32, n_conn, dtype=np.int64)
    id_c = rng.integers(0, 2**16, n_conn, dtype=np.int64)
    id_s = rng.integers(0, 2**16, n_conn, dtype=np.int64)

    # ---- packets: SYN, SYN-ACK, ACK, (REQ, RESP, ACK) * r, FIN, FIN-ACK, ACK ----
    n_pk = 6 + 3 * requests
    conn = np.repeat(np.arange(n_conn), n_pk)
    first = np.cumsum(n_pk) - n_pk
    pos = np.arange(len(conn)) - first[conn]
    last3 = pos >= n_pk[conn] - 3
    kind = np.where(
        pos < 3, pos, np.where(last3, FIN + pos - (n_pk[conn] - 3), REQ + (pos - 3) % 3)
    )
    remote = np.array([p.node != NODE_A for p in PODS])[endpoint[conn]]

    # Drops (requests to the remote pod, dropped on B) are followed by a
    # retransmission; duplicates are remote replies seen twice on the wire.
    dropped = (kind == REQ) & remote & (rng.random(len(conn)) < sc.drop_fraction)
    duplicated = (kind == RESP) & remote & (rng.random(len(conn)) < sc.duplicate_fraction)
    copies = 1 + dropped + duplicated
    rep = np.repeat(np.arange(len(conn)), copies)
    second = np.zeros(len(rep), dtype=bool)
    second[1:] = rep[1:] == rep[:-1]
    conn, kind, remote = conn[rep], kind[rep], remote[rep]
    is_dropped = dropped[rep] & ~second
    is_retx = dropped[rep] & second
    is_dup = duplicated[rep] & second
    n_packets = len(conn)
    pkt_first = np.flatnonzero(np.r_[True, conn[1:] != conn[:-1]])
    client_sends = CLIENT_SENDS[kind]

    # Payload and sequence space (SYN and FIN take one sequence number).
    payload = np.zeros(n_packets, dtype=np.int64)
    payload[kind == REQ] = rng.integers(70, 130, int(np.sum(kind == REQ)))
    payload[kind == RESP] = rng.integers(800, 900, int(np.sum(kind == RESP)))
    retx_src = np.flatnonzero(is_retx) - 1
    payload[is_retx] = payload[retx_src]
    dup_src = np.flatnonzero(is_dup) - 1
    payload[is_dup] = payload[dup_src]
    consumes = payload + np.isin(kind, (SYN, SYNACK, FIN, FINACK))
    # Of two copies of a segment, only one advances the sequence space.
    consumes[is_dropped] = 0
    consumes[dup_src] = 0
    c_used = np.where(client_sends, consumes, 0)
    s_used = np.where(~client_sends, consumes, 0)
    c_before = _grouped_exclusive_cumsum(c_used, pkt_first, conn)
    s_before = _grouped_exclusive_cumsum(s_used, pkt_first, conn)
    cs = isn_c[conn] + c_before
    ss = isn_s[conn] + s_before
    seq = np.where(client_sends, cs, ss) % 2**32
    ack = np.where(client_sends, ss, cs) % 2**32
    ack[kind == SYN] = 0
    # IP ID: per socket counters; Linux sends the listener's SYN-ACK with ID 0.
    c_count = _grouped_exclusive_cumsum(client_sends.astype(np.int64), pkt_first, conn)
    s_count = _grouped_exclusive_cumsum((~client_sends & ~is_dup).astype(np.int64), pkt_first, conn)
    ip_id = np.where(client_sends, id_c[conn] + c_count, id_s[conn] + s_count) % 2**16
    ip_id[kind == SYNACK] = 0
    ip_id[is_dup] = ip_id[dup_src]  # a duplicate is byte-for-byte the same packet
    tcp_header = np.where(np.isin(kind, (SYN, SYNACK)), 40, 32)
    length = 20 + tcp_header + payload
    flags = KIND_FLAGS[kind]

    # Path of each packet.
    path_name = np.where(
        client_sends,
        np.where(is_dropped, "c2s_dropped", np.where(remote, "c2s_remote", "c2s_local")),
        np.where(remote, "s2c_remote", "s2c_local"),
    )
    path = pd.Categorical(path_name, categories=PATH_NAMES).codes.astype(np.int64)
    path_len = np.array([len(PATHS[p]) for p in PATH_NAMES])[path]

    # ---- events: one row per hop ----
    ev_pkt = np.repeat(np.arange(n_packets), path_len)
    ev_first = np.cumsum(path_len) - path_len
    hop = np.arange(len(ev_pkt)) - ev_first[ev_pkt]
    # String fields as codes into small vocabularies (categoricals at the end:
    # a million Python strings would dominate the run time).
    vocab = {
        "node": [NODE_A, NODE_B],
        "probe": ["rx", "nat", "tx", "drop"],
        "hook": ["", "prerouting", "postrouting"],
        "where": ["eth0", "veth", "pod"],
        "nat_kind": ["", "dnat", "snat", "rev_dnat", "rev_snat"],
    }
    tcode = {k: np.zeros((len(PATH_NAMES), MAX_HOPS), dtype=np.int64) for k in vocab}
    tnum = {
        k: np.zeros((len(PATH_NAMES), MAX_HOPS), dtype=np.int64)
        for k in ("stage", "ttl", "dmin", "dmean")
    }
    for pi, name in enumerate(PATH_NAMES):
        for hi, (node, probe, hook, where, stage, nat_kind, ttl, dmin, dmean) in enumerate(
            PATHS[name]
        ):
            for k, v in (
                ("node", node),
                ("probe", probe),
                ("hook", hook),
                ("where", where),
                ("nat_kind", nat_kind),
            ):
                tcode[k][pi, hi] = vocab[k].index(v)
            for k, v in (("stage", stage), ("ttl", ttl), ("dmin", dmin), ("dmean", dmean)):
                tnum[k][pi, hi] = v
    ep, hp = path[ev_pkt], hop
    code = {k: tcode[k][ep, hp] for k in vocab}
    is_b = code["node"] == 1
    probe_is = {v: code["probe"] == i for i, v in enumerate(vocab["probe"])}
    where_is = {v: code["where"] == i for i, v in enumerate(vocab["where"])}
    stage = tnum["stage"][ep, hp]
    ttl = tnum["ttl"][ep, hp]
    dmin, dmean = tnum["dmin"][ep, hp], tnum["dmean"][ep, hp]
    n_ev = len(ev_pkt)

    # Per-hop delays; wire hops use the scenario's one-way delays.
    delay = dmin + rng.exponential(1.0, n_ev) * dmean
    for marker, (dmin_w, dmean_w) in ((-1, sc.delay_ab_ns), (-2, sc.delay_ba_ns)):
        sel = dmin == marker
        delay[sel] = dmin_w + rng.exponential(dmean_w, int(sel.sum()))
    is_nat = probe_is["nat"]
    nat_first = is_nat & (kind[ev_pkt] == SYN)
    nat_ns = np.zeros(n_ev)
    for (nk, first_flag), (median, sigma) in NAT_NS.items():
        sel = is_nat & (code["nat_kind"] == vocab["nat_kind"].index(nk)) & (nat_first == first_flag)
        nat_ns[sel] = median * np.exp(sigma * rng.standard_normal(int(sel.sum())))
    # A duplicate follows its original through the same queues: same delays
    # (a link does not let the later copy overtake the earlier one).
    dup_ev = np.flatnonzero(is_dup[ev_pkt])
    if len(dup_ev):
        src_ev = ev_first[ev_pkt[dup_ev] - 1] + hop[dup_ev]
        delay[dup_ev] = delay[src_ev]
        nat_ns[dup_ev] = nat_ns[src_ev]
    # A nat event is stamped on entry to the NAT hook (the engine's bracket
    # before it) and carries the hook's duration; the next hop comes after it.
    prev_nat = np.r_[0.0, nat_ns[:-1]]
    step = np.round(delay + prev_nat).astype(np.int64)
    step[hop == 0] = 0
    ev_offset = _grouped_exclusive_cumsum(step, ev_first, ev_pkt) + step
    duration = ev_offset[ev_first + path_len - 1]

    # Packet send times: the next packet leaves after this one arrived (when
    # the other side sends it) plus a reaction time, or right after (same side).
    nxt_kind = np.r_[kind[1:], 0]
    same_conn_next = np.r_[conn[1:] == conn[:-1], False]
    opposite = client_sends != np.r_[client_sends[1:], False]
    gap = np.select(
        [
            kind == SYN,
            kind == SYNACK,
            (kind == ACK_HS) & (nxt_kind == REQ),
            (kind == ACK_DATA) & (nxt_kind == REQ),
            kind == REQ,
            kind == RESP,
            (kind == ACK_DATA) & (nxt_kind == FIN),
            kind == FIN,
            kind == FINACK,
        ],
        [
            rng.uniform(15e3, 30e3, n_packets),
            rng.uniform(60e3, 100e3, n_packets),
            rng.uniform(5e3, 50e3, n_packets),
            rng.exponential(sc.think_ns, n_packets),
            rng.uniform(50e3, 300e3, n_packets),
            rng.uniform(60e3, 100e3, n_packets),
            rng.uniform(10e3, 50e3, n_packets),
            rng.uniform(20e3, 40e3, n_packets),
            rng.uniform(60e3, 100e3, n_packets),
        ],
        default=0.0,
    )
    gap = np.where(is_dropped, 200e6, gap)  # RTO before the retransmission
    inc = np.where(opposite, duration, 0) + gap
    # A duplicate leaves a few us after its original; the packet after it
    # reacts to the original, as if the duplicate were not there.
    shift = rng.uniform(2e3, 10e3, len(dup_src))
    inc[dup_src + 1] = duration[dup_src] + gap[dup_src] - shift
    inc[dup_src] = shift
    inc = np.where(same_conn_next, inc, 0).astype(np.int64)
    send = conn_start[conn] + _grouped_exclusive_cumsum(inc, pkt_first, conn)
    t_true = send[ev_pkt] + ev_offset

    # ---- tuples per stage (addresses as uint32) ----
    ip = {name: ip_to_int(name) for name in (VIP, NODE_A_IP)}
    client_ip = np.array([ip_to_int(c) for c in clients], dtype=np.int64)[client_idx][conn]
    pod_ip = np.array([ip_to_int(p.ip) for p in PODS], dtype=np.int64)[endpoint[conn]]
    cport = client_port[conn]
    # kube-proxy masquerades with --random-fully: a random source port per connection.
    mport = rng.integers(1024, 65536, n_conn)[conn]
    full = lambda v: np.full(n_packets, v, dtype=np.int64)  # noqa: E731
    c2s_stages = [
        (client_ip, cport, full(ip[VIP]), full(VIP_PORT)),
        (client_ip, cport, pod_ip, full(POD_PORT)),
        (full(ip[NODE_A_IP]), mport, pod_ip, full(POD_PORT)),
        (full(ip[NODE_A_IP]), mport, pod_ip, full(POD_PORT)),
    ]
    s2c_stages = [
        (pod_ip, full(POD_PORT), full(ip[NODE_A_IP]), mport),
        (pod_ip, full(POD_PORT), client_ip, cport),
        (full(ip[VIP]), full(VIP_PORT), client_ip, cport),
        (full(ip[VIP]), full(VIP_PORT), client_ip, cport),
    ]

    def stage_fields(stage_idx: np.ndarray):
        out = []
        for f in range(4):
            c2s = np.choose(stage_idx, [s[f][ev_pkt] for s in c2s_stages])
            s2c = np.choose(stage_idx, [s[f][ev_pkt] for s in s2c_stages])
            out.append(np.where(client_sends[ev_pkt], c2s, s2c))
        return out

    saddr, sport, daddr, dport = stage_fields(stage)
    nsaddr, nsport, ndaddr, ndport = (
        np.where(is_nat, v, 0) for v in stage_fields(np.minimum(stage + 1, 3))
    )

    # ---- interfaces and namespaces ----
    pod_of_pkt = endpoint[conn]
    ev_pod = pod_of_pkt[ev_pkt]
    # netns names: the two nodes', then each pod's; ifnames: eth0, then each pod's veth.
    netns_vocab = [NODE_A, NODE_B, *(p.netns for p in PODS)]
    ifname_vocab = ["eth0", *(p.veth for p in PODS)]
    pod_ino = np.array([p.netns_ino for p in PODS])[ev_pod]
    veth_idx = np.array([p.veth_ifindex for p in PODS])[ev_pod]
    node_ino = np.where(is_b, NODE_NETNS_INO[NODE_B], NODE_NETNS_INO[NODE_A])
    netns_code = np.where(where_is["pod"], 2 + ev_pod, is_b.astype(np.int64))
    netns_ino = np.where(where_is["pod"], pod_ino, node_ino)
    ifname_code = np.where(where_is["veth"], 1 + ev_pod, 0)
    ifindex = np.where(
        where_is["eth0"], ETH0_IFINDEX, np.where(where_is["veth"], veth_idx, POD_ETH0_IFINDEX)
    )

    # ---- skb addresses: per node, reused ----
    pkt_node_key = ev_pkt * 2 + is_b
    seg_keys, seg_first_idx, seg_inv = np.unique(
        pkt_node_key, return_index=True, return_inverse=True
    )
    seg_is_b = is_b[seg_first_idx]
    seg_t = t_true[seg_first_idx]
    seg_skb = np.zeros(len(seg_keys), dtype=np.uint64)
    for nd, on_b in ((NODE_A, False), (NODE_B, True)):
        sel = np.flatnonzero(seg_is_b == on_b)
        rank = np.empty(len(sel), dtype=np.int64)
        rank[np.argsort(seg_t[sel], kind="stable")] = np.arange(len(sel))
        slot = rng.permutation(sc.skb_pool)[rank % sc.skb_pool]
        seg_skb[sel] = np.uint64(NODE_SKB_BASE[nd]) + slot.astype(np.uint64) * np.uint64(0x100)
    # LIFO reuse: the pod's reply gets the skb its request was freed with.
    reuse = (
        (~client_sends)
        & np.r_[False, client_sends[:-1] & ~is_dropped[:-1]]
        & np.r_[False, conn[1:] == conn[:-1]]
        & (rng.random(n_packets) < sc.skb_reuse_fraction)
        & ~is_dup
    )
    pod_node_is_b = np.array([p.node == NODE_B for p in PODS])[pod_of_pkt]
    tgt = np.flatnonzero(reuse)
    tgt_keys = tgt * 2 + pod_node_is_b[tgt]
    src_keys = (tgt - 1) * 2 + pod_node_is_b[tgt]
    ok = np.isin(tgt_keys, seg_keys) & np.isin(src_keys, seg_keys)
    seg_skb[np.searchsorted(seg_keys, tgt_keys[ok])] = seg_skb[
        np.searchsorted(seg_keys, src_keys[ok])
    ]
    skb = seg_skb[seg_inv.reshape(-1)]

    ct_slot = {
        nd: np.uint64(NODE_CT_BASE[nd])
        + rng.permutation(4096)[np.arange(n_conn) % 4096].astype(np.uint64) * np.uint64(0x140)
        for nd in (NODE_A, NODE_B)
    }
    ct = np.where(is_b, ct_slot[NODE_B][conn[ev_pkt]], ct_slot[NODE_A][conn[ev_pkt]])

    def cat(codes: np.ndarray, labels: list[str]) -> pd.Categorical:
        return pd.Categorical.from_codes(codes.astype(np.int64), categories=pd.Index(labels))

    drop_code = np.where(probe_is["drop"], 1, 0)
    frame = pd.DataFrame(
        {
            "node": cat(code["node"], vocab["node"]),
            "probe": cat(code["probe"], vocab["probe"]),
            "hook": cat(code["hook"], vocab["hook"]),
            "netns_ino": netns_ino.astype(np.uint32),
            "netns": cat(netns_code, netns_vocab),
            "ifindex": ifindex.astype(np.uint32),
            "ifname": cat(ifname_code, ifname_vocab),
            "skb": skb,
            "ct": ct.astype(np.uint64),
            "cpu": rng.integers(0, 2, n_ev).astype(np.uint16),
            "proto": np.full(n_ev, 6, dtype=np.uint8),
            "saddr": ints_to_strings(saddr),
            "daddr": ints_to_strings(daddr),
            "sport": sport.astype(np.uint16),
            "dport": dport.astype(np.uint16),
            "ip_id": ip_id[ev_pkt].astype(np.uint16),
            "ttl": ttl.astype(np.uint8),
            "len": length[ev_pkt].astype(np.uint16),
            "tcp_flags": flags[ev_pkt],
            "ip_hlen": np.full(n_ev, 20, dtype=np.uint8),
            # Linux: a SYN carries 20 bytes of options, later segments timestamps.
            "tcp_hlen": np.where(flags[ev_pkt] & 2, 40, 32).astype(np.uint8),
            "seq": seq[ev_pkt].astype(np.uint32),
            "ack": ack[ev_pkt].astype(np.uint32),
            "nat_kind": cat(code["nat_kind"], vocab["nat_kind"]),
            "nat_first": nat_first,
            "nat_saddr": ints_to_strings(nsaddr),
            "nat_daddr": ints_to_strings(ndaddr),
            "nat_sport": nsport.astype(np.uint16),
            "nat_dport": ndport.astype(np.uint16),
            "nat_ns": np.round(nat_ns).astype(np.uint32),
            "drop_reason": cat(drop_code, ["", sc.drop_reason]),
            # No tunnel between the nodes (Calico BGP mode, as in the seed).
            "encap": cat(np.zeros(n_ev, np.int64), [""]),
            "outer_saddr": cat(np.zeros(n_ev, np.int64), [""]),
            "outer_daddr": cat(np.zeros(n_ev, np.int64), [""]),
            # No ICMP errors in these scenarios (synthetic_faults writes some).
            "icmp_type": np.zeros(n_ev, np.uint8),
            "icmp_code": np.zeros(n_ev, np.uint8),
            "quoted_saddr": cat(np.zeros(n_ev, np.int64), [""]),
            "quoted_daddr": cat(np.zeros(n_ev, np.int64), [""]),
            "quoted_sport": np.zeros(n_ev, np.uint16),
            "quoted_dport": np.zeros(n_ev, np.uint16),
            "quoted_proto": np.zeros(n_ev, np.uint8),
            "_t_true": t_true,
            "_packet": ev_pkt,
            "_conn": conn[ev_pkt],
        }
    )
    events, metas = {}, {}
    for nd in (NODE_A, NODE_B):
        f = frame[frame["node"].to_numpy() == nd].copy()
        f = f.sort_values("_t_true", kind="stable").reset_index(drop=True)
        error = int(sc.clock_error_ns.get(nd, 0))
        f.insert(0, "ts_ns", (f["_t_true"] - NODE_BOOT_NS[nd]).astype(np.int64))
        f.insert(1, "time_ns", (f["_t_true"] + error).astype(np.int64))
        events[nd] = f
        metas[nd] = node_meta(sc, nd, f)
        if change_at is not None:
            changed = service_meta(sc.changed_probabilities)
            metas[nd]["service_history"].append(
                {"ts_ns": int(change_at - NODE_BOOT_NS[nd]), "service": changed}
            )
            metas[nd]["service"] = changed
    truth = pd.DataFrame(
        {
            "client": clients[client_idx],
            "client_port": client_port,
            "endpoint": endpoint,
            "endpoint_ip": np.array([p.ip for p in PODS])[endpoint],
            "requests": requests,
            "start_ns": conn_start,
        }
    )
    return Simulation(scenario=sc, events=events, metas=metas, connections=truth)


def node_meta(sc: Scenario, node: str, f: pd.DataFrame) -> dict[str, Any]:
    error = int(sc.clock_error_ns.get(node, 0))
    nat = f[f["probe"] == "nat"]
    hists = []
    for hook in ("prerouting", "postrouting"):
        for first in (True, False):
            sel = nat[(nat["hook"] == hook) & (nat["nat_first"] == first)]
            if len(sel):
                hists.append(
                    {
                        "hook": hook,
                        "first": first,
                        "buckets": [list(b) for b in log2_buckets_of(sel["nat_ns"].to_numpy())],
                    }
                )
    pods_here = [p for p in PODS if p.node == node]
    started = int(f["ts_ns"].min()) - 50_000_000 if len(f) else 0
    ended = int(f["ts_ns"].max()) + 50_000_000 if len(f) else 0
    lost = int(sc.lost_events.get(node, 0))
    return {
        "node": node,
        "hostname": "lab-host",
        "kernel": "6.18.0-tracer",
        "netns": {"path": f"/run/netns/{node}", "inode": NODE_NETNS_INO[node]},
        "scoped_netns": {
            str(NODE_NETNS_INO[node]): node,
            **{str(p.netns_ino): p.netns for p in pods_here},
        },
        "backends": {
            "rx": "tracepoint",
            "nat": "netfilter-link",
            "tx": "tracepoint",
            "drop": "tracepoint",
        },
        "mode": "events",
        "service": service_meta(sc.probabilities),
        "service_history": [{"ts_ns": started, "service": service_meta(sc.probabilities)}],
        "filters": {},
        "clock": {
            "realtime_minus_monotonic_ns": NODE_BOOT_NS[node] + error,
            "uncertainty_ns": 1_000_000,
        },
        "started_ns": started,
        "ended_ns": ended,
        "started_at": datetime.fromtimestamp((started + NODE_BOOT_NS[node]) / 1e9, UTC).isoformat(),
        "stats": {
            "events_kernel": len(f) + lost,
            "events_read": len(f),
            "events": len(f),
            "lost": lost,
            "lost_by_probe": {"rx": lost, "tx": 0, "nat": 0, "drop": 0},
            "filter_overflow": 0,
            "ipv6_skipped": 0,
            "non_ip_skipped": 0,
            "parse_errors": 0,
            "nat_unpaired": 0,
        },
        "histograms": {"nat_hook_ns": hists},
        "complete": True,
    }


def write_capture(
    path: Path, frame: pd.DataFrame, meta: dict[str, Any], *, part_seconds: float = 1.0,
    policy: RollPolicy | None = None,
) -> Path:
    """Write frame (capture columns; extra columns ignored) as a capture directory
    through the capture engine's own writer: one part per part_seconds of
    events, which the writer's policy merges (KEEP_EVERY_PART: none)."""
    path = Path(path)
    prepare_directory(path)
    columns = frame[list(COLUMN_NAMES)]
    table = pa.Table.from_pandas(columns, preserve_index=False)
    table = pa.table(
        [table.column(n).cast(SCHEMA.field(n).type) for n in COLUMN_NAMES], schema=SCHEMA
    )
    writer = CaptureWriter(path, policy=policy)
    ts = frame["ts_ns"].to_numpy()
    if len(ts):
        part = ((ts - ts.min()) // int(part_seconds * 1e9)).astype(np.int64)
        bounds = np.flatnonzero(np.r_[True, part[1:] != part[:-1], True])
        for a, b in itertools.pairwise(bounds):
            writer.submit(table.slice(a, b - a))
    writer.close()
    write_meta(path, meta)
    return path


def two_node_captures(root: Path, **kwargs: Any) -> tuple[Simulation, dict[str, Path]]:
    sim = simulate(Scenario(**kwargs))
    return sim, sim.write(root)


EVENT_DEFAULTS: dict[str, Any] = {
    "ts_ns": 0,
    "time_ns": 0,
    "node": NODE_A,
    "probe": "rx",
    "hook": "",
    "netns_ino": NODE_NETNS_INO[NODE_A],
    "netns": NODE_A,
    "ifindex": ETH0_IFINDEX,
    "ifname": "eth0",
    "skb": 0xFFFF888100000100,
    "ct": 0,
    "cpu": 0,
    "proto": 6,
    "saddr": "192.168.64.10",
    "daddr": VIP,
    "sport": 40000,
    "dport": VIP_PORT,
    "ip_id": 1,
    "ttl": 64,
    "len": 52,
    "tcp_flags": 0x10,
    "ip_hlen": 20,
    "tcp_hlen": 32,
    "seq": 1000,
    "ack": 2000,
    "nat_kind": "",
    "nat_first": False,
    "nat_saddr": "",
    "nat_daddr": "",
    "nat_sport": 0,
    "nat_dport": 0,
    "nat_ns": 0,
    "drop_reason": "",
    "encap": "",
    "outer_saddr": "",
    "outer_daddr": "",
    "icmp_type": 0,
    "icmp_code": 0,
    "quoted_saddr": "",
    "quoted_daddr": "",
    "quoted_sport": 0,
    "quoted_dport": 0,
    "quoted_proto": 0,
}


def event_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Hand-written events (each a dict overriding EVENT_DEFAULTS) as a capture
    frame; time_ns defaults to ts_ns."""
    full = [{**EVENT_DEFAULTS, "time_ns": r.get("ts_ns", 0), **r} for r in rows]
    frame = pd.DataFrame(full, columns=list(COLUMN_NAMES))
    for name, typ, _ in COLUMNS:
        if pa.types.is_dictionary(typ):
            frame[name] = frame[name].astype("category")
        elif name != "nat_first":
            frame[name] = frame[name].astype(typ.to_pandas_dtype())
    return frame


def event_set(rows: Sequence[dict[str, Any]], metas: dict[str, dict[str, Any]] | None = None):
    """An EventSet of hand-written events (no files)."""
    from tracer.analysis.events import from_captures
    from tracer.capfile import Capture

    frame = event_frame(rows)
    nodes = list(dict.fromkeys(frame["node"].astype(str)))
    captures = []
    for node in nodes:
        meta = (metas or {}).get(node) or {
            "node": node,
            "netns": {"inode": NODE_NETNS_INO.get(node, 0)},
        }
        part = frame[frame["node"].astype(str).to_numpy() == node].reset_index(drop=True)
        part["node"] = part["node"].cat.remove_unused_categories()
        captures.append(
            Capture(Path(f"/synthetic/{node}"), {"format": "tracer-capture", **meta}, part)
        )
    return from_captures(captures)


def first_dnat_rows(connections: int, endpoints: int) -> list[dict[str, Any]]:
    """Hand-written events: one client's `connections` first-packet DNATs in
    PREROUTING, round robin over `endpoints` addresses 10.0.0.1.. port 80."""
    return [
        {
            "ts_ns": i * 1000, "probe": "nat", "hook": "prerouting", "nat_kind": "dnat",
            "nat_first": True, "sport": 40000 + i, "nat_saddr": "192.168.64.10",
            "nat_daddr": f"10.0.0.{1 + i % endpoints}", "nat_sport": 40000 + i, "nat_dport": 80,
            "skb": 0x100 + i,
        }
        for i in range(connections)
    ]
