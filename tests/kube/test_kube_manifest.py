"""Manifest loading: the shipped seed manifest, defaults, allocation, and one
test per class of manifest the lab cannot render (each a one-line
ManifestError that says which document and what)."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from tracer.errors import ManifestError, UsageError
from tracer.kube.manifest import SHIPPED_MANIFEST, load_manifest, parse_manifest
from tracer.kube.model import Manifest

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      containers:
        - name: web
          image: nginx:1.25
          ports:
            - {name: http, containerPort: 8080}
            - {name: metrics, containerPort: 9100}
"""


def service(spec: str, name: str = "web-svc", extra_meta: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{extra_meta}"
        f"spec:\n{body}\n"
    )


def manifest(*docs: str) -> str:
    return "".join(f"---\n{d}" for d in docs)


def load(*docs: str) -> Manifest:
    return parse_manifest(manifest(*docs), source="test.yaml")


def error_of(*docs: str) -> str:
    with pytest.raises(ManifestError) as info:
        load(*docs)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2  # ManifestError is a UsageError
    return message


SIMPLE_SERVICE = """
selector: {app: web}
ports:
  - {port: 80, targetPort: 8080}
"""


# --- the shipped manifest ---------------------------------------------------------------


def test_shipped_manifest_follows_the_seed() -> None:
    m = load_manifest(SHIPPED_MANIFEST)
    assert m.source == str(SHIPPED_MANIFEST)
    (deployment,) = m.deployments
    assert deployment.namespace == "default"
    assert deployment.name == "nginx-demo-1"
    assert deployment.replicas == 2
    assert deployment.pod_label_map == {"app": "nginx-demo-1"}
    assert deployment.container_ports == (80,)
    assert deployment.image == "nginx:1.17.8"
    assert deployment.liveness_path == "/index.html"
    assert deployment.liveness_port == 80

    demo1 = m.service("nginx-demo-1")
    assert demo1.type == "ClusterIP"
    assert demo1.cluster_ip == "10.96.88.88"
    assert demo1.external_ips == ("192.168.64.57",)
    (port,) = demo1.ports
    assert (port.name, port.protocol, port.port, port.target_port, port.node_port) == (
        "",
        "TCP",
        8088,
        80,
        None,
    )

    demo2 = m.service("nginx-demo-2", namespace="default")
    assert demo2.type == "NodePort"
    assert demo2.cluster_ip == "10.96.88.89"
    (port,) = demo2.ports
    assert (port.port, port.target_port, port.node_port) == (8089, 80, 30089)

    for svc in m.services:
        assert m.backing_deployment(svc) is deployment
        assert svc.selector_map == {"app": "nginx-demo-1"}


def test_shipped_manifest_seed_yaml_without_selector_is_accepted() -> None:
    # The seed's own Deployment has no spec.selector (apps/v1 requires one);
    # the lab takes the template labels, as extensions/v1beta1 did.
    seed = DEPLOYMENT.replace("  selector:\n    matchLabels: {app: web}\n", "")
    m = load(seed, service(SIMPLE_SERVICE))
    assert m.deployments[0].pod_label_map == {"app": "web", "tier": "front"}


# --- defaults and allocation ---------------------------------------------------------------


def test_defaults_namespace_protocol_target_port_type() -> None:
    m = load(DEPLOYMENT, service("selector: {app: web}\nports:\n  - {port: 8080}"))
    svc = m.service("web-svc")
    assert svc.namespace == "default"
    assert svc.type == "ClusterIP"
    assert svc.external_traffic_policy == "Cluster"
    (port,) = svc.ports
    assert (port.protocol, port.target_port, port.name) == ("TCP", 8080, "")


def test_named_target_port_resolves_against_the_deployment() -> None:
    m = load(
        DEPLOYMENT,
        service(
            """
            selector: {app: web}
            ports:
              - {name: http, port: 80, targetPort: http}
              - {name: metrics, port: 9100, targetPort: metrics, protocol: TCP}
            """
        ),
    )
    svc = m.service("web-svc")
    assert [p.target_port for p in svc.ports] == [8080, 9100]
    assert svc.port_named("metrics").port == 9100


def test_cluster_ip_allocation_is_deterministic_and_inside_the_cidr() -> None:
    docs = (DEPLOYMENT, service(SIMPLE_SERVICE, "a"), service(SIMPLE_SERVICE, "b"))
    first = load(*docs)
    again = load(*docs)
    ips = [s.cluster_ip for s in first.services]
    assert ips == [s.cluster_ip for s in again.services]
    assert len(set(ips)) == 2
    for ip in ips:
        assert ip is not None
        address = ipaddress.IPv4Address(ip)
        assert address in ipaddress.IPv4Network("10.96.0.0/12")
        assert ip not in ("10.96.0.0", "10.96.0.1", "10.111.255.255")


def test_cluster_ip_allocation_avoids_taken_addresses() -> None:
    free = load(DEPLOYMENT, service(SIMPLE_SERVICE, "a")).service("a").cluster_ip
    # Another service holding exactly that address pushes "a" elsewhere.
    holder = service(f"clusterIP: {free}\n{SIMPLE_SERVICE}", "holder")
    m = load(DEPLOYMENT, service(SIMPLE_SERVICE, "a"), holder)
    assert m.service("holder").cluster_ip == free
    assert m.service("a").cluster_ip not in (None, free)


def test_node_port_allocation_for_nodeport_services() -> None:
    spec = "type: NodePort\n" + SIMPLE_SERVICE
    m = load(DEPLOYMENT, service(spec, "a"), service(spec, "b"))
    ports = [s.ports[0].node_port for s in m.services]
    assert all(p is not None and 30000 <= p <= 32767 for p in ports)
    assert len(set(ports)) == 2
    assert ports == [s.ports[0].node_port for s in load(DEPLOYMENT, service(spec, "a"),
                                                        service(spec, "b")).services]


def test_other_kinds_are_ignored() -> None:
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n"
    m = load(config_map, DEPLOYMENT, service(SIMPLE_SERVICE), "")
    assert [d.name for d in m.deployments] == ["web"]
    assert [s.name for s in m.services] == ["web-svc"]


def test_manifest_service_lookup_errors() -> None:
    m = load(DEPLOYMENT, service(SIMPLE_SERVICE))
    with pytest.raises(UsageError, match=r"no Service 'nope'.*default/web-svc"):
        m.service("nope")


# --- manifests the lab cannot render ----------------------------------------------------------


def test_invalid_yaml_names_the_line() -> None:
    text = manifest(DEPLOYMENT, "apiVersion: v1\nkind: Service\nspec: [1,\n")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, source="bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml: document 2: invalid YAML at line ")
    line = int(message.split("at line ")[1].split(":")[0])
    assert line > DEPLOYMENT.count("\n")


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")


def test_document_that_is_not_a_mapping() -> None:
    assert error_of("- a\n- b\n") == (
        "test.yaml: document 1: expected a mapping (an object), got a list"
    )


def test_document_without_kind() -> None:
    message = error_of("apiVersion: v1\nmetadata: {name: x}\n")
    assert message == "test.yaml: document 1: has no 'kind'"


def test_missing_ports() -> None:
    message = error_of(DEPLOYMENT, service("selector: {app: web}"))
    assert message == "test.yaml: document 2 (Service web-svc): spec.ports is missing or empty"


@pytest.mark.parametrize(
    ("ports", "problem"),
    [
        ("- {port: 70000}", "spec.ports[0].port 70000 is out of range (1-65535)"),
        ("- {port: 0}", "spec.ports[0].port 0 is out of range (1-65535)"),
        ("- {port: '80'}", "spec.ports[0].port must be a number, not '80'"),
        ("- {port: 80, targetPort: 0}", "spec.ports[0].targetPort 0 is out of range (1-65535)"),
        ("- {protocol: TCP}", "spec.ports[0].port is missing"),
        (
            "- {port: 80, protocol: ICMP}",
            "spec.ports[0].protocol 'ICMP' is not one of TCP, UDP, SCTP",
        ),
        (
            "- {port: 80}\n- {port: 81}",
            "spec.ports[0].name is required when a Service has more than one port",
        ),
        (
            "- {name: a, port: 80}\n- {name: a, port: 81}",
            "spec.ports has duplicate port name 'a'",
        ),
    ],
)
def test_bad_ports(ports: str, problem: str) -> None:
    spec = "selector: {app: web}\nports:\n" + textwrap.indent(ports, "  ")
    where = "test.yaml: document 2 (Service web-svc)"
    assert error_of(DEPLOYMENT, service(spec)) == f"{where}: {problem}"


def test_node_port_out_of_range() -> None:
    spec = "type: NodePort\nselector: {app: web}\nports:\n  - {port: 80, nodePort: 80}"
    assert error_of(DEPLOYMENT, service(spec)).endswith(
        "spec.ports[0].nodePort 80 is out of range (30000-32767)"
    )


def test_node_port_on_cluster_ip_service() -> None:
    spec = "selector: {app: web}\nports:\n  - {port: 80, nodePort: 30080}"
    assert error_of(DEPLOYMENT, service(spec)).endswith(
        "spec.ports[0].nodePort is set but the Service type is ClusterIP"
    )


def test_selector_matching_no_deployment() -> None:
    spec = "selector: {app: nothing}\nports:\n  - {port: 80}"
    assert error_of(DEPLOYMENT, service(spec)) == (
        "test.yaml: document 2 (Service web-svc): "
        "spec.selector app=nothing matches no Deployment in namespace default"
    )


def test_selector_in_another_namespace_does_not_match() -> None:
    error = error_of(DEPLOYMENT, service(SIMPLE_SERVICE, extra_meta="  namespace: other\n"))
    assert "matches no Deployment in namespace other" in error


def test_missing_selector() -> None:
    assert "spec.selector is missing" in error_of(DEPLOYMENT, service("ports:\n  - {port: 80}"))


@pytest.mark.parametrize(
    ("cluster_ip", "problem"),
    [
        ("10.0.0.5", "spec.clusterIP 10.0.0.5 is outside the service CIDR 10.96.0.0/12"),
        ("10.112.0.1", "spec.clusterIP 10.112.0.1 is outside the service CIDR 10.96.0.0/12"),
        ("10.96.0.1", "spec.clusterIP 10.96.0.1 belongs to the default/kubernetes Service"),
        ("10.96.0.0", "spec.clusterIP 10.96.0.0 is not allocatable in 10.96.0.0/12"),
        ("banana", "spec.clusterIP 'banana' is not an IPv4 address"),
        ("None", "headless Services (clusterIP: None) are not proxied by kube-proxy"),
    ],
)
def test_bad_cluster_ip(cluster_ip: str, problem: str) -> None:
    spec = f"clusterIP: {cluster_ip}\n{SIMPLE_SERVICE}"
    where = "test.yaml: document 2 (Service web-svc)"
    assert error_of(DEPLOYMENT, service(spec)) == f"{where}: {problem}"


def test_duplicate_cluster_ip() -> None:
    spec = f"clusterIP: 10.96.1.1\n{SIMPLE_SERVICE}"
    error = error_of(DEPLOYMENT, service(spec, "a"), service(spec, "b"))
    assert error == (
        "test.yaml: document 3 (Service b): spec.clusterIP 10.96.1.1 is already used by "
        "default/a (document 2)"
    )


def test_duplicate_node_port() -> None:
    spec = "type: NodePort\nselector: {app: web}\nports:\n  - {port: 80, nodePort: 30001}"
    assert "nodePort 30001 is already used by default/a" in error_of(
        DEPLOYMENT, service(spec, "a"), service(spec, "b")
    )


@pytest.mark.parametrize(
    ("service_type", "problem"),
    [
        ("Ingress", "unknown Service type 'Ingress' (expected ClusterIP, NodePort, LoadBalancer)"),
        ("ExternalName", "type ExternalName is a DNS alias that kube-proxy does not program"),
    ],
)
def test_unknown_service_type(service_type: str, problem: str) -> None:
    spec = f"type: {service_type}\n{SIMPLE_SERVICE}"
    assert error_of(DEPLOYMENT, service(spec)).endswith(problem)


def test_bad_external_ip() -> None:
    spec = f"externalIPs: [192.168.64.300]\n{SIMPLE_SERVICE}"
    assert "spec.externalIPs entry '192.168.64.300' is not an IPv4 address" in error_of(
        DEPLOYMENT, service(spec)
    )


def test_bad_traffic_policy() -> None:
    spec = f"type: NodePort\nexternalTrafficPolicy: Nearby\n{SIMPLE_SERVICE}"
    assert "externalTrafficPolicy 'Nearby'" in error_of(DEPLOYMENT, service(spec))
    spec = f"externalTrafficPolicy: Local\n{SIMPLE_SERVICE}"
    assert "applies to NodePort and LoadBalancer only" in error_of(DEPLOYMENT, service(spec))


def test_unknown_named_target_port() -> None:
    spec = "selector: {app: web}\nports:\n  - {port: 80, targetPort: grpc}"
    assert error_of(DEPLOYMENT, service(spec)).endswith(
        "targetPort 'grpc' is not a container port name of Deployment default/web"
    )


def test_wrong_api_version() -> None:
    old = DEPLOYMENT.replace("apps/v1", "extensions/v1beta1")
    assert error_of(old) == (
        "test.yaml: document 1 (Deployment web): "
        "apiVersion 'extensions/v1beta1' is not supported (expected apps/v1)"
    )


def test_deployment_problems() -> None:
    no_labels = DEPLOYMENT.replace("labels: {app: web, tier: front}", "name: web-pod")
    assert "spec.template.metadata.labels is missing" in error_of(no_labels)
    empty_labels = DEPLOYMENT.replace("labels: {app: web, tier: front}", "labels: {}")
    assert "spec.template.metadata.labels is empty" in error_of(empty_labels)
    no_image = DEPLOYMENT.replace("          image: nginx:1.25\n", "")
    assert "containers[0].image is missing" in error_of(no_image)
    mismatch = DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: other}")
    assert "spec.selector.matchLabels does not match the template labels" in error_of(mismatch)
    bad_port = DEPLOYMENT.replace("containerPort: 8080", "containerPort: 99999")
    assert "containers[0].ports[0].containerPort 99999 is out of range" in error_of(bad_port)
    bad_replicas = DEPLOYMENT.replace("replicas: 3", "replicas: many")
    assert "spec.replicas must be a number" in error_of(bad_replicas)


def test_duplicate_names() -> None:
    error = error_of(DEPLOYMENT, DEPLOYMENT)
    assert error == (
        "test.yaml: document 2 (Deployment web): "
        "Deployment default/web is already defined in document 1"
    )
    error = error_of(DEPLOYMENT, service(SIMPLE_SERVICE), service(SIMPLE_SERVICE))
    assert "Service default/web-svc is already defined in document 2" in error


def test_missing_name() -> None:
    assert error_of("apiVersion: v1\nkind: Service\nmetadata: {}\nspec: {}\n") == (
        "test.yaml: document 1 (Service): metadata.name is missing"
    )
