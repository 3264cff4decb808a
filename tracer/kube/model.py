"""Frozen dataclasses for the parts of Kubernetes objects the lab and the rule
renderer need: Deployments (pods to start), Services (what kube-proxy
programs) and Endpoints (the pods behind a service port).

Mappings (labels, selectors) are stored as sorted tuples of pairs so the
dataclasses stay frozen and hashable; `selector_map` / `pod_label_map` give
them back as dicts."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from tracer.errors import UsageError

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
TRAFFIC_POLICIES = ("Cluster", "Local")
SESSION_AFFINITIES = ("None", "ClientIP")
# spec.ipFamilies values and spec.ipFamilyPolicy values (the API's spelling).
IP_FAMILIES = ("IPv4", "IPv6")
IP_FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
# The renderers' and the resolved rules' spelling of a family.
FAMILY_OF_API = {"IPv4": "ipv4", "IPv6": "ipv6"}
# v1.DefaultClientIPServiceAffinitySeconds and v1.MaxClientIPServiceAffinitySeconds.
DEFAULT_AFFINITY_TIMEOUT_S = 10800
MAX_AFFINITY_TIMEOUT_S = 86400

Labels = tuple[tuple[str, str], ...]


def labels_from_mapping(mapping: Mapping[str, str] | None) -> Labels:
    """{"app": "x"} -> (("app", "x"),), sorted so equal mappings compare equal."""
    if not mapping:
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in mapping.items()))


@dataclass(frozen=True)
class SessionAffinity:
    """sessionAffinity: ClientIP. kube-proxy sends a client address's new
    connections to the endpoint it last chose for it, as long as that client
    opened one less than timeout_seconds ago (a sliding window: every new
    connection restarts it). None when the rules name no timeout (iptables
    `recent` without --seconds, an nft set without timeout): no expiry."""

    timeout_seconds: int | None = DEFAULT_AFFINITY_TIMEOUT_S
    type: str = "ClientIP"

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, "timeout_seconds": self.timeout_seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, object] | None) -> SessionAffinity | None:
        """{"type": "ClientIP", "timeout_seconds": N} -> SessionAffinity; None,
        {} or type "None" -> None (no affinity)."""
        if not data or data.get("type", "ClientIP") != "ClientIP":
            return None
        timeout = data.get("timeout_seconds")
        return cls(timeout_seconds=None if timeout is None else int(str(timeout)))


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" when the Service has a single unnamed port
    protocol: str  # "TCP", "UDP" or "SCTP"
    port: int
    target_port: int | str  # a number, or the name of a container port
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str  # "ClusterIP", "NodePort" or "LoadBalancer"
    cluster_ip: str | None
    external_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    selector: Labels
    external_traffic_policy: str = "Cluster"
    # status.loadBalancer.ingress[].ip; a manifest never sets these, tests and
    # the renderer can.
    load_balancer_ips: tuple[str, ...] = ()
    # spec.sessionAffinity ClientIP (with sessionAffinityConfig's timeout);
    # None for sessionAffinity None. kube-proxy applies it to every port.
    session_affinity: SessionAffinity | None = None
    # spec.internalTrafficPolicy: "Local" sends cluster-IP traffic only to
    # endpoints on the client's node.
    internal_traffic_policy: str = "Cluster"
    # spec.loadBalancerSourceRanges: the only client CIDRs a load-balancer IP
    # admits (empty: any).
    load_balancer_source_ranges: tuple[str, ...] = ()
    # spec.clusterIPs: one cluster IP per family, in spec.ipFamilies' order
    # (empty: cluster_ip alone, a single-stack Service of its family);
    # spec.ipFamilies and spec.ipFamilyPolicy as the API server settles
    # them (empty / None when the document did not say: IPv4 single stack).
    cluster_ips: tuple[str, ...] = ()
    ip_families: tuple[str, ...] = ()
    ip_family_policy: str | None = None

    def cluster_ip_for(self, family: str) -> str | None:
        """The cluster IP of family ("ipv4" or "ipv6"), None when the Service
        has none there (kube-proxy's proxier of that family skips it). A
        value that is no address counts as IPv4, so the IPv4 renderer still
        refuses it in one line."""
        for ip in self.cluster_ips or ((self.cluster_ip,) if self.cluster_ip else ()):
            if ip_family(ip) == family:
                return ip
        return None

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name): the key of the endpoints mapping the renderer takes."""
        return (self.namespace, self.name)

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def selector_map(self) -> dict[str, str]:
        return dict(self.selector)

    def selects(self, labels: Mapping[str, str] | Labels) -> bool:
        """True when every selector pair is among labels (Kubernetes' rule).

        An empty selector selects nothing here: a Service without a selector
        has hand-made Endpoints, which the lab does not model."""
        have = dict(labels)
        return bool(self.selector) and all(have.get(k) == v for k, v in self.selector)

    def port_named(self, name: str) -> ServicePort:
        for port in self.ports:
            if port.name == name:
                return port
        raise UsageError(f"{self.full_name} has no port named {name!r}")


def ip_family(value: str) -> str:
    """"ipv6" for an IPv6 address or CIDR, else "ipv4" (also for text that
    is neither: callers validate it as their family's)."""
    try:
        return "ipv6" if ipaddress.ip_network(value, strict=False).version == 6 else "ipv4"
    except ValueError:
        return "ipv4"


@dataclass(frozen=True)
class Deployment:
    namespace: str
    name: str
    replicas: int
    pod_labels: Labels
    container_ports: tuple[int, ...]
    image: str
    # containerPort names (name -> number), to resolve a Service's named targetPort.
    named_ports: tuple[tuple[str, int], ...] = ()
    # livenessProbe.httpGet path and port, when the manifest has one (the lab's
    # pods answer it).
    liveness_path: str | None = None
    liveness_port: int | None = None
    # containerPorts with protocol UDP (container_ports holds the TCP ones):
    # the lab serves them with dnsmasq, the TCP ones with nginx.
    udp_ports: tuple[int, ...] = ()

    @property
    def pod_label_map(self) -> dict[str, str]:
        return dict(self.pod_labels)


@dataclass(frozen=True)
class Endpoint:
    """One pod address behind a service port; port is the resolved targetPort."""

    ip: str
    port: int
    node: str | None = None
    pod: str | None = None
    ready: bool = True


@dataclass(frozen=True)
class Manifest:
    deployments: tuple[Deployment, ...]
    services: tuple[Service, ...]
    source: str

    def service(self, name: str, namespace: str | None = None) -> Service:
        """The Service called name (in namespace, or in any namespace if unique)."""
        found = [
            s for s in self.services if s.name == name and namespace in (None, s.namespace)
        ]
        if len(found) == 1:
            return found[0]
        if not found:
            known = ", ".join(s.full_name for s in self.services) or "none"
            raise UsageError(f"{self.source}: no Service {name!r} (services: {known})")
        names = ", ".join(s.full_name for s in found)
        raise UsageError(f"{self.source}: Service name {name!r} is ambiguous: {names}")

    def deployment(self, name: str, namespace: str = "default") -> Deployment:
        for d in self.deployments:
            if d.name == name and d.namespace == namespace:
                return d
        raise UsageError(f"{self.source}: no Deployment {namespace}/{name}")

    def backing_deployments(self, service: Service) -> tuple[Deployment, ...]:
        """Deployments in the Service's namespace whose pods its selector matches."""
        return tuple(
            d
            for d in self.deployments
            if d.namespace == service.namespace and service.selects(d.pod_labels)
        )

    def backing_deployment(self, service: Service) -> Deployment | None:
        """The first Deployment behind the Service (None when there is none)."""
        found = self.backing_deployments(service)
        return found[0] if found else None
