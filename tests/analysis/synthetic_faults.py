"""Synthetic captures of a broken Service, with the truth of every connection.

The seed scenario of tests/analysis/synthetic.py (same nodes, pods, paths,
Service), built a packet at a time, with the faults of issue 13 recorded the
way the kernel records them today (rx/tx/nat/drop events only):

- ``policy_drop``: a deny on node B for its pod: the SYN, DNATed and
  masqueraded on A, enters B's eth0 and is dropped there (NETFILTER_DROP,
  the FORWARD hook); the client retransmits it after 1 s and 3 s. The pod
  on A is healthy.
- ``wrong_target_port``: every pod answers the SYN with RST/ACK, which goes
  back through the reverse NAT to the client.
- ``reject``: no endpoints: no DNAT; the SYN is dropped on A's eth0
  (NETFILTER_DROP: REJECT returns NF_DROP) and node A sends RST/ACK from the
  Service address (no pod involved). The Service metadata has no endpoints.
- ``route_withdrawn``: node B's pod block is gone from A: a SYN DNATed to B's
  pod is dropped on A (IP_NOROUTE) before it is masqueraded; retransmitted.
- ``mtu_stall``: handshake and request fine; the pod on B's 1500-byte
  response leaves B's eth0 and vanishes (no drop event: the underlay drops
  it); the pod retransmits it 3 times, the client never sees it.
- ``reject_icmp``: node B REJECTs the SYN to its pod with ICMP port
  unreachable (``--reject-with icmp-port-unreachable``): the SYN is dropped on
  B's eth0 (NETFILTER_DROP), B sends ICMP 3/3 quoting the masqueraded SYN
  (node A -> pod), and node A's reverse NAT rewrites the error and its quote
  on the way back to the client (which then gives up: a hard error).
- ``lb_denied``: the Service address is a load-balancer IP whose
  loadBalancerSourceRanges admit the usual client's /24 only: every other
  connection comes from DENIED_CLIENT, whose SYN node A drops on eth0
  (NETFILTER_DROP, KUBE-PROXY-FIREWALL: not DNATed) and the client
  retransmits; the usual client's connections complete.
- ``healthy``: every connection completes.

``load_balancer_ranges`` (any fault) records the Service address in the
metadata as a load-balancer IP with those source ranges (lb_denied: the
usual client's /24) behind firewall chain LB_FW_CHAIN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.analysis.synthetic import (
    ETH0_IFINDEX,
    NODE_A,
    NODE_A_IP,
    NODE_B,
    NODE_B_IP,
    NODE_BOOT_NS,
    NODE_NETNS_INO,
    NODE_SKB_BASE,
    PATHS,
    POD_ETH0_IFINDEX,
    POD_PORT,
    PODS,
    VIP,
    VIP_PORT,
    Scenario,
    event_frame,
    node_meta,
    service_meta,
    write_capture,
)

FAULTS = ("healthy", "policy_drop", "wrong_target_port", "reject", "route_withdrawn", "mtu_stall",
          "reject_icmp", "lb_denied")
SYN, SYNACK, ACK, PSH_ACK, FIN_ACK, RST_ACK = 0x02, 0x12, 0x10, 0x18, 0x11, 0x14
CLIENT = "192.168.64.10"
DENIED_CLIENT = "198.51.100.7"  # outside lb_denied's source ranges
LB_FW_CHAIN = "KUBE-FW-JKOCBQALQGD3X3RT"
BAD_POD = 1  # the fault's pod (on node B) where the fault has one
HOP_NS, WIRE_NS, RTT_STEP_NS = 6_000, 20_000, 200_000


@dataclass
class FaultSimulation:
    fault: str
    events: dict[str, pd.DataFrame]
    metas: dict[str, dict[str, Any]]
    truth: pd.DataFrame  # per connection: client_port, endpoint (ip:port or None), outcome, reset_by

    def write(self, root: Path) -> list[Path]:
        return [write_capture(Path(root) / n, f, self.metas[n]) for n, f in self.events.items()]


class _Builder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.skb = {NODE_A: NODE_SKB_BASE[NODE_A], NODE_B: NODE_SKB_BASE[NODE_B]}
        self.ip_id = 100

    def packet(self, t: int, stages: list[tuple], hops: list[tuple], *, flags: int, seq: int,
               ack: int, payload: int = 0, first: bool = False, ip_id: int | None = None,
               pod: Any = None, drop: tuple[str, str] | None = None) -> int:
        """Events of one packet along hops (PATHS entries); with drop=(where,
        reason) the packet is dropped after the last hop. Returns the end time."""
        if ip_id is None:
            self.ip_id += 1
            ip_id = self.ip_id
        node_prev, ttl = None, 64
        for i, (node, probe, hook, where, stage, nat_kind, ttl, *_) in enumerate(hops):
            t += WIRE_NS if node_prev and node != node_prev else (HOP_NS if i else 0)
            if node != node_prev:
                self.skb[node] += 0x100
            node_prev = node
            self._row(t, node, probe, hook, where, stages[stage], flags, seq, ack, payload, ttl,
                      ip_id, pod, nat=stages[stage + 1] if probe == "nat" else None,
                      nat_kind=nat_kind, first=first)
        if drop:
            last = hops[-1]
            out = last[4] + (1 if last[1] == "nat" else 0)
            t += HOP_NS
            self._row(t, node_prev, "drop", "", drop[0], stages[out], flags, seq, ack, payload,
                      max(ttl - 1, 1), ip_id, pod, reason=drop[1])
        return t

    def _row(self, t, node, probe, hook, where, tup, flags, seq, ack, payload, ttl, ip_id, pod,
             nat=None, nat_kind="", first=False, reason=""):
        in_pod = where == "pod"
        row = {
            "ts_ns": t - NODE_BOOT_NS[node], "time_ns": t, "node": node, "probe": probe,
            "hook": hook, "netns_ino": pod.netns_ino if in_pod else NODE_NETNS_INO[node],
            "netns": pod.netns if in_pod else node,
            "ifindex": POD_ETH0_IFINDEX if in_pod else pod.veth_ifindex if where == "veth"
            else ETH0_IFINDEX,
            "ifname": pod.veth if where == "veth" else "eth0", "skb": self.skb[node],
            "saddr": tup[0], "sport": tup[1], "daddr": tup[2], "dport": tup[3], "ip_id": ip_id,
            "ttl": ttl, "len": 20 + (40 if flags & SYN else 32) + payload, "tcp_flags": flags,
            "tcp_hlen": 40 if flags & SYN else 32, "seq": seq % 2**32, "ack": ack % 2**32,
            "drop_reason": reason,
        }
        if nat is not None:
            row.update(nat_kind=nat_kind, nat_first=first, nat_saddr=nat[0], nat_sport=nat[1],
                       nat_daddr=nat[2], nat_dport=nat[3], nat_ns=15_000 if first else 600)
        self.rows.append(row)


def _icmp_error(b: _Builder, t: int, pod: Any, code: int, hops: list[tuple]) -> None:
    """An ICMP 3/code error along hops: (node, probe, hook, (src, dst) before,
    (src, dst) after a nat event or None, nat_kind, quoted tuple at that hop)."""
    b.ip_id += 1
    node_prev = None
    for i, (node, probe, hook, addrs, after, kind, quote) in enumerate(hops):
        t += WIRE_NS if node_prev and node != node_prev else (HOP_NS if i else 0)
        if node != node_prev:
            b.skb[node] += 0x100
        node_prev = node
        nat = None if after is None else (after[0], 0, after[1], 0)
        b._row(t, node, probe, hook, "eth0", (addrs[0], 0, addrs[1], 0), 0, 0, 0, 0, 64 - (node == NODE_A),
               b.ip_id, pod, nat=nat, nat_kind=kind)
        b.rows[-1].update(proto=1, tcp_hlen=0, len=56, icmp_type=3, icmp_code=code,
                          quoted_saddr=quote[0], quoted_sport=quote[1], quoted_daddr=quote[2],
                          quoted_dport=quote[3], quoted_proto=6)


def _reject_icmp(b: _Builder, t: int, c2s: list[tuple], up: str, syn: dict) -> None:
    """The SYN dropped by B's REJECT, and B's ICMP port unreachable back
    through A's reverse NAT (the quote rewritten with it)."""
    t = b.packet(t, c2s, _cut(up, 5), **syn, first=True, drop=("eth0", "NETFILTER_DROP"))
    client, masq = c2s[0], c2s[2]
    pre_dnat = (client[0], client[1], client[2], client[3])
    post_dnat = (client[0], client[1], masq[2], masq[3])
    _icmp_error(b, t + HOP_NS, syn["pod"], 3, [
        (NODE_B, "tx", "", (NODE_B_IP, NODE_A_IP), None, "", masq),
        (NODE_A, "rx", "", (NODE_B_IP, NODE_A_IP), None, "", masq),
        (NODE_A, "nat", "prerouting", (NODE_B_IP, NODE_A_IP), (NODE_B_IP, CLIENT), "rev_snat",
         post_dnat),
        (NODE_A, "nat", "postrouting", (NODE_B_IP, CLIENT), (VIP, CLIENT), "rev_dnat", pre_dnat),
        (NODE_A, "tx", "", (VIP, CLIENT), None, "", pre_dnat),
    ])


def _cut(path: str, hops: int) -> list[tuple]:
    return PATHS[path][:hops]


def _connection(b: _Builder, fault: str, t: int, cport: int, ep: int, rng,
                client: str = CLIENT) -> tuple[str, str | None]:
    """Emit one connection's packets; returns (outcome, reset_by) as the client saw it."""
    pod = PODS[ep]
    remote = pod.node == NODE_B
    mport = int(rng.integers(1024, 65536))
    isn_c, isn_s = (int(x) for x in rng.integers(0, 2**32, 2))
    c2s = [(client, cport, VIP, VIP_PORT), (client, cport, pod.ip, POD_PORT),
           (NODE_A_IP, mport, pod.ip, POD_PORT), (NODE_A_IP, mport, pod.ip, POD_PORT)]
    s2c = [(pod.ip, POD_PORT, NODE_A_IP, mport), (pod.ip, POD_PORT, client, cport),
           (VIP, VIP_PORT, client, cport), (VIP, VIP_PORT, client, cport)]
    up, down = ("c2s_remote", "s2c_remote") if remote else ("c2s_local", "s2c_local")
    bad = ep == BAD_POD
    syn = {"flags": SYN, "seq": isn_c, "ack": 0, "pod": pod}
    if fault == "reject":
        b.packet(t, c2s, _cut("c2s_local", 1), **syn, drop=("eth0", "NETFILTER_DROP"))
        rst = [(NODE_A, "tx", "", "eth0", 0, "", 64)]
        b.packet(t + 30_000, [s2c[2]], rst, flags=RST_ACK, seq=0, ack=isn_c + 1, pod=pod, ip_id=0)
        return "reset", "node"
    if fault == "lb_denied" and client == DENIED_CLIENT:
        for delay in (0, 1_000_000_000, 3_000_000_000):
            b.packet(t + delay, c2s, _cut("c2s_local", 1), **syn,
                     drop=("eth0", "NETFILTER_DROP"))
        return "no_answer", None
    if fault == "reject_icmp" and bad and remote:
        _reject_icmp(b, t, c2s, up, syn)
        return "unreachable", None
    if fault in ("policy_drop", "route_withdrawn") and bad:
        hops, drop = ((_cut(up, 5), ("eth0", "NETFILTER_DROP")) if fault == "policy_drop"
                      else (_cut(up, 2), ("eth0", "IP_NOROUTE")))
        for i, delay in enumerate((0, 1_000_000_000, 3_000_000_000)):
            b.packet(t + delay, c2s, hops, **syn, first=i == 0, drop=drop)
        return "no_answer", None
    t = b.packet(t, c2s, PATHS[up], **syn, first=True) + RTT_STEP_NS
    if fault == "wrong_target_port":
        b.packet(t, s2c, PATHS[down], flags=RST_ACK, seq=0, ack=isn_c + 1, pod=pod, ip_id=0)
        return "reset", "pod"
    t = b.packet(t, s2c, PATHS[down], flags=SYNACK, seq=isn_s, ack=isn_c + 1, pod=pod,
                 ip_id=0) + RTT_STEP_NS
    c, s = isn_c + 1, isn_s + 1
    t = b.packet(t, c2s, PATHS[up], flags=ACK, seq=c, ack=s, pod=pod) + RTT_STEP_NS
    t = b.packet(t, c2s, PATHS[up], flags=PSH_ACK, seq=c, ack=s, payload=100, pod=pod)
    c += 100
    t += RTT_STEP_NS
    if fault == "mtu_stall" and bad:
        ip_id = None
        for delay in (0, 200_000_000, 600_000_000, 1_400_000_000):
            b.packet(t + delay, s2c, _cut(down, 3), flags=PSH_ACK, seq=s, ack=c, payload=1448,
                     pod=pod, ip_id=ip_id)
        return "stalled", None
    t = b.packet(t, s2c, PATHS[down], flags=PSH_ACK, seq=s, ack=c, payload=800, pod=pod)
    s += 800
    t = b.packet(t + RTT_STEP_NS, c2s, PATHS[up], flags=ACK, seq=c, ack=s, pod=pod)
    t = b.packet(t + RTT_STEP_NS, c2s, PATHS[up], flags=FIN_ACK, seq=c, ack=s, pod=pod)
    t = b.packet(t + RTT_STEP_NS, s2c, PATHS[down], flags=FIN_ACK, seq=s, ack=c + 1, pod=pod)
    b.packet(t + RTT_STEP_NS, c2s, PATHS[up], flags=ACK, seq=c + 1, ack=s + 1, pod=pod)
    return "succeeded", None


def simulate_fault(fault: str, connections: int = 40, *, seed: int = 3,
                   lost: dict[str, int] | None = None, tail_ns: int = 5_000_000_000,
                   spacing_ns: int = 20_000_000,
                   load_balancer_ranges: tuple[str, ...] | None = None) -> FaultSimulation:
    """One capture per node of `connections` client connections under `fault`;
    the capture ends tail_ns after its last event."""
    assert fault in FAULTS, fault
    rng = np.random.default_rng(seed)
    b = _Builder()
    truth = []
    start = NODE_BOOT_NS[NODE_A] + 7 * 3600 * 10**9
    for i in range(connections):
        ep = int(rng.integers(0, len(PODS)))
        cport = 40000 + 7 * i
        client = DENIED_CLIENT if fault == "lb_denied" and i % 2 else CLIENT
        outcome, by = _connection(b, fault, start + i * spacing_ns, cport, ep, rng, client)
        endpoint = (None if fault == "reject" or client == DENIED_CLIENT
                    else f"{PODS[ep].ip}:{POD_PORT}")
        truth.append({"client_port": cport, "client": client, "endpoint": endpoint,
                      "outcome": outcome, "reset_by": by})
    if fault == "lb_denied" and load_balancer_ranges is None:
        load_balancer_ranges = ("192.168.64.0/24",)
    frame = event_frame(b.rows).sort_values("time_ns", kind="stable").reset_index(drop=True)
    sc = Scenario(lost_events=lost or {})
    events, metas = {}, {}
    for node in (NODE_A, NODE_B):
        f = frame[frame["node"].astype(str).to_numpy() == node].reset_index(drop=True)
        if not len(f):
            continue
        f["node"] = f["node"].cat.remove_unused_categories()
        meta = node_meta(sc, node, f)
        meta["ended_ns"] = int(frame["time_ns"].max()) - NODE_BOOT_NS[node] + tail_ns
        if fault == "reject":
            meta["service"] = service_meta((0.5,))
            meta["service"]["ports"][0]["endpoints"] = []  # kube-proxy: no ready endpoints
            meta["service_history"] = [{"ts_ns": meta["started_ns"], "service": meta["service"]}]
        if load_balancer_ranges is not None:
            _as_load_balancer(meta, load_balancer_ranges)
        events[node], metas[node] = f, meta
    return FaultSimulation(fault, events, metas, pd.DataFrame(truth))


def _as_load_balancer(meta: dict[str, Any], ranges: tuple[str, ...]) -> None:
    """The Service address as kube-proxy resolves a load-balancer IP with
    loadBalancerSourceRanges (KUBE-SERVICES -> KUBE-FW -> KUBE-EXT)."""
    for service in [meta["service"], *(h["service"] for h in meta.get("service_history", []))]:
        port = service["ports"][0]
        port.update(external_ips=[], load_balancer_ips=[VIP], firewall_chain=LB_FW_CHAIN,
                    load_balancer_chain=LB_FW_CHAIN, load_balancer_source_ranges=list(ranges))
