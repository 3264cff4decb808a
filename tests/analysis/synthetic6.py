"""Synthetic IPv6 and mixed (dual-stack) captures of the seed scenario.

The IPv4 simulator (tests/analysis/synthetic.py) is run and its events are
rewritten as the capture engine writes an IPv6 packet's (docs/capture-format.md,
"IPv6"): every address its IPv6 twin (``V6_OF``), ``ip_id`` 0 (IPv6 has
none; the flow label is not captured), ``ttl`` the hop limit (forwarding
lowers it the same way), ``ip_hlen`` 40 (no extension headers) and ``len``
the payload length + 40, i.e. the IPv4 total length + 20. Everything else
(ports, seq, ack, flags, skb reuse, clocks, NAT) is the simulation's, so the
IPv4 run's truth holds for its IPv6 twin, connection by connection.

A mixed capture is an IPv4 and an IPv6 simulation on the same nodes at the
same time: per node, both runs' events merged in time order (the IPv6 run's
skb and conntrack addresses moved to their own range, as one node's slab
would hand out), and a dual-stack Service: its IPv4 port and its IPv6 port
(``"family": "ipv6"``, as tracer.kube's resolved Service writes it).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from tests.analysis import synthetic as s4

ADDRESS_COLUMNS = ("saddr", "daddr", "nat_saddr", "nat_daddr", "outer_saddr", "outer_daddr",
                   "quoted_saddr", "quoted_daddr")
# The IPv6 run's kernel addresses: another slab range on the same node.
SKB_SHIFT = np.uint64(0x4000_0000)
CT_SHIFT = np.uint64(0x2000_0000)


def v6_of(ip: str) -> str:
    """The IPv6 twin of a scenario address: 192.168.64.N -> fd00:64::N (the
    LAN), 10.217.A.B -> fd00:10:217:A::B (pods), 10.96.A.B -> fd00:10:96::A:B
    (cluster IPs); '' stays ''."""
    if not ip:
        return ""
    a, b, c, d = ip.split(".")
    if (a, b, c) == ("192", "168", "64"):
        return f"fd00:64::{d}"
    if (a, b) == ("10", "217"):
        return f"fd00:10:217:{c}::{d}"
    if (a, b) == ("10", "96"):
        return f"fd00:10:96::{c}:{d}"
    raise ValueError(f"no IPv6 twin for {ip}")


VIP6 = v6_of(s4.VIP)
PODS6 = tuple(replace(p, ip=v6_of(p.ip)) for p in s4.PODS)


def _to_ipv6_frame(frame: pd.DataFrame) -> pd.DataFrame:
    f = frame.copy()
    for col in ADDRESS_COLUMNS:
        cats = f[col].cat.categories
        f[col] = f[col].cat.rename_categories([v6_of(str(c)) for c in cats])
    f["ip_id"] = np.zeros(len(f), np.uint16)
    f["ip_hlen"] = np.full(len(f), 40, np.uint8)
    f["len"] = (f["len"].to_numpy().astype(np.int64) + 20).astype(np.uint16)
    return f


def service6(service: dict[str, Any]) -> dict[str, Any]:
    """The Service's ports as their IPv6 twins (the resolved Service's IPv6 ports)."""
    out = copy.deepcopy(service)
    for p in out["ports"]:
        p["family"] = "ipv6"
        for key in ("cluster_ips", "external_ips", "load_balancer_ips"):
            p[key] = [v6_of(ip) for ip in p.get(key) or []]
        for e in [*p.get("endpoints", []), *p.get("local_endpoints", [])]:
            e["ip"] = v6_of(e["ip"])
    return out


def _meta6(meta: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(meta)
    out["service"] = service6(meta["service"])
    out["service_history"] = [{**h, "service": service6(h["service"])}
                              for h in meta.get("service_history", [])]
    return out


def to_ipv6(sim: s4.Simulation) -> s4.Simulation:
    """The simulation as an IPv6-only cluster would capture it."""
    truth = sim.connections.copy()
    truth["client"] = [v6_of(c) for c in truth["client"]]
    truth["endpoint_ip"] = [v6_of(c) for c in truth["endpoint_ip"]]
    return s4.Simulation(
        scenario=sim.scenario,
        events={n: _to_ipv6_frame(f) for n, f in sim.events.items()},
        metas={n: _meta6(m) for n, m in sim.metas.items()},
        connections=truth,
    )


def simulate6(sc: s4.Scenario) -> s4.Simulation:
    return to_ipv6(s4.simulate(sc))


def mixed(sc4: s4.Scenario, sc6: s4.Scenario) -> tuple[s4.Simulation, s4.Simulation, s4.Simulation]:
    """(mixed, its IPv4 run, its IPv6 run): both runs on the same nodes at
    once, the Service dual-stack."""
    v4 = s4.simulate(sc4)
    v6 = simulate6(sc6)
    events, metas = {}, {}
    for node in v4.events:
        a, b = v4.events[node], v6.events[node].copy()
        b["skb"] = b["skb"].to_numpy() + SKB_SHIFT
        b["ct"] = np.where(b["ct"].to_numpy() != 0, b["ct"].to_numpy() + CT_SHIFT, 0).astype(np.uint64)
        both = pd.concat([a.assign(_family=4), b.assign(_family=6)], ignore_index=True)
        for col in a.columns:  # concat of differing categories gives objects
            if isinstance(a[col].dtype, pd.CategoricalDtype):
                both[col] = both[col].astype("category")
        events[node] = both.sort_values("_t_true", kind="stable").reset_index(drop=True)
        metas[node] = _mixed_meta(v4.metas[node], v6.metas[node], events[node])
    truth = pd.concat([v4.connections.assign(family=4), v6.connections.assign(family=6)],
                      ignore_index=True)
    return s4.Simulation(sc4, events, metas, truth), v4, v6


def _mixed_meta(m4: dict[str, Any], m6: dict[str, Any], f: pd.DataFrame) -> dict[str, Any]:
    out = copy.deepcopy(m4)
    out["service"]["ports"] += copy.deepcopy(m6["service"]["ports"])
    for h4, h6 in zip(out["service_history"], m6["service_history"], strict=True):
        h4["service"]["ports"] += copy.deepcopy(h6["service"]["ports"])
        h4["ts_ns"] = min(h4["ts_ns"], h6["ts_ns"])
    out["started_ns"] = min(m4["started_ns"], m6["started_ns"])
    out["ended_ns"] = max(m4["ended_ns"], m6["ended_ns"])
    for key in ("events_kernel", "events_read", "events", "lost"):
        out["stats"][key] = m4["stats"][key] + m6["stats"][key]
    out["stats"]["lost_by_probe"]["rx"] = out["stats"]["lost"]
    out["histograms"]["nat_hook_ns"] = m4["histograms"]["nat_hook_ns"]  # the IPv4 run's (unused)
    return out


# ICMP (type, code) -> the ICMPv6 error an IPv6 stack sends instead.
ICMPV6_OF = {(3, 3): (1, 4), (3, 1): (1, 3), (3, 13): (1, 1), (3, 10): (1, 1), (3, 4): (2, 0),
             (11, 0): (3, 0)}


def udp_to_ipv6(sim: Any) -> Any:
    """A tests/analysis/synthetic_udp.py simulation (UDP flows, ICMP errors
    from the pods, TCP beside them) as IPv6: the addresses' twins and ICMPv6
    (protocol 58) errors in place of ICMP ones. Changes sim in place."""
    for node, f in sim.events.items():
        f = _to_ipv6_frame(f)
        icmp = f["proto"].to_numpy() == 1
        pairs = [ICMPV6_OF[(int(t), int(c))] for t, c in zip(
            f.loc[icmp, "icmp_type"], f.loc[icmp, "icmp_code"], strict=True)]
        f.loc[icmp, "proto"] = 58
        f.loc[icmp, "icmp_type"] = np.array([t for t, _ in pairs], dtype=np.uint8)
        f.loc[icmp, "icmp_code"] = np.array([c for _, c in pairs], dtype=np.uint8)
        sim.events[node] = f
        sim.metas[node] = _meta6(sim.metas[node])
    return sim
