"""Kubernetes manifests (multi-document YAML) -> Manifest.

Only what the lab renders is read: Deployments (apps/v1) and Services (v1).
Other kinds are skipped without a word. Anything the lab cannot render raises
ManifestError with one line that says where:

    "{source}: document {n} ({kind} {name}): {problem}"

A Service without a clusterIP gets one allocated deterministically inside the
service CIDR (a stable hash of namespace/name, probing past 10.96.0.1 and
addresses already taken), as a NodePort without nodePort gets one in
30000-32767. The same manifest therefore always renders the same rules.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tracer.errors import ManifestError
from tracer.kube import manifest_fields as fields
from tracer.kube.model import (
    DEFAULT_AFFINITY_TIMEOUT_S,
    MAX_AFFINITY_TIMEOUT_S,
    PROTOCOLS,
    SERVICE_TYPES,
    SESSION_AFFINITIES,
    TRAFFIC_POLICIES,
    Deployment,
    Labels,
    Manifest,
    Service,
    ServicePort,
    SessionAffinity,
)

# kubeadm's default --service-cluster-ip-range; the first address belongs to
# the default/kubernetes Service (the apiserver allocates it to itself).
SERVICE_CIDR = "10.96.0.0/12"
# The apiserver's default --service-node-port-range.
NODE_PORT_RANGE = range(30000, 32768)

SHIPPED_MANIFEST = Path(__file__).resolve().parent.parent / "lab" / "manifests" / "nginx-demo.yaml"


@dataclass
class _ServiceDraft:
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


def load_manifest(path: str | Path, *, service_cidr: str = SERVICE_CIDR) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror}") from exc
    return parse_manifest(text, source=str(path), service_cidr=service_cidr)


def parse_manifest(
    text: str, source: str = "<string>", *, service_cidr: str = SERVICE_CIDR
) -> Manifest:
    cidr = ipaddress.IPv4Network(service_cidr)
    deployments: list[tuple[fields.Where, Deployment]] = []
    drafts: list[_ServiceDraft] = []
    for number, doc in fields.yaml_documents(text, source):
        if doc is None:
            continue
        where = fields.Where(source, number)
        if not isinstance(doc, dict):
            raise where.error(f"expected a mapping (an object), got {fields.yaml_type(doc)}")
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            raise where.error("has no 'kind'")
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        where = fields.Where(source, number, kind, name if isinstance(name, str) else None)
        if kind not in ("Deployment", "Service"):
            continue  # ConfigMaps, Ingresses, ...: not the lab's business
        try:
            if kind == "Deployment":
                deployments.append((where, _deployment(doc)))
            else:
                drafts.append(_service_draft(doc, where, cidr))
        except fields.Problem as exc:
            raise where.error(str(exc)) from None

    _reject_duplicates(
        [(w, d.namespace, d.name) for w, d in deployments], "Deployment"
    )
    _reject_duplicates([(s.where, s.namespace, s.name) for s in drafts], "Service")
    deployment_list = tuple(d for _, d in deployments)
    services = _finish_services(drafts, deployment_list, cidr)
    return Manifest(deployments=deployment_list, services=services, source=source)


# --- Deployment ------------------------------------------------------------------------


def _deployment(doc: Mapping[str, Any]) -> Deployment:
    fields.require_api_version(doc, "apps/v1")
    namespace, name = fields.name_and_namespace(doc)
    spec = fields.mapping(doc.get("spec"), "spec")
    replicas = spec.get("replicas", 1)  # the API server's default
    replicas = fields.number(replicas, "spec.replicas", 0, 1000)
    template = fields.mapping(spec.get("template"), "spec.template")
    template_meta = fields.mapping(template.get("metadata"), "spec.template.metadata")
    pod_labels = fields.labels(template_meta.get("labels"), "spec.template.metadata.labels")
    if not pod_labels:
        raise fields.Problem("spec.template.metadata.labels is empty: a Service could never select it")
    # apps/v1 requires spec.selector, but the seed article's manifest omits it
    # (extensions/v1beta1 defaulted it to the template labels). Accept both;
    # a selector that is present must match the template, as the API demands.
    selector_spec = spec.get("selector")
    if selector_spec is not None:
        match = fields.labels(
            fields.mapping(selector_spec, "spec.selector").get("matchLabels"),
            "spec.selector.matchLabels",
        )
        if not set(match) <= set(pod_labels):
            raise fields.Problem("spec.selector.matchLabels does not match the template labels")

    pod_spec = fields.mapping(template.get("spec"), "spec.template.spec")
    containers = fields.sequence(pod_spec.get("containers"), "spec.template.spec.containers")
    if not containers:
        raise fields.Problem("spec.template.spec.containers is empty")
    image = None
    numbers: list[int] = []
    named: dict[str, int] = {}
    liveness: tuple[str | None, Any] = (None, None)
    for i, raw in enumerate(containers):
        where = f"containers[{i}]"
        container = fields.mapping(raw, where)
        if not isinstance(container.get("image"), str) or not container["image"]:
            raise fields.Problem(f"{where}.image is missing")
        image = image or container["image"]
        for j, raw_port in enumerate(fields.sequence(container.get("ports"), f"{where}.ports")):
            port = fields.mapping(raw_port, f"{where}.ports[{j}]")
            what = f"{where}.ports[{j}]"
            number = fields.number(port.get("containerPort"), f"{what}.containerPort", 1, 65535)
            if number not in numbers:
                numbers.append(number)
            port_name = port.get("name")
            if port_name is not None:
                if not isinstance(port_name, str) or not fields.IANA_SVC_NAME.match(port_name):
                    raise fields.Problem(f"{what}.name {port_name!r} is not a valid port name")
                named[port_name] = number
        probe = fields.mapping(container.get("livenessProbe"), f"{where}.livenessProbe", required=False)
        http_get = fields.mapping(probe.get("httpGet"), f"{where}.livenessProbe.httpGet", required=False)
        if http_get and liveness == (None, None):
            liveness = (http_get.get("path", "/"), http_get.get("port"))
    path, probe_port = liveness
    if isinstance(probe_port, str):
        probe_port = named.get(probe_port)
    elif probe_port is not None:
        probe_port = fields.number(probe_port, "livenessProbe.httpGet.port", 1, 65535)
    assert image is not None
    return Deployment(
        namespace=namespace,
        name=name,
        replicas=replicas,
        pod_labels=pod_labels,
        container_ports=tuple(numbers),
        image=image,
        named_ports=tuple(sorted(named.items())),
        liveness_path=path if isinstance(path, str) else None,
        liveness_port=probe_port,
    )


# --- Service -----------------------------------------------------------------------------


def _service_draft(
    doc: Mapping[str, Any], where: fields.Where, cidr: ipaddress.IPv4Network
) -> _ServiceDraft:
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
    cluster_ip = _cluster_ip(spec.get("clusterIP"), cidr)
    external_ips = tuple(
        str(fields.ipv4(ip, "spec.externalIPs entry"))
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
    return _ServiceDraft(
        where=where,
        namespace=namespace,
        name=name,
        type=service_type,
        cluster_ip=cluster_ip,
        external_ips=external_ips,
        ports=ports,
        selector=selector,
        external_traffic_policy=policy,
        session_affinity=_session_affinity(spec),
        internal_traffic_policy=internal_policy,
        load_balancer_ips=fields.load_balancer_ips(doc, service_type),
        load_balancer_source_ranges=fields.source_ranges(spec, service_type),
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


def _cluster_ip(value: Any, cidr: ipaddress.IPv4Network) -> str | None:
    if value is None or value == "":
        return None
    if value == "None":
        raise fields.Problem("headless Services (clusterIP: None) are not proxied by kube-proxy")
    address = fields.ipv4(value, "spec.clusterIP")
    if address not in cidr:
        raise fields.Problem(f"spec.clusterIP {address} is outside the service CIDR {cidr}")
    if address in (cidr.network_address, cidr.broadcast_address):
        raise fields.Problem(f"spec.clusterIP {address} is not allocatable in {cidr}")
    if address == cidr.network_address + 1:
        raise fields.Problem(f"spec.clusterIP {address} belongs to the default/kubernetes Service")
    return str(address)


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


# --- cross-document checks, target ports, allocation -------------------------------------------


def _reject_duplicates(items: list[tuple[fields.Where, str, str]], kind: str) -> None:
    seen: dict[tuple[str, str], fields.Where] = {}
    for where, namespace, name in items:
        first = seen.setdefault((namespace, name), where)
        if first is not where:
            raise where.error(
                f"{kind} {namespace}/{name} is already defined in document {first.document}"
            )


def _finish_services(
    drafts: list[_ServiceDraft],
    deployments: tuple[Deployment, ...],
    cidr: ipaddress.IPv4Network,
) -> tuple[Service, ...]:
    taken_ips: dict[str, _ServiceDraft] = {}
    taken_node_ports: dict[int, _ServiceDraft] = {}
    for draft in drafts:
        if draft.cluster_ip is not None:
            other = taken_ips.setdefault(draft.cluster_ip, draft)
            if other is not draft:
                raise draft.where.error(
                    f"spec.clusterIP {draft.cluster_ip} is already used by "
                    f"{other.namespace}/{other.name} (document {other.where.document})"
                )
        for port in draft.ports:
            if port.node_port is not None:
                other = taken_node_ports.setdefault(port.node_port, draft)
                if other is not draft:
                    raise draft.where.error(
                        f"nodePort {port.node_port} is already used by "
                        f"{other.namespace}/{other.name} (document {other.where.document})"
                    )

    services = []
    for draft in drafts:
        backing = [
            d
            for d in deployments
            if d.namespace == draft.namespace
            and all(dict(d.pod_labels).get(k) == v for k, v in draft.selector)
        ]
        if not backing:
            wanted = ",".join(f"{k}={v}" for k, v in draft.selector)
            raise draft.where.error(
                f"spec.selector {wanted} matches no Deployment in namespace {draft.namespace}"
            )
        ports = []
        for port in draft.ports:
            port = _resolve_target_port(draft, port, backing)
            if port.node_port is None and draft.type in ("NodePort", "LoadBalancer"):
                node_port = _allocate_node_port(draft, port, taken_node_ports)
                taken_node_ports[node_port] = draft
                port = replace(port, node_port=node_port)
            ports.append(port)
        cluster_ip = draft.cluster_ip
        if cluster_ip is None:
            cluster_ip = _allocate_cluster_ip(draft, cidr, taken_ips)
            taken_ips[cluster_ip] = draft
        services.append(
            Service(
                namespace=draft.namespace,
                name=draft.name,
                type=draft.type,
                cluster_ip=cluster_ip,
                external_ips=draft.external_ips,
                ports=tuple(ports),
                selector=draft.selector,
                external_traffic_policy=draft.external_traffic_policy,
                session_affinity=draft.session_affinity,
                load_balancer_ips=draft.load_balancer_ips,
                internal_traffic_policy=draft.internal_traffic_policy,
                load_balancer_source_ranges=draft.load_balancer_source_ranges,
            )
        )
    return tuple(services)


def _resolve_target_port(
    draft: _ServiceDraft, port: ServicePort, backing: list[Deployment]
) -> ServicePort:
    """A named targetPort becomes the number the backing pods give that name.

    The endpoints controller resolves it per pod; the lab needs one number, so
    every backing Deployment must agree on it."""
    if not isinstance(port.target_port, str):
        return port
    numbers = {dict(d.named_ports).get(port.target_port) for d in backing}
    if None in numbers:
        missing = next(d for d in backing if port.target_port not in dict(d.named_ports))
        raise draft.where.error(
            f"targetPort {port.target_port!r} is not a container port name of "
            f"Deployment {missing.namespace}/{missing.name}"
        )
    if len(numbers) > 1:
        raise draft.where.error(
            f"targetPort {port.target_port!r} means different ports in the backing Deployments"
        )
    return replace(port, target_port=numbers.pop())


def _stable_hash(text: str) -> int:
    # sha256 rather than hash(): Python salts str hashes per process.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _allocate_cluster_ip(
    draft: _ServiceDraft, cidr: ipaddress.IPv4Network, taken: Mapping[str, Any]
) -> str:
    # Usable offsets: 2 .. size-2 (skip the network address, .1 which is
    # default/kubernetes, and the broadcast address).
    usable = cidr.num_addresses - 3
    start = _stable_hash(f"{draft.namespace}/{draft.name}") % usable
    for step in range(usable):
        address = str(cidr.network_address + 2 + (start + step) % usable)
        if address not in taken:
            return address
    raise draft.where.error(f"no free cluster IP left in {cidr}")


def _allocate_node_port(
    draft: _ServiceDraft, port: ServicePort, taken: Mapping[int, Any]
) -> int:
    size = len(NODE_PORT_RANGE)
    start = _stable_hash(f"{draft.namespace}/{draft.name}:{port.name}/{port.protocol}") % size
    for step in range(size):
        candidate = NODE_PORT_RANGE.start + (start + step) % size
        if candidate not in taken:
            return candidate
    raise draft.where.error("no free nodePort left in 30000-32767")
