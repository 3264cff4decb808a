"""Rendering traffic policies and loadBalancerSourceRanges as kube-proxy does
(golden against kube-proxy's own TestOverallIPTablesRules output for ns5's
firewall; the shapes of its TestInternalTrafficPolicy and nftables
firewall-ips fixtures), and the manifest fields behind them: read when the
lab renders them, refused in one line when it cannot."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.kube import policy_services as ps
from tests.kube.test_kube_render import by_chain, svc
from tracer.errors import ManifestError
from tracer.kube import naming
from tracer.kube.iptables_filter import render_filter_table
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.manifest import load_manifest
from tracer.kube.model import Endpoint, Service, ServicePort
from tracer.kube.nftables_render import render_kube_proxy_table

DATA = Path(__file__).parent / "data"
NS5_FW = "KUBE-FW-NUKIZ6OKUXPJNT4C"


def ns5() -> Service:
    """kube-proxy's ns5/svc5 without its session affinity."""
    base = svc("ns5", "svc5", type="LoadBalancer", cluster_ip="172.30.0.45",
               ports=(ServicePort("p80", "TCP", 80, 80, node_port=3002),),
               load_balancer_ips=("5.6.7.8",))
    return Service(**{**base.__dict__, "load_balancer_source_ranges": ("203.0.113.0/25",)})


def test_golden_source_ranges_match_kube_proxy_overall_rules() -> None:
    """Every ns5 line of kube-proxy's expected nat table that is not about
    session affinity (`-m recent`, and the DNAT that carries `--set`)."""
    rendered = render_nat_table([ns5()], {("ns5", "svc5"): [Endpoint("10.180.0.3", 80)]},
                                node_ips=["192.168.0.2"], cluster_cidr="10.0.0.0/8",
                                node_name="test-hostname", random_fully=False,
                                nfacct_localhost_nodeports=True, jump_rules=False)
    fixture = (DATA / "kube_proxy_overall_nat.txt").read_text()

    def ns5_lines(text: str) -> list[str]:
        return sorted(line for line in text.splitlines()
                      if ("ns5/" in line or "NUKIZ6OKUXPJNT4C" in line)
                      and not line.startswith("#") and "recent" not in line and "DNAT" not in line)

    assert ns5_lines(rendered) == ns5_lines(fixture)
    assert by_chain(rendered)[1][NS5_FW] == by_chain(fixture)[1][NS5_FW]
    # The filter half: what KUBE-FW lets fall through is dropped.
    filt = render_filter_table([ns5()], {("ns5", "svc5"): [Endpoint("10.180.0.3", 80)]},
                               node_name="test-hostname")
    assert ('-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by '
            f'{NS5_FW}" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP') in filt.splitlines()


def test_kube_proxys_own_fixture_parses_to_its_source_ranges_and_policies() -> None:
    services = {s.name: s for s in parse_iptables_nat_rules(
        (DATA / "kube_proxy_overall_nat.txt").read_text())}
    (svc5,) = services["svc5"].ports
    assert (svc5.load_balancer_ips, svc5.load_balancer_chain, svc5.load_balancer_source_ranges,
            svc5.internal_policy, svc5.external_policy, svc5.pod_cidrs) == (
        ("5.6.7.8",), NS5_FW, ("203.0.113.0/25",), "Cluster", "Cluster", ())
    (svc2,) = services["svc2"].ports  # externalTrafficPolicy Local, no local endpoint
    assert (svc2.external_policy, svc2.pod_cidrs, svc2.local_endpoints) == (
        "Local", ("10.0.0.0/8",), ())


def test_nftables_firewall_as_kube_proxy_writes_it() -> None:
    text = render_kube_proxy_table([ns5()], {("ns5", "svc5"): [Endpoint("10.180.0.3", 80)]},
                                   node_ips=["192.168.0.2"], cluster_cidr="10.0.0.0/8")
    fw = naming.nft_firewall_chain("ns5", "svc5", "tcp", "p80")
    assert fw == "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
    lines = text.splitlines()
    assert f"add chain ip kube-proxy {fw}" in lines
    assert f"add rule ip kube-proxy {fw} ip saddr != {{ 203.0.113.0/25 }} drop" in lines
    assert (f"add element ip kube-proxy firewall-ips {{ 5.6.7.8 . tcp . 80 : goto {fw} }}"
            in lines)


def test_internal_traffic_policy_local_as_kube_proxy_writes_it() -> None:
    """TestInternalTrafficPolicy's shape: the cluster IP enters KUBE-SVL,
    which holds the local endpoint only; no KUBE-SVC; without a local
    endpoint the filter table DROPs the cluster IP."""
    service = Service("ns1", "svc1", "ClusterIP", "172.30.1.1", (),
                      (ServicePort("", "TCP", 80, 80),), (("foo", "bar"),),
                      internal_traffic_policy="Local")
    eps = {service.key: [Endpoint("10.0.1.1", 80, node="test-hostname"),
                         Endpoint("10.0.1.2", 80, node="host1"),
                         Endpoint("10.0.1.3", 80, node="host2")]}
    nat = render_nat_table([service], eps, node_ips=["192.168.0.2"], cluster_cidr="10.0.0.0/8",
                           node_name="test-hostname", jump_rules=False)
    chains, rules = by_chain(nat)
    svl = naming.service_local_chain("ns1/svc1", "tcp")
    sep = naming.endpoint_chain("ns1/svc1", "tcp", "10.0.1.1:80")
    assert (svl, sep) == ("KUBE-SVL-AQI2S6QIMU7PVVRP", "KUBE-SEP-3JOIVZTXZZRGORX4")
    assert naming.service_chain("ns1/svc1", "tcp") not in chains
    assert {c for c in chains if c.startswith("KUBE-SEP-")} == {sep}
    assert rules["KUBE-SERVICES"][0] == (
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp '
        f"-d 172.30.1.1 --dport 80 -j {svl}")
    assert rules[svl] == [
        '-A KUBE-SVL-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp '
        "-d 172.30.1.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        f'-A {svl} -m comment --comment "ns1/svc1 -> 10.0.1.1:80" -j {sep}',
    ]
    elsewhere = render_nat_table([service], eps, node_ips=["192.168.0.2"], node_name="host9",
                                 cluster_cidr="10.0.0.0/8", jump_rules=False)
    assert "ns1/svc1" not in elsewhere
    filt = render_filter_table([service], eps, node_name="host9").splitlines()
    assert ('-A KUBE-SERVICES -m comment --comment "ns1/svc1 has no local endpoints" -m tcp '
            "-p tcp -d 172.30.1.1 --dport 80 -j DROP") in filt
    nft = render_kube_proxy_table([service], eps, node_ips=["192.168.0.2"], node_name="host9")
    assert ('add element ip kube-proxy no-endpoint-services { 172.30.1.1 . tcp . 80 '
            'comment "ns1/svc1" : drop }') in nft.splitlines()


# --- the manifest ---------------------------------------------------------------------------

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
LB = """\
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  loadBalancerSourceRanges: [203.0.113.0/25, " 198.51.100.7/32"]
  sessionAffinity: None
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports: [{port: 80, targetPort: 80, nodePort: 30112, appProtocol: http}]
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.10, ipMode: VIP}]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(f"{DEPLOYMENT}---\n{text}")
    return path


def test_manifest_reads_policies_ranges_and_lb_ips(tmp_path: Path) -> None:
    (service,) = load_manifest(write(tmp_path, LB)).services
    assert (service.type, service.external_traffic_policy, service.internal_traffic_policy,
            service.load_balancer_source_ranges, service.load_balancer_ips) == (
        "LoadBalancer", "Local", "Local", ("203.0.113.0/25", "198.51.100.7/32"), ("192.0.2.10",))


@pytest.mark.parametrize(("change", "problem"), [
    (("ipFamilyPolicy: SingleStack", "ipFamilyPolicy: DualStack"),
     "spec.ipFamilyPolicy 'DualStack' is not one of SingleStack, PreferDualStack, RequireDualStack"),
    (("ipFamilies: [IPv4]", "ipFamilies: [IPv6]"),
     "status.loadBalancer.ingress[0].ip 192.0.2.10 is IPv4 but the Service's ipFamilies are "
     "[IPv6] (kube-proxy would ignore it)"),
    (("type: LoadBalancer", "type: LoadBalancer\n  healthCheckNodePort: 30999"),
     "spec.healthCheckNodePort is not rendered by the lab (it would be ignored)"),
    (("type: LoadBalancer", "type: LoadBalancer\n  loadBalancerIP: 192.0.2.11"),
     "spec.loadBalancerIP is not rendered by the lab (it would be ignored)"),
    (("type: LoadBalancer", "type: LoadBalancer\n  trafficDistribution: PreferClose"),
     "spec.trafficDistribution is not rendered by the lab (it would be ignored)"),
    (("appProtocol: http", "appProtocol: http, name2: x"),
     "spec.ports[0].name2 is not rendered by the lab (it would be ignored)"),
    (("ipMode: VIP", "ipMode: Proxy"),
     "status.loadBalancer.ingress[0].ipMode is not rendered by the lab"),
    (("{ip: 192.0.2.10, ipMode: VIP}", "{hostname: lb.example}"),
     "status.loadBalancer.ingress[0].hostname is not rendered by the lab"),
    (("internalTrafficPolicy: Local", "internalTrafficPolicy: Nearby"),
     "spec.internalTrafficPolicy 'Nearby' is not one of Cluster, Local"),
    (("203.0.113.0/25", "203.0.113.0/33"),
     "spec.loadBalancerSourceRanges entry '203.0.113.0/33' is not an IPv4 CIDR"),
    (("type: LoadBalancer", "type: NodePort"),
     "status.loadBalancer.ingress applies to type LoadBalancer only"),
])
def test_manifest_refuses_what_the_lab_cannot_render(tmp_path: Path, change, problem) -> None:
    old, new = change
    assert old in LB
    path = write(tmp_path, LB.replace(old, new))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert message == f"{path}: document 2 (Service web-lb): {problem}"
    assert caught.value.exit_code == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_manifest_refuses_source_ranges_off_a_load_balancer(tmp_path: Path) -> None:
    text = LB.replace("type: LoadBalancer", "type: NodePort")
    path = write(tmp_path, text[: text.index("status:")])
    with pytest.raises(ManifestError, match=r"\(Service web-lb\): spec.loadBalancerSourceRanges "
                       "applies to type LoadBalancer only$"):
        load_manifest(path)


def test_policy_services_render_into_the_fixtures_shape() -> None:
    """The shared scenario renders (both modes) without complaint, and its
    nat text is what the fixture was loaded from (chain by chain)."""
    nat = render_nat_table(ps.SERVICES, ps.ENDPOINTS, **ps.RENDER)
    saved = by_chain((DATA / "kube_proxy_policies.txt").read_text())[0]
    assert by_chain(nat)[0] == {c for c in saved if c.startswith("KUBE-")} - {
        "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"}
