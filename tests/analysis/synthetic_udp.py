"""Synthetic captures of a Service with a UDP port (DNS), alone or next to
the seed's TCP port, with the truth of every flow.

The nodes, pods and paths of tests/analysis/synthetic_faults.py; the Service
gains port 53/udp on the same external IP (192.168.64.57:53 -> pod:53). Each
flow is one client tuple (a fresh source port per query, as the lab's DNS
traffic sends them), DNATed and masqueraded on node A like a TCP SYN. What
the pod does with a query:

- ``answer``: one query, one answer back through A's reverse NAT;
- ``retry``: the first query vanishes (no event), the client sends it again
  from the same port (same flow: the DNAT reuses the binding, not
  ``nat_first``), and the second is answered;
- ``no_socket``: nothing listens: the query is dropped in the pod
  (NO_SOCKET) and no ICMP error comes back (the kernel's rate limit);
- ``icmp``: dropped in the pod (NO_SOCKET) and the pod sends ICMP 3/3 port
  unreachable quoting the masqueraded query, which A's reverse NAT rewrites
  on the way back to the client;
- ``silent``: the query reaches the pod and nothing more is seen (no drop,
  no answer);
- ``answer_lost``: the pod answers and its answer vanishes after the pod's
  node sends it on (no drop event: lost on the wire).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.analysis.synthetic import (
    NODE_A,
    NODE_A_IP,
    NODE_B,
    NODE_BOOT_NS,
    PATHS,
    PODS,
    VIP,
    Scenario,
    event_frame,
    node_meta,
    write_capture,
)
from tests.analysis.synthetic_faults import CLIENT, HOP_NS, RTT_STEP_NS, _Builder, _connection

DNS_PORT = 53
KINDS = ("answer", "retry", "no_socket", "icmp", "silent", "answer_lost")
QUERY, ANSWER = 40, 120  # UDP payload bytes (a TXT query and its answer)


@dataclass
class UdpSimulation:
    events: dict[str, pd.DataFrame]
    metas: dict[str, dict[str, Any]]
    truth: pd.DataFrame  # per flow or connection: proto, client_port, endpoint, kind, outcome

    def write(self, root: Path) -> list[Path]:
        return [write_capture(Path(root) / n, f, self.metas[n]) for n, f in self.events.items()]


def _datagram(b: _Builder, t: int, stages: list[tuple], hops: list[tuple], payload: int,
              pod: Any, first: bool = False, drop: tuple[str, str] | None = None) -> int:
    """One UDP datagram along hops (as _Builder.packet, then made UDP)."""
    start = len(b.rows)
    t = b.packet(t, stages, hops, flags=0, seq=0, ack=0, payload=payload, pod=pod, first=first,
                 drop=drop)
    for row in b.rows[start:]:
        row.update(proto=17, tcp_hlen=0, len=20 + 8 + payload, seq=0, ack=0)
    return t


def _icmp_from_pod(b: _Builder, t: int, pod: Any, c2s: list[tuple]) -> None:
    """The pod's ICMP 3/3 quoting the masqueraded query, back through A's
    reverse NAT (the quote rewritten with it) to the client."""
    client, masq = c2s[0], c2s[2]
    quotes = [masq, masq, (client[0], client[1], masq[2], masq[3]), client, client]
    addrs = [(pod.ip, NODE_A_IP)] * 3 + [(pod.ip, CLIENT), (VIP, CLIENT)]
    after = [None, None, (pod.ip, CLIENT), (VIP, CLIENT), None]
    hops = [(pod.node, "tx", "", "pod"), (pod.node, "rx", "", "veth"),
            (NODE_A, "nat", "prerouting", "eth0"), (NODE_A, "nat", "postrouting", "eth0"),
            (NODE_A, "tx", "", "eth0")]
    if pod.node != NODE_A:  # across the wire: B's eth0 out, A's eth0 in
        hops[2:2] = [(pod.node, "tx", "", "eth0"), (NODE_A, "rx", "", "eth0")]
        quotes[2:2], addrs[2:2], after[2:2] = [masq, masq], [addrs[0]] * 2, [None, None]
    b.ip_id += 1
    node_prev = None
    for i, (node, probe, hook, where) in enumerate(hops):
        t += HOP_NS
        if node != node_prev:  # one skb per node, as _Builder.packet
            b.skb[node] += 0x100
        node_prev = node
        nat = None if after[i] is None else (after[i][0], 0, after[i][1], 0)
        kind = "" if nat is None else ("rev_snat" if hook == "prerouting" else "rev_dnat")
        b._row(t, node, probe, hook, where, (*addrs[i][:1], 0, addrs[i][1], 0), 0, 0, 0, 0, 64,
               b.ip_id, pod, nat=nat, nat_kind=kind)
        q = quotes[i]
        b.rows[-1].update(proto=1, tcp_hlen=0, len=56, icmp_type=3, icmp_code=3,
                          quoted_saddr=q[0], quoted_sport=q[1], quoted_daddr=q[2],
                          quoted_dport=q[3], quoted_proto=17)


def _flow(b: _Builder, kind: str, t: int, cport: int, ep: int, rng) -> str:
    """Emit one UDP flow's packets; returns its outcome as the client saw it."""
    pod = PODS[ep]
    mport = int(rng.integers(1024, 65536))
    c2s = [(CLIENT, cport, VIP, DNS_PORT), (CLIENT, cport, pod.ip, DNS_PORT),
           (NODE_A_IP, mport, pod.ip, DNS_PORT), (NODE_A_IP, mport, pod.ip, DNS_PORT)]
    s2c = [(pod.ip, DNS_PORT, NODE_A_IP, mport), (pod.ip, DNS_PORT, CLIENT, cport),
           (VIP, DNS_PORT, CLIENT, cport), (VIP, DNS_PORT, CLIENT, cport)]
    remote = pod.node == NODE_B
    up, down = ("c2s_remote", "s2c_remote") if remote else ("c2s_local", "s2c_local")
    if kind in ("no_socket", "icmp"):
        t = _datagram(b, t, c2s, PATHS[up], QUERY, pod, first=True, drop=("pod", "NO_SOCKET"))
        if kind == "icmp":
            _icmp_from_pod(b, t, pod, c2s)
            return "unreachable"
        return "no_answer"
    if kind == "silent":
        _datagram(b, t, c2s, PATHS[up], QUERY, pod, first=True)
        return "no_answer"
    if kind == "retry":  # the first query is lost on the wire: DNAT, then nothing
        _datagram(b, t, c2s, PATHS[up][:4], QUERY, pod, first=True)
        t += 500_000_000
    t = _datagram(b, t, c2s, PATHS[up], QUERY, pod, first=kind != "retry") + RTT_STEP_NS
    if kind == "answer_lost":
        _datagram(b, t, s2c, PATHS[down][:3], ANSWER, pod)
        return "no_answer"
    _datagram(b, t, s2c, PATHS[down], ANSWER, pod)
    return "answered"


def udp_service(service: dict[str, Any], with_tcp: bool) -> dict[str, Any]:
    """The Service with a DNS port (53/udp on the same addresses); without
    with_tcp the UDP port alone."""
    service = copy.deepcopy(service)
    tcp = service["ports"][0]
    udp = {**copy.deepcopy(tcp), "port_name": "dns", "protocol": "udp", "port": DNS_PORT,
           "service_chain": "KUBE-SVC-DNSUDPQ6YG3KJZ2OK", "external_chain": "KUBE-EXT-DNSUDPQ6YG3KJZ2OK"}
    for e in udp["endpoints"]:
        e.update(port=DNS_PORT, protocol="udp")
    service["ports"] = [tcp, udp] if with_tcp else [udp]
    return service


def simulate_udp(kinds: list[str], *, tcp_connections: int = 0, seed: int = 5,
                 tail_ns: int = 5_000_000_000, spacing_ns: int = 20_000_000,
                 endpoints: list[int] | None = None,
                 ports: list[int] | None = None) -> UdpSimulation:
    """One flow per entry of kinds (to PODS[endpoints[i]], else at random;
    from ports[i], else a port of its own), then tcp_connections healthy TCP
    connections; the captures end tail_ns after the last event."""
    assert set(kinds) <= set(KINDS), kinds
    rng = np.random.default_rng(seed)
    b = _Builder()
    start = NODE_BOOT_NS[NODE_A] + 7 * 3600 * 10**9
    truth = []
    for i, kind in enumerate(kinds):
        ep = endpoints[i] if endpoints else int(rng.integers(0, len(PODS)))
        cport = ports[i] if ports else 30000 + 11 * i
        outcome = _flow(b, kind, start + i * spacing_ns, cport, ep, rng)
        truth.append({"proto": "udp", "client_port": cport, "kind": kind, "outcome": outcome,
                      "endpoint": f"{PODS[ep].ip}:{DNS_PORT}"})
    for i in range(tcp_connections):
        ep = int(rng.integers(0, len(PODS)))
        t = start + (len(kinds) + i) * spacing_ns
        outcome, _ = _connection(b, "healthy", t, 40000 + 7 * i, ep, rng)
        truth.append({"proto": "tcp", "client_port": 40000 + 7 * i, "kind": "tcp",
                      "outcome": outcome, "endpoint": f"{PODS[ep].ip}:80"})
    frame = event_frame(b.rows).sort_values("time_ns", kind="stable").reset_index(drop=True)
    events, metas = {}, {}
    for node in (NODE_A, NODE_B):
        f = frame[frame["node"].astype(str).to_numpy() == node].reset_index(drop=True)
        if not len(f):
            continue
        f["node"] = f["node"].cat.remove_unused_categories()
        meta = node_meta(Scenario(), node, f)
        meta["ended_ns"] = int(frame["time_ns"].max()) - NODE_BOOT_NS[node] + tail_ns
        meta["service"] = udp_service(meta["service"], with_tcp=tcp_connections > 0)
        meta["service_history"] = [{"ts_ns": meta["started_ns"], "service": meta["service"]}]
        events[node], metas[node] = f, meta
    return UdpSimulation(events, metas, pd.DataFrame(truth))
