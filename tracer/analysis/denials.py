"""Failed connections that kube-proxy refused on purpose: a client outside a
LoadBalancer Service's loadBalancerSourceRanges, connecting to one of its
load-balancer IPs.

kube-proxy sends such a client's packets from the firewall chain (KUBE-FW-* /
firewall-*) on to nothing: they are not DNATed and KUBE-PROXY-FIREWALL (or the
firewall chain itself in nftables mode) drops them. That is the Service
working as configured, not a fault, so `tracer diagnose` names it as a denial
instead of an unexplained drop. The rules come from the capture's resolved
Service (tracer.kube.resolved.ResolvedServicePort.to_dict in the meta): only
what the rules say counts, and a failed connection from an admitted source
is a failure like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracer.analysis.addresses import Networks, endpoint, int_to_ip, ip_to_int

KIND = "loadBalancerSourceRanges"


@dataclass(frozen=True)
class SourceRanges:
    """One service port's load-balancer IPs and the sources they admit."""

    lb_ips: frozenset[str]
    port: int
    ranges: tuple[str, ...]
    chain: str | None

    def admits(self, client: str) -> bool:
        """Either family: an IPv6 client is admitted by IPv6 ranges only."""
        return Networks(self.ranges).contains(ip_to_int(client))


def source_ranges(service: dict[str, Any] | None) -> list[SourceRanges]:
    """The ports of a resolved Service (its to_dict form) with source ranges."""
    out = []
    for port in (service or {}).get("ports", ()):
        ranges = tuple(port.get("load_balancer_source_ranges") or ())
        lb_ips = frozenset(_canonical(ip) for ip in port.get("load_balancer_ips") or ())
        if ranges and lb_ips and port.get("port") is not None:
            out.append(SourceRanges(lb_ips, int(port["port"]), ranges,
                                    port.get("firewall_chain") or port.get("load_balancer_chain")))
    return out


def _canonical(ip: str) -> str:
    """As int_to_ip writes it, so an IPv6 LB IP compares equal to the packets'."""
    try:
        return int_to_ip(ip_to_int(str(ip)))
    except ValueError:
        return str(ip)


def denied_by(client_ip: float, frontend_ip: float, frontend_port: float,
              rules: list[SourceRanges]) -> tuple[str, int, SourceRanges] | None:
    """(LB IP, port, its ranges) when this connection went to a load-balancer
    IP whose source ranges do not admit its client; None otherwise."""
    if not rules or any(v != v for v in (client_ip, frontend_ip, frontend_port)):  # NaN
        return None
    client, lb_ip, port = int_to_ip(int(client_ip)), int_to_ip(int(frontend_ip)), int(frontend_port)
    for rule in rules:
        if lb_ip in rule.lb_ips and port == rule.port and not rule.admits(client):
            return lb_ip, port, rule
    return None


def group_doc(denials: list[tuple[str, int, SourceRanges] | None],
              clients: list[str]) -> dict[str, Any] | None:
    """The group's `denied_by`, when every connection of it is a denial."""
    if not denials or any(d is None for d in denials):
        return None
    first = denials[0]
    assert first is not None
    lb_ips = sorted({endpoint(d[0], d[1]) for d in denials if d})
    return {"kind": KIND, "ranges": list(first[2].ranges), "chain": first[2].chain,
            "load_balancer_ips": lb_ips, "sources": sorted(set(clients))}


def finding(doc: dict[str, Any], count: int) -> str:
    chain = f" ({doc['chain']})" if doc["chain"] else ""
    return (f"all {count} denied by loadBalancerSourceRanges{chain}: source(s) "
            f"{', '.join(doc['sources'])} not in {', '.join(doc['ranges'])}, the ranges "
            f"{', '.join(doc['load_balancer_ips'])} admits; kube-proxy drops them by design")
