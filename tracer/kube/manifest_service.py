"""A Service document (v1) -> ServiceDraft, for tracer.kube.manifest: each
field checked as the API server checks it, or refused with
manifest_fields.Problem when the lab cannot render it (the address families:
tracer.kube.manifest_families). The draft's cluster IPs and node ports may
still be missing (tracer.kube.manifest_allocation fills
them in once every document is read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracer.kube import manifest_fields as fields
from tracer.kube.manifest_families import IPNetwork, read_families
from tracer.kube.model import (
    DEFAULT_AFFINITY_TIMEOUT_S,
    MAX_AFFINITY_TIMEOUT_S,
    PROTOCOLS,
    SERVICE_TYPES,
    SESSION_AFFINITIES,
    TRAFFIC_POLICIES,
    Labels,
    ServicePort,
    SessionAffinity,
)

# The apiserver's default --service-node-port-range.
NODE_PORT_RANGE = range(30000, 32768)


@dataclass
class ServiceDraft:
    """A Service as its document gives it: its cluster IPs and node ports may
    still be missing, its named target ports unresolved."""

    where: fields.Where
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    external_ips: tuple[str, ...]
    ports: list[ServicePort]
    selector: Labels
    external_traffic_policy: str
    session_affinity: SessionAffinity | None = None
    internal_traffic_policy: str = "Cluster"
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    # ipFamilies and ipFamilyPolicy as the API server settles them, and the
    # cluster IP of each family (None: allocate one); cluster_ip is the first.
    families: tuple[str, ...] = ("IPv4",)
    policy: str = "SingleStack"
    cluster_ips: tuple[str | None, ...] = (None,)


def read_service(
    doc: Mapping[str, Any], where: fields.Where, cidrs: Mapping[str, IPNetwork]
) -> ServiceDraft:
    """cidrs: the service CIDR of each family ("IPv4", "IPv6")."""
    fields.require_api_version(doc, "v1")
    namespace, name = fields.name_and_namespace(doc)
    spec = fields.mapping(doc.get("spec"), "spec")
    fields.check_service_spec(spec)
    service_type = spec.get("type", "ClusterIP")
    if service_type == "ExternalName":
        raise fields.Problem("type ExternalName is a DNS alias that kube-proxy does not program")
    if service_type not in SERVICE_TYPES:
        raise fields.Problem(
            f"unknown Service type {service_type!r} (expected {', '.join(SERVICE_TYPES)})"
        )
    families = read_families(spec, cidrs)
    external_ips = tuple(
        fields.parse_address(ip, "spec.externalIPs entry", families.families)
        for ip in fields.sequence(spec.get("externalIPs"), "spec.externalIPs")
    )
    if spec.get("selector") is None:
        raise fields.Problem(
            "spec.selector is missing: the lab finds a Service's pods through its selector"
        )
    selector = fields.labels(spec.get("selector"), "spec.selector")
    if not selector:
        raise fields.Problem("spec.selector is empty: it would select no pods")
    policy = spec.get("externalTrafficPolicy", "Cluster")
    if policy not in TRAFFIC_POLICIES:
        raise fields.Problem(
            f"spec.externalTrafficPolicy {policy!r} is not one of {', '.join(TRAFFIC_POLICIES)}"
        )
    if policy == "Local" and service_type == "ClusterIP":
        raise fields.Problem("spec.externalTrafficPolicy Local applies to NodePort and LoadBalancer only")
    internal_policy = spec.get("internalTrafficPolicy", "Cluster")
    if internal_policy not in TRAFFIC_POLICIES:
        raise fields.Problem(f"spec.internalTrafficPolicy {internal_policy!r} is not one of "
                             f"{', '.join(TRAFFIC_POLICIES)}")
    raw_ports = fields.sequence(spec.get("ports"), "spec.ports")
    if not raw_ports:
        raise fields.Problem("spec.ports is missing or empty")
    ports = [
        _service_port(raw, i, service_type, len(raw_ports)) for i, raw in enumerate(raw_ports)
    ]
    names = [p.name for p in ports]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise fields.Problem(f"spec.ports has duplicate port name {sorted(duplicates)[0]!r}")
    return ServiceDraft(
        where=where,
        namespace=namespace,
        name=name,
        type=service_type,
        cluster_ip=families.cluster_ips[0],
        external_ips=external_ips,
        ports=ports,
        selector=selector,
        external_traffic_policy=policy,
        session_affinity=_session_affinity(spec),
        internal_traffic_policy=internal_policy,
        load_balancer_ips=fields.load_balancer_ips(doc, service_type, families.families),
        load_balancer_source_ranges=fields.source_ranges(spec, service_type, families.families),
        families=families.families,
        policy=families.policy,
        cluster_ips=families.cluster_ips,
    )


def _session_affinity(spec: Mapping[str, Any]) -> SessionAffinity | None:
    """spec.sessionAffinity and spec.sessionAffinityConfig.clientIP.timeoutSeconds,
    checked as the API server checks them (a timeout in 1..86400, default 10800;
    no config without ClientIP)."""
    kind = spec.get("sessionAffinity", "None")
    if kind not in SESSION_AFFINITIES:
        raise fields.Problem(
            f"spec.sessionAffinity {kind!r} is not one of {', '.join(SESSION_AFFINITIES)}"
        )
    config = fields.mapping(
        spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", required=False
    )
    if kind == "None":
        if config:
            raise fields.Problem("spec.sessionAffinityConfig is set but spec.sessionAffinity is None")
        return None
    client_ip = fields.mapping(
        config.get("clientIP"), "spec.sessionAffinityConfig.clientIP", required=False
    )
    timeout = client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT_S)
    what = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    return SessionAffinity(fields.number(timeout, what, 1, MAX_AFFINITY_TIMEOUT_S))


def _service_port(raw: Any, index: int, service_type: str, count: int) -> ServicePort:
    where = f"spec.ports[{index}]"
    port = fields.mapping(raw, where)
    fields.check_service_port(port, where)
    name = port.get("name", "")
    if not isinstance(name, str) or (name and not fields.DNS_LABEL.match(name)):
        raise fields.Problem(f"{where}.name {name!r} is not a valid port name")
    if count > 1 and not name:
        raise fields.Problem(f"{where}.name is required when a Service has more than one port")
    protocol = port.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise fields.Problem(f"{where}.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if "port" not in port:
        raise fields.Problem(f"{where}.port is missing")
    number = fields.number(port["port"], f"{where}.port", 1, 65535)
    target = port.get("targetPort", number)  # the API server's default
    if isinstance(target, str):
        if not fields.IANA_SVC_NAME.match(target):
            raise fields.Problem(f"{where}.targetPort {target!r} is neither a number nor a port name")
    else:
        target = fields.number(target, f"{where}.targetPort", 1, 65535)
    node_port = port.get("nodePort")
    if node_port is not None:
        if service_type == "ClusterIP":
            raise fields.Problem(f"{where}.nodePort is set but the Service type is ClusterIP")
        node_port = fields.number(
            node_port, f"{where}.nodePort", NODE_PORT_RANGE.start, NODE_PORT_RANGE.stop - 1
        )
    return ServicePort(
        name=name, protocol=protocol, port=number, target_port=target, node_port=node_port
    )
