"""Kubernetes manifests (multi-document YAML) -> Manifest.

Only what the lab renders is read: Deployments (apps/v1) and Services (v1).
Other kinds are skipped without a word. Anything the lab cannot render raises
ManifestError with one line that says where:

    "{source}: document {n} ({kind} {name}): {problem}"

This module reads the documents, hands each to its reader
(tracer.kube.manifest_deployment, tracer.kube.manifest_service), and then
checks across documents: duplicate names, cluster IPs and node ports, a
selector that matches no Deployment, named target ports.

A Service without a clusterIP gets one allocated deterministically inside the
service CIDR (a stable hash of namespace/name, probing past 10.96.0.1 and
addresses already taken), and a dual-stack or IPv6 Service one per family
missing from spec.clusterIPs (IPv6 in SERVICE_CIDR6; families and their
defaults: tracer.kube.manifest_families), as a NodePort without nodePort gets one in
30000-32767 (tracer.kube.manifest_allocation). The same manifest therefore
always renders the same rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from tracer.errors import ManifestError
from tracer.kube import manifest_fields as fields
from tracer.kube.manifest_allocation import allocate_cluster_ip, allocate_node_port
from tracer.kube.manifest_deployment import read_deployment
from tracer.kube.manifest_families import IPNetwork
from tracer.kube.manifest_service import ServiceDraft, read_service
from tracer.kube.model import Deployment, Manifest, Service, ServicePort

# kubeadm's default --service-cluster-ip-range; the first address belongs to
# the default/kubernetes Service (the apiserver allocates it to itself).
SERVICE_CIDR = "10.96.0.0/12"
# The lab's IPv6 service CIDR (the second --service-cluster-ip-range of a
# dual-stack kubeadm cluster; a /112, the largest the apiserver accepts for
# its bitmap allocator).
SERVICE_CIDR6 = "fd00:10:96::/112"

SHIPPED_MANIFEST = Path(__file__).resolve().parent.parent / "lab" / "manifests" / "nginx-demo.yaml"


def load_manifest(
    path: str | Path, *, service_cidr: str = SERVICE_CIDR, service_cidr6: str = SERVICE_CIDR6
) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc.strerror}") from exc
    return parse_manifest(text, source=str(path), service_cidr=service_cidr,
                          service_cidr6=service_cidr6)


def parse_manifest(
    text: str, source: str = "<string>", *, service_cidr: str = SERVICE_CIDR,
    service_cidr6: str = SERVICE_CIDR6,
) -> Manifest:
    cidrs: dict[str, IPNetwork] = {"IPv4": ipaddress.IPv4Network(service_cidr),
                                   "IPv6": ipaddress.IPv6Network(service_cidr6)}
    deployments: list[tuple[fields.Where, Deployment]] = []
    drafts: list[ServiceDraft] = []
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
                deployments.append((where, read_deployment(doc)))
            else:
                drafts.append(read_service(doc, where, cidrs))
        except fields.Problem as exc:
            raise where.error(str(exc)) from None

    _reject_duplicates(
        [(w, d.namespace, d.name) for w, d in deployments], "Deployment"
    )
    _reject_duplicates([(s.where, s.namespace, s.name) for s in drafts], "Service")
    deployment_list = tuple(d for _, d in deployments)
    services = _finish_services(drafts, deployment_list, cidrs)
    return Manifest(deployments=deployment_list, services=services, source=source)


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
    drafts: list[ServiceDraft],
    deployments: tuple[Deployment, ...],
    cidrs: Mapping[str, IPNetwork],
) -> tuple[Service, ...]:
    taken_ips: dict[str, ServiceDraft] = {}
    taken_node_ports: dict[int, ServiceDraft] = {}
    for draft in drafts:
        for i, ip in enumerate(draft.cluster_ips):
            if ip is None:
                continue
            other = taken_ips.setdefault(ip, draft)
            if other is not draft:
                what = "spec.clusterIP" if i == 0 else f"spec.clusterIPs[{i}]"
                raise draft.where.error(
                    f"{what} {ip} is already used by "
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
                node_port = allocate_node_port(draft, port, taken_node_ports)
                taken_node_ports[node_port] = draft
                port = replace(port, node_port=node_port)
            ports.append(port)
        cluster_ips = []
        for family, ip in zip(draft.families, draft.cluster_ips, strict=True):
            if ip is None:
                ip = allocate_cluster_ip(draft, cidrs[family], taken_ips)
                taken_ips[ip] = draft
            cluster_ips.append(ip)
        # An IPv4 single-stack Service keeps the model it had before dual
        # stack: no cluster_ips, ip_families or policy (the model's default).
        single_v4 = draft.families == ("IPv4",)
        services.append(
            Service(
                namespace=draft.namespace,
                name=draft.name,
                type=draft.type,
                cluster_ip=cluster_ips[0],
                external_ips=draft.external_ips,
                ports=tuple(ports),
                selector=draft.selector,
                external_traffic_policy=draft.external_traffic_policy,
                session_affinity=draft.session_affinity,
                load_balancer_ips=draft.load_balancer_ips,
                internal_traffic_policy=draft.internal_traffic_policy,
                load_balancer_source_ranges=draft.load_balancer_source_ranges,
                cluster_ips=() if single_v4 else tuple(cluster_ips),
                ip_families=() if single_v4 else draft.families,
                ip_family_policy=None if single_v4 else draft.policy,
            )
        )
    return tuple(services)


def _resolve_target_port(
    draft: ServiceDraft, port: ServicePort, backing: list[Deployment]
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
