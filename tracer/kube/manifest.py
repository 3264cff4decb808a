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
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tracer.errors import ManifestError
from tracer.kube.model import (
    PROTOCOLS,
    SERVICE_TYPES,
    TRAFFIC_POLICIES,
    Deployment,
    Labels,
    Manifest,
    Service,
    ServicePort,
    labels_from_mapping,
)

# kubeadm's default --service-cluster-ip-range; the first address belongs to
# the default/kubernetes Service (the apiserver allocates it to itself).
SERVICE_CIDR = "10.96.0.0/12"
# The apiserver's default --service-node-port-range.
NODE_PORT_RANGE = range(30000, 32768)

SHIPPED_MANIFEST = Path(__file__).resolve().parent.parent / "lab" / "manifests" / "nginx-demo.yaml"

# Kubernetes name rules, as far as the lab depends on them: DNS-1123 labels for
# port names, IANA service names (<= 15 chars, at least one letter) for
# containerPort names and named targetPorts.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


class _Problem(Exception):
    """Raised inside one document; turned into ManifestError with the location."""


@dataclass(frozen=True)
class _Where:
    source: str
    document: int
    kind: str | None = None
    name: str | None = None

    def error(self, problem: str) -> ManifestError:
        what = " ".join(p for p in (self.kind, self.name) if p)
        where = f"document {self.document}" + (f" ({what})" if what else "")
        return ManifestError(f"{self.source}: {where}: {problem}")


@dataclass
class _ServiceDraft:
    where: _Where
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    external_ips: tuple[str, ...]
    ports: list[ServicePort]
    selector: Labels
    external_traffic_policy: str


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
    deployments: list[tuple[_Where, Deployment]] = []
    drafts: list[_ServiceDraft] = []
    for number, doc in _documents(text, source):
        if doc is None:
            continue
        where = _Where(source, number)
        if not isinstance(doc, dict):
            raise where.error(f"expected a mapping (an object), got {_yaml_type(doc)}")
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            raise where.error("has no 'kind'")
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        where = _Where(source, number, kind, name if isinstance(name, str) else None)
        if kind not in ("Deployment", "Service"):
            continue  # ConfigMaps, Ingresses, ...: not the lab's business
        try:
            if kind == "Deployment":
                deployments.append((where, _deployment(doc)))
            else:
                drafts.append(_service_draft(doc, where, cidr))
        except _Problem as exc:
            raise where.error(str(exc)) from None

    _reject_duplicates(
        [(w, d.namespace, d.name) for w, d in deployments], "Deployment"
    )
    _reject_duplicates([(s.where, s.namespace, s.name) for s in drafts], "Service")
    deployment_list = tuple(d for _, d in deployments)
    services = _finish_services(drafts, deployment_list, cidr)
    return Manifest(deployments=deployment_list, services=services, source=source)


# --- YAML documents ------------------------------------------------------------


def _documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """(1-based document number, parsed document); YAML errors name the line."""
    number = 0
    loader = yaml.safe_load_all(text)
    while True:
        try:
            doc = next(loader)
        except StopIteration:
            return
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ManifestError(
                f"{source}: document {number + 1}: invalid YAML{line}: {problem}"
            ) from None
        number += 1
        yield number, doc


def _yaml_type(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


# --- field helpers -----------------------------------------------------------------


def _mapping(value: Any, what: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        if value is None:
            raise _Problem(f"{what} is missing")
        raise _Problem(f"{what} must be a mapping, not {_yaml_type(value)}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Problem(f"{what} must be a list, not {_yaml_type(value)}")
    return value


def _number(value: Any, what: str, low: int, high: int) -> int:
    # bool is an int in Python; YAML's `true` is not a port.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"{what} must be a number, not {value!r}")
    if not low <= value <= high:
        raise _Problem(f"{what} {value} is out of range ({low}-{high})")
    return value


def _labels(value: Any, what: str) -> Labels:
    mapping = _mapping(value, what)
    for key, val in mapping.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise _Problem(f"{what} must map strings to strings ({key!r}: {val!r})")
    return labels_from_mapping(mapping)


def _ipv4(value: Any, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise _Problem(f"{what} {value!r} is not an IPv4 address") from None


def _name_and_namespace(doc: Mapping[str, Any]) -> tuple[str, str]:
    metadata = _mapping(doc.get("metadata"), "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise _Problem("metadata.name is missing")
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise _Problem(f"metadata.namespace {namespace!r} is not a valid namespace name")
    return namespace, name


def _require_api_version(doc: Mapping[str, Any], expected: str) -> None:
    version = doc.get("apiVersion")
    if version != expected:
        raise _Problem(f"apiVersion {version!r} is not supported (expected {expected})")


# --- Deployment ------------------------------------------------------------------------


def _deployment(doc: Mapping[str, Any]) -> Deployment:
    _require_api_version(doc, "apps/v1")
    namespace, name = _name_and_namespace(doc)
    spec = _mapping(doc.get("spec"), "spec")
    replicas = spec.get("replicas", 1)  # the API server's default
    replicas = _number(replicas, "spec.replicas", 0, 1000)
    template = _mapping(spec.get("template"), "spec.template")
    template_meta = _mapping(template.get("metadata"), "spec.template.metadata")
    pod_labels = _labels(template_meta.get("labels"), "spec.template.metadata.labels")
    if not pod_labels:
        raise _Problem("spec.template.metadata.labels is empty: a Service could never select it")
    # apps/v1 requires spec.selector, but the seed article's manifest omits it
    # (extensions/v1beta1 defaulted it to the template labels). Accept both;
    # a selector that is present must match the template, as the API demands.
    selector_spec = spec.get("selector")
    if selector_spec is not None:
        match = _labels(
            _mapping(selector_spec, "spec.selector").get("matchLabels"),
            "spec.selector.matchLabels",
        )
        if not set(match) <= set(pod_labels):
            raise _Problem("spec.selector.matchLabels does not match the template labels")

    pod_spec = _mapping(template.get("spec"), "spec.template.spec")
    containers = _list(pod_spec.get("containers"), "spec.template.spec.containers")
    if not containers:
        raise _Problem("spec.template.spec.containers is empty")
    image = None
    numbers: list[int] = []
    named: dict[str, int] = {}
    liveness: tuple[str | None, Any] = (None, None)
    for i, raw in enumerate(containers):
        where = f"containers[{i}]"
        container = _mapping(raw, where)
        if not isinstance(container.get("image"), str) or not container["image"]:
            raise _Problem(f"{where}.image is missing")
        image = image or container["image"]
        for j, raw_port in enumerate(_list(container.get("ports"), f"{where}.ports")):
            port = _mapping(raw_port, f"{where}.ports[{j}]")
            what = f"{where}.ports[{j}]"
            number = _number(port.get("containerPort"), f"{what}.containerPort", 1, 65535)
            if number not in numbers:
                numbers.append(number)
            port_name = port.get("name")
            if port_name is not None:
                if not isinstance(port_name, str) or not _IANA_SVC_NAME.match(port_name):
                    raise _Problem(f"{what}.name {port_name!r} is not a valid port name")
                named[port_name] = number
        probe = _mapping(container.get("livenessProbe"), f"{where}.livenessProbe", required=False)
        http_get = _mapping(probe.get("httpGet"), f"{where}.livenessProbe.httpGet", required=False)
        if http_get and liveness == (None, None):
            liveness = (http_get.get("path", "/"), http_get.get("port"))
    path, probe_port = liveness
    if isinstance(probe_port, str):
        probe_port = named.get(probe_port)
    elif probe_port is not None:
        probe_port = _number(probe_port, "livenessProbe.httpGet.port", 1, 65535)
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
    doc: Mapping[str, Any], where: _Where, cidr: ipaddress.IPv4Network
) -> _ServiceDraft:
    _require_api_version(doc, "v1")
    namespace, name = _name_and_namespace(doc)
    spec = _mapping(doc.get("spec"), "spec")
    service_type = spec.get("type", "ClusterIP")
    if service_type == "ExternalName":
        raise _Problem("type ExternalName is a DNS alias that kube-proxy does not program")
    if service_type not in SERVICE_TYPES:
        raise _Problem(
            f"unknown Service type {service_type!r} (expected {', '.join(SERVICE_TYPES)})"
        )
    cluster_ip = _cluster_ip(spec.get("clusterIP"), cidr)
    external_ips = tuple(
        str(_ipv4(ip, "spec.externalIPs entry"))
        for ip in _list(spec.get("externalIPs"), "spec.externalIPs")
    )
    if spec.get("selector") is None:
        raise _Problem(
            "spec.selector is missing: the lab finds a Service's pods through its selector"
        )
    selector = _labels(spec.get("selector"), "spec.selector")
    if not selector:
        raise _Problem("spec.selector is empty: it would select no pods")
    policy = spec.get("externalTrafficPolicy", "Cluster")
    if policy not in TRAFFIC_POLICIES:
        raise _Problem(
            f"spec.externalTrafficPolicy {policy!r} is not one of {', '.join(TRAFFIC_POLICIES)}"
        )
    if policy == "Local" and service_type == "ClusterIP":
        raise _Problem("spec.externalTrafficPolicy Local applies to NodePort and LoadBalancer only")
    raw_ports = _list(spec.get("ports"), "spec.ports")
    if not raw_ports:
        raise _Problem("spec.ports is missing or empty")
    ports = [
        _service_port(raw, i, service_type, len(raw_ports)) for i, raw in enumerate(raw_ports)
    ]
    names = [p.name for p in ports]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise _Problem(f"spec.ports has duplicate port name {sorted(duplicates)[0]!r}")
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
    )


def _cluster_ip(value: Any, cidr: ipaddress.IPv4Network) -> str | None:
    if value is None or value == "":
        return None
    if value == "None":
        raise _Problem("headless Services (clusterIP: None) are not proxied by kube-proxy")
    address = _ipv4(value, "spec.clusterIP")
    if address not in cidr:
        raise _Problem(f"spec.clusterIP {address} is outside the service CIDR {cidr}")
    if address in (cidr.network_address, cidr.broadcast_address):
        raise _Problem(f"spec.clusterIP {address} is not allocatable in {cidr}")
    if address == cidr.network_address + 1:
        raise _Problem(f"spec.clusterIP {address} belongs to the default/kubernetes Service")
    return str(address)


def _service_port(raw: Any, index: int, service_type: str, count: int) -> ServicePort:
    where = f"spec.ports[{index}]"
    port = _mapping(raw, where)
    name = port.get("name", "")
    if not isinstance(name, str) or (name and not _DNS_LABEL.match(name)):
        raise _Problem(f"{where}.name {name!r} is not a valid port name")
    if count > 1 and not name:
        raise _Problem(f"{where}.name is required when a Service has more than one port")
    protocol = port.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise _Problem(f"{where}.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if "port" not in port:
        raise _Problem(f"{where}.port is missing")
    number = _number(port["port"], f"{where}.port", 1, 65535)
    target = port.get("targetPort", number)  # the API server's default
    if isinstance(target, str):
        if not _IANA_SVC_NAME.match(target):
            raise _Problem(f"{where}.targetPort {target!r} is neither a number nor a port name")
    else:
        target = _number(target, f"{where}.targetPort", 1, 65535)
    node_port = port.get("nodePort")
    if node_port is not None:
        if service_type == "ClusterIP":
            raise _Problem(f"{where}.nodePort is set but the Service type is ClusterIP")
        node_port = _number(
            node_port, f"{where}.nodePort", NODE_PORT_RANGE.start, NODE_PORT_RANGE.stop - 1
        )
    return ServicePort(
        name=name, protocol=protocol, port=number, target_port=target, node_port=node_port
    )


# --- cross-document checks, target ports, allocation -------------------------------------------


def _reject_duplicates(items: list[tuple[_Where, str, str]], kind: str) -> None:
    seen: dict[tuple[str, str], _Where] = {}
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
