"""A Service's address families from its manifest (tracer.kube.manifest_families):
the dual-stack apiserver's defaults (IPv4 primary), each validation rule as a
one-line ManifestError that leaves the file as it was, IPv6 cluster IP
allocation, and IPv4-only manifests parsing to the model they always had."""

from __future__ import annotations

import hashlib
import ipaddress
import textwrap
from pathlib import Path

import pytest

from tracer.errors import ManifestError
from tracer.kube.manifest import SERVICE_CIDR6, load_manifest, parse_manifest
from tracer.kube.model import Service
from tracer.lab.plan import DEFAULT_MANIFEST

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
"""
PORTS = "selector: {app: web}\nports: [{port: 80, targetPort: 80}]\n"


def service(spec: str, name: str = "web") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip() + "\n" + PORTS, "  ")
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{body}"


def text(*services: str) -> str:
    return "".join(f"---\n{d}" for d in (DEPLOYMENT, *services))


def only(spec: str) -> Service:
    (svc,) = parse_manifest(text(service(spec)), source="t.yaml").services
    return svc


# --- defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "families", "policy"), [
    ("ipFamilyPolicy: PreferDualStack", ("IPv4", "IPv6"), "PreferDualStack"),
    ("ipFamilyPolicy: RequireDualStack", ("IPv4", "IPv6"), "RequireDualStack"),
    ("ipFamilies: [IPv6]", ("IPv6",), "SingleStack"),
    ("ipFamilies: [IPv6]\nipFamilyPolicy: PreferDualStack", ("IPv6", "IPv4"), "PreferDualStack"),
    # Two families and no policy: the apiserver assumes RequireDualStack.
    ("ipFamilies: [IPv4, IPv6]", ("IPv4", "IPv6"), "RequireDualStack"),
    ("ipFamilies: [IPv6, IPv4]\nipFamilyPolicy: RequireDualStack", ("IPv6", "IPv4"),
     "RequireDualStack"),
    # Families inferred from clusterIPs beyond those ipFamilies names.
    ("clusterIP: fd00:10:96::7\nclusterIPs: [fd00:10:96::7, 10.96.7.7]", ("IPv6", "IPv4"),
     "RequireDualStack"),
    ("clusterIP: fd00:10:96::7", ("IPv6",), "SingleStack"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7]\nipFamilyPolicy: PreferDualStack",
     ("IPv4", "IPv6"), "PreferDualStack"),
])
def test_families_default_as_a_dual_stack_apiserver(spec: str, families, policy) -> None:
    svc = only(spec)
    assert (svc.ip_families, svc.ip_family_policy) == (families, policy)
    assert len(svc.cluster_ips) == len(families) and svc.cluster_ip == svc.cluster_ips[0]
    cidrs = {"IPv4": ipaddress.ip_network("10.96.0.0/12"), "IPv6": ipaddress.ip_network(SERVICE_CIDR6)}
    for family, ip in zip(families, svc.cluster_ips, strict=True):
        assert ipaddress.ip_address(ip) in cidrs[family]
        assert svc.cluster_ip_for(family.lower()) == ip
    for given in ("10.96.7.7", "fd00:10:96::7"):
        if given in spec:
            assert given in svc.cluster_ips  # fixed addresses are kept


@pytest.mark.parametrize("spec", [
    "ipFamilyPolicy: SingleStack",
    "ipFamilies: [IPv4]",
    "ipFamilies: [IPv4]\nipFamilyPolicy: SingleStack",
])
def test_ipv4_single_stack_keeps_the_model_it_always_had(spec: str) -> None:
    plain = only("clusterIP: 10.96.5.5")
    assert (plain.cluster_ips, plain.ip_families, plain.ip_family_policy) == ((), (), None)
    assert only(f"clusterIP: 10.96.5.5\n{spec}") == plain
    assert only(f"clusterIP: 10.96.5.5\nclusterIPs: [10.96.5.5]\n{spec}") == plain
    assert only(spec) == only("")  # allocated alike


def test_shipped_ipv4_manifests_are_ipv4_single_stack() -> None:
    for name in ("nginx-demo.yaml", "service-api.yaml"):
        for svc in load_manifest(DEFAULT_MANIFEST.parent / name).services:
            assert (svc.cluster_ips, svc.ip_families, svc.ip_family_policy) == ((), (), None)
            assert svc.cluster_ip_for("ipv6") is None


def test_shipped_dual_stack_manifest() -> None:
    m = load_manifest(DEFAULT_MANIFEST.parent / "dual-stack.yaml")
    (deployment,) = m.deployments
    assert (deployment.name, deployment.replicas) == ("nginx-demo-1", 2)
    (svc,) = m.services
    assert (svc.full_name, svc.type, svc.ip_family_policy, svc.ip_families, svc.cluster_ips) == (
        "default/nginx-demo-dual", "NodePort", "PreferDualStack", ("IPv4", "IPv6"),
        ("10.96.88.90", "fd00:10:96::90"))
    assert svc.external_ips == ("192.168.64.57", "fd00:192:168:64::57")
    assert [(p.port, p.target_port, p.node_port) for p in svc.ports] == [(8090, 80, 30090)]


def test_ipv6_addresses_on_an_ipv6_family_service() -> None:
    svc = only("""\
        type: LoadBalancer
        ipFamilyPolicy: RequireDualStack
        externalIPs: [192.0.2.7, "2001:db8:7::7"]
        loadBalancerSourceRanges: [203.0.113.0/24, "2001:db8:100::/48"]""")
    assert svc.external_ips == ("192.0.2.7", "2001:db8:7::7")
    assert svc.load_balancer_source_ranges == ("203.0.113.0/24", "2001:db8:100::/48")
    doc = service("type: LoadBalancer\nipFamilies: [IPv6]") + (
        "status: {loadBalancer: {ingress: [{ip: '2001:db8:9::9'}]}}\n")
    (svc,) = parse_manifest(text(doc)).services
    assert svc.load_balancer_ips == ("2001:db8:9::9",)


# --- allocation -----------------------------------------------------------------------------


def test_ipv6_cluster_ip_allocation_is_deterministic_and_avoids_taken_addresses() -> None:
    dual = "ipFamilyPolicy: RequireDualStack"
    first = parse_manifest(text(service(dual, "a"), service(dual, "b"))).services
    again = parse_manifest(text(service(dual, "a"), service(dual, "b"))).services
    assert first == again
    v6 = [s.cluster_ip_for("ipv6") for s in first]
    assert len(set(v6)) == 2
    for ip in v6:
        address = ipaddress.IPv6Address(ip)
        assert address in ipaddress.IPv6Network(SERVICE_CIDR6)
        assert address != ipaddress.IPv6Network(SERVICE_CIDR6).network_address
    # "a" fixes the address "b" would get: "b" probes on to another one.
    fixed = f"clusterIP: 10.96.9.9\nclusterIPs: [10.96.9.9, '{v6[1]}']"
    a, b = parse_manifest(text(service(fixed, "a"), service(dual, "b"))).services
    assert a.cluster_ips == ("10.96.9.9", v6[1])
    assert b.cluster_ip_for("ipv6") not in (v6[1], None)
    assert b.cluster_ip_for("ipv4") == first[1].cluster_ip_for("ipv4")


# --- what the apiserver refuses: one line, the file unchanged ---------------------------------


@pytest.mark.parametrize(("spec", "problem"), [
    ("clusterIPs: [10.96.7.7]",
     "spec.clusterIPs must be empty when spec.clusterIP is not specified"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.8]",
     "spec.clusterIPs[0] 10.96.7.8 must match spec.clusterIP 10.96.7.7"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, 'fd00:10:96::7', 'fd00:10:96::8']",
     "spec.clusterIPs may hold up to 2 values"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, 10.96.7.8]\nipFamilyPolicy: RequireDualStack",
     "spec.clusterIPs may specify no more than one IP for each IP family"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, None]",
     "headless Services (clusterIP: None) are not proxied by kube-proxy"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, banana]\nipFamilyPolicy: RequireDualStack",
     "spec.clusterIPs[1] 'banana' is not an IP address"),
    ("ipFamilies: [IPv4, IPv6]\nipFamilyPolicy: SingleStack",
     "spec.ipFamilyPolicy SingleStack must be RequireDualStack or PreferDualStack when "
     "multiple IP families are specified"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, 'fd00:10:96::7']\nipFamilyPolicy: SingleStack",
     "spec.ipFamilyPolicy SingleStack must be RequireDualStack or PreferDualStack when "
     "multiple cluster IPs are specified"),
    ("ipFamilyPolicy: DualStack",
     "spec.ipFamilyPolicy 'DualStack' is not one of SingleStack, PreferDualStack, RequireDualStack"),
    ("ipFamilies: [IPv4, IPv5]", "spec.ipFamilies[1] 'IPv5' is not one of IPv4, IPv6"),
    ("ipFamilies: [IPv6, IPv6]", "spec.ipFamilies[1] IPv6 is a duplicate"),
    ("ipFamilies: [IPv4, IPv6, IPv4]", "spec.ipFamilies[2] IPv4 is a duplicate"),
    ("clusterIP: 'fd00:10:96::7'\nipFamilies: [IPv4]",
     "spec.clusterIP fd00:10:96::7 is not an IPv4 address, as spec.ipFamilies[0] says it must be"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, 'fd00:10:96::7']\nipFamilies: [IPv4, IPv4]",
     "spec.ipFamilies[1] IPv4 is a duplicate"),
    ("clusterIP: banana\nipFamilies: [IPv6]", "spec.clusterIP 'banana' is not an IPv6 address"),
    ("clusterIP: 'fd00:10:97::7'", "spec.clusterIP fd00:10:97::7 is outside the service CIDR "
     "fd00:10:96::/112"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, 'fd00:10:96::']",
     "spec.clusterIPs[1] fd00:10:96:: is not allocatable in fd00:10:96::/112"),
    ("clusterIP: 10.96.7.7\nclusterIPs: [10.96.7.7, 'fd00:10:96::1:0']",
     "spec.clusterIPs[1] fd00:10:96::1:0 is outside the service CIDR fd00:10:96::/112"),
    ("externalIPs: ['2001:db8:7::7']", "spec.externalIPs entry 2001:db8:7::7 is IPv6 but the "
     "Service's ipFamilies are [IPv4] (kube-proxy would ignore it)"),
    ("ipFamilies: [IPv6]\nexternalIPs: [192.0.2.7]", "spec.externalIPs entry 192.0.2.7 is IPv4 "
     "but the Service's ipFamilies are [IPv6] (kube-proxy would ignore it)"),
    ("ipFamilyPolicy: PreferDualStack\nexternalIPs: [banana]",
     "spec.externalIPs entry 'banana' is not an IPv4 or IPv6 address"),
    ("type: LoadBalancer\nloadBalancerSourceRanges: ['2001:db8::/32']",
     "spec.loadBalancerSourceRanges entry 2001:db8::/32 is IPv6 but the Service's ipFamilies "
     "are [IPv4] (kube-proxy would ignore it)"),
])
def test_refused_in_one_line_and_the_file_is_unchanged(tmp_path: Path, spec: str,
                                                        problem: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text(service(spec)))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value) == f"{path}: document 2 (Service web): {problem}"
    assert caught.value.exit_code == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_ipv4_load_balancer_ip_on_an_ipv6_service_is_refused() -> None:
    doc = service("type: LoadBalancer\nipFamilies: [IPv6]") + (
        "status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}\n")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text(doc), source="t.yaml")
    assert str(caught.value) == (
        "t.yaml: document 2 (Service web): status.loadBalancer.ingress[0].ip 192.0.2.9 is IPv4 "
        "but the Service's ipFamilies are [IPv6] (kube-proxy would ignore it)")


def test_an_ipv6_cluster_ip_used_twice_is_refused() -> None:
    spec = "clusterIP: '{v4}'\nclusterIPs: ['{v4}', 'fd00:10:96::5']"
    docs = text(service(spec.format(v4="10.96.1.1"), "a"), service(spec.format(v4="10.96.1.2"), "b"))
    with pytest.raises(ManifestError) as caught:
        parse_manifest(docs, source="t.yaml")
    assert str(caught.value) == ("t.yaml: document 3 (Service b): spec.clusterIPs[1] "
                                 "fd00:10:96::5 is already used by default/a (document 2)")
