"""A lab Service's families (tracer/lab/service_families.py) and its IPv6
rules (kubeproxy.render6), without a lab: each policy on an IPv4 and a dual
lab, the state's IPv6 fields, the IPv6 rules of both proxy modes holding
IPv6 addresses only and reading back (tracer.kube's parsers) to the Service
with the pods' IPv6 endpoints, and render()'s IPv4 output as it was."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import textwrap

import pytest

from tracer.errors import UsageError
from tracer.kube.manifest import load_manifest, parse_manifest
from tracer.kube.resolved import merge_families
from tracer.kube.rules_source import parse_kube_proxy_rules
from tracer.lab import kubeproxy
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan
from tracer.lab.state import LabState

MANIFESTS = DEFAULT_MANIFEST.parent
DUAL = MANIFESTS / "dual-stack.yaml"
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


def manifest_with(spec: str):
    body = textwrap.indent(f"{spec}\nselector: {{app: web}}\nports: [{{port: 80}}]", "  ")
    doc = f"apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{body}\n"
    return parse_manifest(f"---\n{DEPLOYMENT}---\n{doc}", source="t.yaml")


# --- families per lab ------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "on_ipv4", "on_dual"), [
    ("ipFamilyPolicy: SingleStack", ("ipv4",), ("ipv4",)),
    ("ipFamilyPolicy: PreferDualStack", ("ipv4",), ("ipv4", "ipv6")),
    ("ipFamilyPolicy: RequireDualStack", "its ipFamilyPolicy is RequireDualStack",
     ("ipv4", "ipv6")),
    ("ipFamilies: [IPv6]", "its ipFamilies are [IPv6]", ("ipv6",)),
    ("ipFamilies: [IPv6]\nipFamilyPolicy: PreferDualStack", "its ipFamilies are [IPv6, IPv4]",
     ("ipv6", "ipv4")),
])
def test_each_policy_on_each_lab_family(spec: str, on_ipv4, on_dual) -> None:
    manifest = manifest_with(spec)
    assert make_plan(manifest, ip_family="dual").service("web").ip_families == on_dual
    if isinstance(on_ipv4, tuple):
        assert make_plan(manifest).service("web").ip_families == on_ipv4
        return
    with pytest.raises(UsageError) as caught:
        make_plan(manifest)
    assert str(caught.value) == (f"Service default/web needs IPv6 ({on_ipv4}) but the lab is "
                                 "IPv4 only: start it with --ip-family dual")
    assert caught.value.exit_code == 2


def test_state_gets_the_ipv6_addresses_on_a_dual_lab_only() -> None:
    manifest = load_manifest(DUAL)
    dual = make_plan(manifest, ip_family="dual").service("nginx-demo-dual")
    assert (dual.cluster_ip, dual.external_ips) == ("10.96.88.90", ("192.168.64.57",))
    assert (dual.cluster_ip6, dual.external_ips6) == ("fd00:10:96::90", ("fd00:192:168:64::57",))
    state = make_plan(manifest, ip_family="dual")
    pods = {p.name: p for p in state.pods}
    assert [(e.ip, e.ip6) for e in dual.ports[0].endpoints] == [
        (pods[e.pod].ip, pods[e.pod].ip6) for e in dual.ports[0].endpoints]
    assert all(e.ip6 and e.ip6.startswith("fd00:10:217:") for e in dual.ports[0].endpoints)
    v4 = make_plan(manifest).service("nginx-demo-dual")
    assert (v4.ip_families, v4.cluster_ip, v4.cluster_ip6, v4.external_ips6) == (
        ("ipv4",), "10.96.88.90", None, ())
    assert all(e.ip6 is None for e in v4.ports[0].endpoints)
    # state.json round trip; an older file without the new fields loads as IPv4.
    assert LabState.from_dict(json.loads(state.to_json())) == state
    old = json.loads(make_plan(load_manifest(DEFAULT_MANIFEST)).to_json())
    for svc in old["services"]:
        for key in ("ip_families", "cluster_ip6", "external_ips6", "load_balancer_ips6"):
            del svc[key]
        for port in svc["ports"]:
            for endpoint in port["endpoints"]:
                del endpoint["ip6"]
    loaded = LabState.from_dict(old)
    assert all(s.ip_families == ("ipv4",) and s.cluster_ip6 is None for s in loaded.services)


# --- IPv6 rules ---------------------------------------------------------------------------------

IPV4 = re.compile(r"(?<![\w.:])(\d{1,3}\.){3}\d{1,3}(?![\w.])")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_dual_lab_ipv6_rules_are_ipv6_and_read_back_to_the_service(mode: str) -> None:
    manifest = load_manifest(DUAL)
    state = make_plan(manifest, ip_family="dual", proxy_mode=mode)
    pods6 = sorted(p.ip6 for p in state.pods)
    for node in state.nodes:
        text6 = kubeproxy.render6(manifest, state, node)
        assert text6 is not None
        assert IPV4.search(text6) is None, IPV4.search(text6)
        if mode == "nftables":
            assert text6.startswith("add table ip6 kube-proxy\ndelete table ip6 kube-proxy\n")
            assert " ip kube-proxy" not in text6
        else:
            assert text6.startswith("*filter\n") and "*nat\n" in text6
        for address in ("fd00:10:96::90", "fd00:192:168:64::57", "fd00:10:217::/48", *pods6):
            assert address in text6
        (svc,) = parse_kube_proxy_rules(text6)
        (port,) = svc.ports
        assert (svc.full_name, port.family, port.cluster_ips, port.external_ips, port.node_port) == (
            "default/nginx-demo-dual", "ipv6", ("fd00:10:96::90",), ("fd00:192:168:64::57",), 30090)
        assert sorted(e.ip for e in port.endpoints) == pods6
        assert all(ipaddress.ip_address(e.ip).version == 6 for e in port.endpoints)
        # With the IPv4 rules: one Service, a port per family.
        (both,) = merge_families(parse_kube_proxy_rules(kubeproxy.render(manifest, state, node)),
                                 parse_kube_proxy_rules(text6))
        assert [(p.family, p.cluster_ips) for p in both.ports] == [
            ("ipv4", ("10.96.88.90",)), ("ipv6", ("fd00:10:96::90",))]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_ipv6_rules_leave_out_ipv4_only_services(mode: str) -> None:
    manifest = load_manifest(MANIFESTS / "service-api.yaml")
    state = make_plan(manifest, ip_family="dual", proxy_mode=mode)
    text6 = kubeproxy.render6(manifest, state, state.nodes[0])
    assert text6 is not None and parse_kube_proxy_rules(text6) == []
    assert kubeproxy.endpoints(state, "ipv6") == {s.key: [] for s in manifest.services}
    assert kubeproxy.render6(manifest, make_plan(manifest, proxy_mode=mode), state.nodes[0]) is None


# render()'s output before dual stack (sha256 of every node's text, in
# order), for the shipped IPv4 manifests: the IPv4 rules must not change.
BEFORE = {
    ("nginx-demo.yaml", "iptables"): "9627dd8864a524ad5669e90939726ab2d349f58a67b6429f4126b1a947653ded",
    ("nginx-demo.yaml", "nftables"): "2c48dbe907cb2240b103b1d81c3b6a9bb24a08f0e1a3f8574a31dba4d817515a",
    ("service-api.yaml", "iptables"): "7f468c8be38f2106c8ebf3922a1323302937cb252b7a47b752e867c02009dd95",
    ("service-api.yaml", "nftables"): "d34962ff383c8811eaa84fc059a0fd84df1a325050a35b44a834aa329dcd9e9c",
}


@pytest.mark.parametrize(("name", "mode"), sorted(BEFORE))
@pytest.mark.parametrize("ip_family", ["ipv4", "dual"])
def test_ipv4_rules_unchanged(name: str, mode: str, ip_family: str) -> None:
    manifest = load_manifest(MANIFESTS / name)
    state = make_plan(manifest, run_dir="/run/tracer-lab", proxy_mode=mode, ip_family=ip_family)
    text = "".join(kubeproxy.render(manifest, state, n) for n in state.nodes)
    assert hashlib.sha256(text.encode()).hexdigest() == BEFORE[(name, mode)]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_dual_stack_manifest_ipv4_rules_do_not_depend_on_the_lab_family(mode: str) -> None:
    manifest = load_manifest(DUAL)
    v4 = make_plan(manifest, proxy_mode=mode)
    dual = make_plan(manifest, proxy_mode=mode, ip_family="dual")
    for a, b in zip(v4.nodes, dual.nodes, strict=True):
        text = kubeproxy.render(manifest, v4, a)
        assert text == kubeproxy.render(manifest, dual, b)
        assert "fd00:" not in text and "10.96.88.90" in text
