"""What kube-proxy decides before it writes a rule, the same in its iptables
and nftables modes (tracer.kube.iptables_render, tracer.kube.nftables_render):
the node options checked, one service port's endpoints in kube-proxy's
order, and which of them carry cluster and external traffic.

PortPlan follows the part of syncProxyRules() that both proxiers share
(pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go): the
service's addresses, pkg/proxy/topology.go CategorizeEndpoints without
topology hints or terminating endpoints, and the external traffic policy.

kube-proxy runs one proxier per IP family; each sees only its family's part
of a Service (its cluster IP from spec.clusterIPs, its external and
load-balancer IPs, source ranges and EndpointSlices). `family` ("ipv4", the
default, or "ipv6") selects that part here, so the renderers write one
family's rules per call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from tracer.errors import UsageError
from tracer.kube import naming
from tracer.kube.model import PROTOCOLS, Endpoint, Service, ServicePort, ip_family

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ADDRESS = {"ipv4": (ipaddress.IPv4Address, "IPv4"), "ipv6": (ipaddress.IPv6Address, "IPv6")}
_NETWORK = {"ipv4": ipaddress.IPv4Network, "ipv6": ipaddress.IPv6Network}


def check_node_options(
    node_ips: Sequence[str], nodeport_addresses: str, cluster_cidr: str | None,
    family: str = "ipv4",
) -> tuple[list[IPAddress], str | None]:
    """The node settings both of kube-proxy's modes take, checked: the node's
    addresses and the cluster CIDR in canonical form, of family."""
    if nodeport_addresses not in ("all", "node-ips"):
        raise UsageError(
            f"nodeport_addresses must be 'all' or 'node-ips', not {nodeport_addresses!r}"
        )
    node_addresses = [address(ip, "node IP", family) for ip in node_ips]
    if nodeport_addresses == "node-ips" and not node_addresses:
        raise UsageError("nodeport_addresses='node-ips' needs at least one node IP")
    if cluster_cidr is not None and ip_family(cluster_cidr) != family:
        raise UsageError(f"cluster CIDR {cluster_cidr!r} is not an {_ADDRESS[family][1]} CIDR")
    if cluster_cidr is not None:
        try:
            cluster_cidr = str(_NETWORK[family](cluster_cidr))
        except ValueError as exc:
            raise UsageError(f"cluster CIDR {cluster_cidr!r}: {exc}") from None
    return node_addresses, cluster_cidr


def ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not an IPv4 address") from None


def address(value: str, what: str, family: str = "ipv4") -> IPAddress:
    """value as an address of family, or a UsageError saying it is not one."""
    kind, name = _ADDRESS[family]
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not an {name} address") from None


def of_family(values: Sequence[str], family: str) -> list[str]:
    """The values of family: kube-proxy's proxier of one family ignores the
    other's addresses. Text that is no address counts as IPv4 (ip_family),
    so the IPv4 path refuses it as before."""
    return [v for v in values if ip_family(v) == family]


def port_endpoints(
    service: Service, port: ServicePort, endpoints: Sequence[Endpoint], family: str = "ipv4"
) -> list[Endpoint]:
    """The endpoints of one service port of family (kube-proxy's proxier of a
    family reads only that family's EndpointSlices), deduplicated and in
    kube-proxy's order.

    kube-proxy keeps endpoints in a set keyed by "ip:port" and sorts them by
    that string (pkg/proxy/endpointslicecache.go, byEndpoint), so 10.0.0.10
    comes before 10.0.0.9: string order, not numeric."""
    if len(service.ports) > 1:
        if not isinstance(port.target_port, int):
            raise UsageError(
                f"{service.full_name}: targetPort {port.target_port!r} of port {port.name!r} "
                "is a name; resolve it to a number first (load_manifest does)"
            )
        endpoints = [e for e in endpoints if e.port == port.target_port]
    unique: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        if ip_family(endpoint.ip) != family:
            continue  # the other family's EndpointSlice
        address(endpoint.ip, f"{service.full_name}: endpoint", family)
        unique.setdefault(naming.endpoint_string(endpoint.ip, endpoint.port), endpoint)
    return [unique[key] for key in sorted(unique)]


@dataclass(frozen=True)
class PortPlan:
    """One service port as both proxiers see it before writing its rules."""

    spn: str  # ServicePortName: "ns/name:port" ("ns/name" for an unnamed port)
    proto: str  # "tcp", "udp" or "sctp"
    cluster_ip: str
    external_ips: list[str]
    lb_ips: list[str]
    cluster_endpoints: list[Endpoint]  # the ready ones
    local_endpoints: list[Endpoint]  # the ready ones on this node
    # Reachable from outside the cluster network: a node port, external or LB IPs.
    externally_accessible: bool
    # ExternalPolicyLocal (pkg/api/v1/service): only NodePort/LoadBalancer.
    external_policy_local: bool
    # InternalPolicyLocal: internalTrafficPolicy Local.
    internal_policy_local: bool = False
    # loadBalancerSourceRanges, as networks ("203.0.113.0/25").
    source_ranges: tuple[str, ...] = field(default=())

    @property
    def has_endpoints(self) -> bool:
        """hasEndpoints: a ready endpoint anywhere in the cluster."""
        return bool(self.cluster_endpoints)

    @property
    def has_internal_endpoints(self) -> bool:
        """The cluster IP has somewhere to go: any endpoint under Cluster
        internal policy, a local one under Local (else kube-proxy DROPs it)."""
        return self.has_endpoints and (bool(self.local_endpoints) or not self.internal_policy_local)

    @property
    def uses_cluster_chain(self) -> bool:
        """UsesClusterEndpoints: KUBE-SVC / service- exists. Even under
        external policy Local it carries the pods' and the node's short-circuit."""
        return self.has_endpoints and (not self.internal_policy_local or self.externally_accessible)

    @property
    def reachable_endpoints(self) -> list[Endpoint]:
        """allLocallyReachableEndpoints: those that get an endpoint chain."""
        return self.cluster_endpoints if self.uses_cluster_chain else self.local_endpoints

    @property
    def uses_firewall(self) -> bool:
        """A load-balancer IP with source ranges: KUBE-FW / firewall-<B>."""
        return bool(self.lb_ips) and bool(self.source_ranges)

    def firewall_admits_lb_ips(self, node_ip: str | None) -> bool:
        """allowFromNode: a range holds the node's IP, so the firewall also
        admits the LB IPs as sources (a node reaching its own VIP loops back
        from it)."""
        if node_ip is None:
            return False
        node = ipaddress.ip_address(node_ip)
        return any(node in ipaddress.ip_network(r) for r in self.source_ranges
                   if ipaddress.ip_network(r).version == node.version)

    @property
    def has_external_endpoints(self) -> bool:
        """External traffic has somewhere to go: any endpoint under Cluster
        policy, a local one under Local policy."""
        return self.has_endpoints and (
            bool(self.local_endpoints) or not self.external_policy_local
        )

    @property
    def uses_local_chain(self) -> bool:
        """UsesLocalEndpoints with a local endpoint: KUBE-SVL / local- exists."""
        uses_local = self.internal_policy_local or (
            self.external_policy_local and self.externally_accessible
        )
        return uses_local and bool(self.local_endpoints)


def plan_service_port(
    service: Service, port: ServicePort, endpoints: list[Endpoint], node_name: str | None,
    family: str = "ipv4",
) -> PortPlan:
    """PortPlan of one port of service as the proxier of family sees it (the
    service must have a cluster IP of family); endpoints as port_endpoints
    gives them. Checks what a proxier would refuse (protocol, addresses) as
    UsageError."""
    if port.protocol not in PROTOCOLS:
        raise UsageError(f"{service.full_name}: protocol {port.protocol!r} is not TCP, UDP or SCTP")
    own_ip = service.cluster_ip_for(family)
    assert own_ip is not None
    name = service.full_name
    cluster_ip = str(address(own_ip, f"{name}: cluster IP", family))
    external_ips = [
        str(address(ip, f"{name}: external IP", family))
        for ip in of_family(service.external_ips, family)
    ]
    lb_ips = [
        str(address(ip, f"{name}: load-balancer IP", family))
        for ip in of_family(service.load_balancer_ips, family)
    ]
    cluster_endpoints = [e for e in endpoints if e.ready]
    return PortPlan(
        spn=naming.service_port_name(service.namespace, service.name, port.name),
        proto=port.protocol.lower(),
        cluster_ip=cluster_ip,
        external_ips=external_ips,
        lb_ips=lb_ips,
        cluster_endpoints=cluster_endpoints,
        local_endpoints=[
            e for e in cluster_endpoints if node_name is not None and e.node == node_name
        ],
        externally_accessible=bool(port.node_port or external_ips or lb_ips),
        external_policy_local=(
            service.external_traffic_policy == "Local"
            and service.type in ("NodePort", "LoadBalancer")
        ),
        internal_policy_local=service.internal_traffic_policy == "Local",
        source_ranges=tuple(
            _network(r, f"{service.full_name}: loadBalancerSourceRanges entry", family)
            for r in of_family(service.load_balancer_source_ranges, family)
        ),
    )


def _network(value: str, what: str, family: str = "ipv4") -> str:
    """"203.0.113.5/25" -> "203.0.113.0/25", as kube-proxy prints a parsed CIDR."""
    try:
        return str(_NETWORK[family](value, strict=False))
    except ValueError:
        raise UsageError(f"{what} {value!r} is not an {_ADDRESS[family][1]} CIDR") from None
