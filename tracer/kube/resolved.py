"""What resolving a node's kube-proxy rules yields, whichever mode wrote them:
Services with their addresses and the endpoints behind each port, with the
share of new connections kube-proxy's load balancing gives each.

Both parsers produce these: tracer.kube.iptables_parse (iptables mode, the
nat table, and the filter table for Services without endpoints) and
tracer.kube.nftables_parse (nftables mode, table ip kube-proxy or ip6
kube-proxy). Chain names are the mode's own: KUBE-SVC-.../KUBE-SEP-... or
service-.../endpoint-....

IPv6 and dual stack. kube-proxy runs one proxier per IP family, each with
rules of its own (ip6tables-save; table ip6 kube-proxy), with the same chain
names for the same ServicePortName. A dual-stack Service therefore resolves
to ONE ResolvedService with one ResolvedServicePort per family and port
(merge_families): each port keeps what its family's rules say (its VIPs,
its endpoints and their shares, its chains), since kube-proxy balances each
family on its own, and a port's family is the family of its addresses
(ResolvedServicePort.family). One port per family rather than both
families' addresses in one port because that is how a capture's filter
reads a Service: it takes every (ip, port, protocol) of every port
(ResolvedService.service_addresses / endpoint_addresses / all_addresses),
so `--svc NAME` traces both families at once with nothing to choose, while
each port's endpoint shares still add up to 1 within its family.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tracer.errors import TracerError
from tracer.kube.model import SessionAffinity


class PartialRulesError(TracerError):
    """The rules jump to a service chain whose body is not in the text: a
    partial restore input (kube-proxy writes only changed services' chains
    on a partial sync), not a node's whole table. Resolving it would give
    Services without endpoints that in truth have some."""

    def __init__(self, jumper: str, chain: str):
        super().__init__(
            f"the rules are partial: {jumper} jumps to {chain}, whose body is not in the text "
            "(kube-proxy's partial restore input?); give the whole table (iptables-save, "
            "nft list table ip kube-proxy)"
        )


@dataclass(frozen=True)
class ResolvedEndpoint:
    ip: str
    port: int
    protocol: str  # lower case, as in the rules: "tcp", "udp", "sctp"
    # iptables: the rule's --probability (1.0 for the final unconditional rule).
    # nftables: the endpoint's fraction of the `numgen random mod N` vmap,
    # which picks among all endpoints at once (equal to share).
    probability: float
    share: float  # the fraction of new connections it gets: p_i * prod_{j<i}(1 - p_j)
    chain: str  # KUBE-SEP-... (iptables) or endpoint-... (nftables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "port": self.port,
            "protocol": self.protocol,
            "probability": self.probability,
            "share": self.share,
            "chain": self.chain,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedEndpoint:
        return cls(
            ip=str(data["ip"]),
            port=int(data["port"]),
            protocol=str(data["protocol"]),
            probability=float(data["probability"]),
            share=float(data["share"]),
            chain=str(data["chain"]),
        )


Address = tuple[str | None, int, str]  # (ip or None for "any node address", port, protocol)


@dataclass(frozen=True)
class ResolvedServicePort:
    port_name: str | None  # "" for an unnamed port, None when no comment tells
    protocol: str
    port: int | None  # the service port (the VIP rules' --dport)
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    node_port: int | None = None
    service_chain: str | None = None  # KUBE-SVC-<hash> / service-<base>
    external_chain: str | None = None  # KUBE-EXT-<hash> / external-<base>
    local_chain: str | None = None  # KUBE-SVL-<hash> (KUBE-XLB- on old releases) / local-<base>
    firewall_chain: str | None = None  # KUBE-FW-<hash> / firewall-<base>
    # "Cluster" or "Local" as seen in KUBE-EXT / external-* (None without
    # external destinations).
    external_policy: str | None = None
    endpoints: tuple[ResolvedEndpoint, ...] = ()  # cluster-policy choice (KUBE-SVC / service-)
    local_endpoints: tuple[ResolvedEndpoint, ...] = ()  # local-policy choice (KUBE-SVL / local-)
    # The Service has no ready endpoint: kube-proxy wrote no NAT for this
    # port, only filter rules that REJECT its traffic (the client sees ICMP
    # port unreachable: connection refused). reject_in names where: the
    # filter chains (KUBE-SERVICES, KUBE-EXTERNAL-SERVICES) or the verdict
    # maps (no-endpoint-services, no-endpoint-nodeports).
    no_endpoints: bool = False
    reject_in: tuple[str, ...] = ()
    # The Service has endpoints, but none on this node for a traffic policy
    # Local: kube-proxy DROPs that traffic in the filter path (see
    # tracer.kube.local_drops). no_local_endpoints says whose ("internal":
    # the cluster IP, internalTrafficPolicy Local; "external": external and
    # LB IPs and the node port, externalTrafficPolicy Local), drop_in where
    # (KUBE-SERVICES, KUBE-EXTERNAL-SERVICES; no-endpoint-services,
    # no-endpoint-nodeports).
    no_local_endpoints: tuple[str, ...] = ()
    drop_in: tuple[str, ...] = ()
    # ClientIP session affinity as the rules apply it (iptables: `-m recent
    # --rcheck --seconds T` rules heading KUBE-SVC/KUBE-SVL; nftables: `ip
    # saddr @affinity-... goto endpoint-...` with the set's timeout); None
    # without. It does not change the split of a client's first connection.
    session_affinity: SessionAffinity | None = None
    # Traffic policies as the rules implement them. The cluster IP enters
    # cluster_ip_chain: KUBE-SVC / service- (internal_policy "Cluster") or
    # KUBE-SVL / local- ("Local": only this node's endpoints, local_endpoints).
    # Load-balancer IPs enter load_balancer_chain: the firewall chain when
    # loadBalancerSourceRanges are set (only those sources pass; the ranges,
    # as CIDRs, in load_balancer_source_ranges), else the external chain.
    # External IPs and node ports enter external_chain. Under external
    # policy Local, kube-proxy sends pods (sources in pod_cidrs, its
    # "pod traffic" short-circuit) and the node itself to the cluster-wide
    # endpoints, and masquerades neither external clients nor pods.
    cluster_ip_chain: str | None = None
    internal_policy: str | None = None
    load_balancer_chain: str | None = None
    load_balancer_source_ranges: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """"ipv4" or "ipv6": the family of the port's addresses (kube-proxy
        programs each family in rules of its own, so they never mix within
        a port). "ipv4" for a port without any address."""
        for ip in (*self.cluster_ips, *self.external_ips, *self.load_balancer_ips,
                   *(e.ip for e in (*self.endpoints, *self.local_endpoints)), *self.pod_cidrs):
            return address_family(ip)
        return "ipv4"

    def entry_points(self) -> list[dict[str, Any]]:
        """Per kind of address (cluster_ip, external_ip, load_balancer_ip,
        node_port): the addresses, the chain they enter and the policy that
        applies; kinds the port does not have are left out."""
        out = []
        if self.cluster_ips:
            out.append({"kind": "cluster_ip", "addresses": list(self.cluster_ips),
                        "chain": self.cluster_ip_chain, "policy": self.internal_policy})
        for kind, addresses, chain in (
            ("external_ip", self.external_ips, self.external_chain),
            ("load_balancer_ip", self.load_balancer_ips, self.load_balancer_chain),
        ):
            if addresses:
                out.append({"kind": kind, "addresses": list(addresses), "chain": chain,
                            "policy": self.external_policy})
        if self.node_port is not None:
            out.append({"kind": "node_port", "addresses": [], "chain": self.external_chain,
                        "policy": self.external_policy})
        return out

    def service_addresses(self) -> list[Address]:
        """Every (ip, port, protocol) this port is reached at; node ports as (None, ...)."""
        out: list[Address] = []
        if self.port is not None:
            for ip in (*self.cluster_ips, *self.external_ips, *self.load_balancer_ips):
                out.append((ip, self.port, self.protocol))
        if self.node_port is not None:
            out.append((None, self.node_port, self.protocol))
        return out

    def endpoint_addresses(self) -> list[Address]:
        out: list[Address] = []
        for endpoint in (*self.endpoints, *self.local_endpoints):
            address = (endpoint.ip, endpoint.port, endpoint.protocol)
            if address not in out:
                out.append(address)
        return out

    def chains(self) -> tuple[str, ...]:
        named = (self.service_chain, self.external_chain, self.local_chain, self.firewall_chain)
        return tuple(c for c in named if c)

    def to_dict(self) -> dict[str, Any]:
        return {
            "port_name": self.port_name,
            "protocol": self.protocol,
            "port": self.port,
            "cluster_ips": list(self.cluster_ips),
            "external_ips": list(self.external_ips),
            "load_balancer_ips": list(self.load_balancer_ips),
            "node_port": self.node_port,
            "service_chain": self.service_chain,
            "external_chain": self.external_chain,
            "local_chain": self.local_chain,
            "firewall_chain": self.firewall_chain,
            "external_policy": self.external_policy,
            "endpoints": [e.to_dict() for e in self.endpoints],
            "local_endpoints": [e.to_dict() for e in self.local_endpoints],
            "no_endpoints": self.no_endpoints,
            "reject_in": list(self.reject_in),
            "no_local_endpoints": list(self.no_local_endpoints),
            "drop_in": list(self.drop_in),
            "session_affinity": (
                self.session_affinity.to_dict() if self.session_affinity else None
            ),
            "cluster_ip_chain": self.cluster_ip_chain,
            "internal_policy": self.internal_policy,
            "load_balancer_chain": self.load_balancer_chain,
            "load_balancer_source_ranges": list(self.load_balancer_source_ranges),
            "pod_cidrs": list(self.pod_cidrs),
            "entry_points": self.entry_points(),
            # Only IPv6 ports say so: every capture before IPv6 stored IPv4
            # ports without the key, and an IPv4 port's dict stays as it was.
            **({"family": "ipv6"} if self.family == "ipv6" else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedServicePort:
        return cls(
            port_name=data.get("port_name"),
            protocol=str(data["protocol"]),
            port=data.get("port"),
            cluster_ips=tuple(data.get("cluster_ips", ())),
            external_ips=tuple(data.get("external_ips", ())),
            load_balancer_ips=tuple(data.get("load_balancer_ips", ())),
            node_port=data.get("node_port"),
            service_chain=data.get("service_chain"),
            external_chain=data.get("external_chain"),
            local_chain=data.get("local_chain"),
            firewall_chain=data.get("firewall_chain"),
            external_policy=data.get("external_policy"),
            endpoints=tuple(ResolvedEndpoint.from_dict(e) for e in data.get("endpoints", ())),
            local_endpoints=tuple(
                ResolvedEndpoint.from_dict(e) for e in data.get("local_endpoints", ())
            ),
            no_endpoints=bool(data.get("no_endpoints", False)),
            reject_in=tuple(data.get("reject_in", ())),
            no_local_endpoints=tuple(data.get("no_local_endpoints", ())),
            drop_in=tuple(data.get("drop_in", ())),
            session_affinity=SessionAffinity.from_dict(data.get("session_affinity")),
            cluster_ip_chain=data.get("cluster_ip_chain"),
            internal_policy=data.get("internal_policy"),
            load_balancer_chain=data.get("load_balancer_chain"),
            load_balancer_source_ranges=tuple(data.get("load_balancer_source_ranges", ())),
            pod_cidrs=tuple(data.get("pod_cidrs", ())),
        )


@dataclass(frozen=True)
class ResolvedService:
    namespace: str | None  # None when the service is only known by its chain
    name: str  # the Service name, or the KUBE-SVC/KUBE-EXT chain name
    ports: tuple[ResolvedServicePort, ...]
    # Where the name came from: "comment" (iptables rule comments), "chain-name"
    # (nftables chain names, which spell out ns/name/proto/port) or "chain"
    # (nothing names it: `name` is a chain).
    name_source: str = "comment"

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace is not None else self.name

    @property
    def no_endpoints(self) -> bool:
        """Every port is rejected for want of endpoints (see ResolvedServicePort)."""
        return bool(self.ports) and all(p.no_endpoints for p in self.ports)

    def service_addresses(self) -> list[Address]:
        """(ip, port, protocol) of every VIP, external and LB IP; node ports as (None, ...)."""
        return _unique(a for p in self.ports for a in p.service_addresses())

    def endpoint_addresses(self) -> list[Address]:
        return _unique(a for p in self.ports for a in p.endpoint_addresses())

    def all_addresses(self) -> list[Address]:
        """Service addresses, then endpoint addresses: everything a packet of
        this service can carry as its destination, before or after DNAT."""
        return _unique([*self.service_addresses(), *self.endpoint_addresses()])

    def chains(self) -> tuple[str, ...]:
        return tuple(c for p in self.ports for c in p.chains())

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "name_source": self.name_source,
            "ports": [p.to_dict() for p in self.ports],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedService:
        return cls(
            namespace=data.get("namespace"),
            name=str(data["name"]),
            ports=tuple(ResolvedServicePort.from_dict(p) for p in data.get("ports", ())),
            name_source=str(data.get("name_source", "comment")),
        )


@dataclass(kw_only=True)
class PortDraft:
    """One service port's addresses as a parser finds them in the dispatch
    rules or maps (KUBE-SERVICES/KUBE-NODEPORTS, service-ips/
    service-nodeports), before it walks the port's chains."""

    protocol: str | None = None
    port: int | None = None
    cluster_ips: list[str] = field(default_factory=list)
    external_ips: list[str] = field(default_factory=list)
    load_balancer_ips: list[str] = field(default_factory=list)
    node_port: int | None = None
    # The chains the cluster IP and the load-balancer IPs jump to.
    cluster_ip_chain: str | None = None
    load_balancer_chain: str | None = None

    def resolved(self, **from_chains: Any) -> ResolvedServicePort:
        """The port: these addresses, and what its chains say (port_name,
        protocol, the chains, external_policy, endpoints, local_endpoints)."""
        return ResolvedServicePort(
            port=self.port,
            cluster_ips=tuple(self.cluster_ips),
            external_ips=tuple(self.external_ips),
            load_balancer_ips=tuple(self.load_balancer_ips),
            node_port=self.node_port,
            cluster_ip_chain=self.cluster_ip_chain,
            load_balancer_chain=self.load_balancer_chain,
            **from_chains,
        )


def group_services(
    ports: Iterable[tuple[tuple[str, str] | None, str, ResolvedServicePort]], name_source: str
) -> list[ResolvedService]:
    """(namespace and name, or None; a chain to name it by otherwise; port),
    in the order the rules list them -> Services: the named ones one per
    name (name_source says where names come from), sorted; then every port
    nothing names, as a Service of its own named by its chain."""
    named: dict[tuple[str, str], list[ResolvedServicePort]] = {}
    by_chain: list[ResolvedService] = []
    for name, chain, port in ports:
        if name is None:
            by_chain.append(ResolvedService(namespace=None, name=chain, ports=(port,), name_source="chain"))
        else:
            named.setdefault(name, []).append(port)
    services = [
        ResolvedService(namespace=ns, name=name, ports=tuple(ports), name_source=name_source)
        for (ns, name), ports in sorted(named.items())
    ]
    return services + sorted(by_chain, key=lambda s: s.name)


def address_family(value: str) -> str:
    """"10.0.0.1", "10.0.0.0/8" -> "ipv4"; "fd00::1", "fd00::/64" -> "ipv6"."""
    try:
        version = ipaddress.ip_network(value, strict=False).version
    except ValueError:
        version = 6 if ":" in value else 4
    return "ipv6" if version == 6 else "ipv4"


def merge_families(*families: Iterable[ResolvedService]) -> list[ResolvedService]:
    """Each family's Services (one list per proxier: IPv4, IPv6) -> the
    node's Services: a Service found in more than one family (the same
    namespace and name, or the same chain name for one nothing names) is
    one ResolvedService with the ports of each family, IPv4's first.

    Sorted as group_services sorts: named Services by namespace and name,
    then those named by a chain. name_source is the first family's."""
    merged: dict[tuple[str | None, str], ResolvedService] = {}
    for services in families:
        for service in services:
            key = (service.namespace, service.name)
            have = merged.get(key)
            merged[key] = service if have is None else replace(have, ports=have.ports + service.ports)
    named = sorted((s for s in merged.values() if s.namespace is not None),
                   key=lambda s: (s.namespace or "", s.name))
    by_chain = sorted((s for s in merged.values() if s.namespace is None), key=lambda s: s.name)
    return named + by_chain


def _unique(addresses: Iterable[Address]) -> list[Address]:
    out: list[Address] = []
    for address in addresses:
        if address not in out:
            out.append(address)
    return out
