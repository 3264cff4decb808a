"""A Service with endpoints but none on this node under a traffic policy
Local: kube-proxy's own fixtures (iptables TestInternalTrafficPolicy and
TestOverallIPTablesRules, nftables TestOverallNFTablesRules) through both
parsers, every field; the renderers write those DROPs exactly; `tracer
services` shows them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.kube.iptables_filter import render_filter_table
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.model import Endpoint, Service, ServicePort
from tracer.kube.nftables_parse import parse_kube_proxy_table
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.resolved import ResolvedEndpoint, ResolvedServicePort
from tracer.kube.rules_source import format_services_table, services_table

DATA = Path(__file__).parent / "data"
ITP_NONE = (DATA / "kube_proxy_itp_no_local.txt").read_text()
OVERALL = (DATA / "kube_proxy_overall_filter.txt").read_text() + (
    DATA / "kube_proxy_overall_nat.txt").read_text()
NFT_ETP = (DATA / "kube_proxy_nft_etp_no_local.txt").read_text()
HOST = "test-hostname"  # kube-proxy's fake proxier's node


def itp_service() -> tuple[Service, dict]:
    svc = Service("ns1", "svc1", "ClusterIP", "172.30.1.1", (), (ServicePort("", "TCP", 80, 80),),
                  (("foo", "bar"),), internal_traffic_policy="Local")
    eps = [Endpoint(f"10.0.1.{i}", 80, node=f"host{i - 1}") for i in (1, 2, 3)]
    return svc, {svc.key: eps}


def etp_service() -> tuple[Service, dict]:
    svc = Service("ns2", "svc2", "LoadBalancer", "172.30.0.42", ("192.168.99.22",),
                  (ServicePort("p80", "TCP", 80, 80, node_port=3001),), (("app", "svc2"),),
                  external_traffic_policy="Local", load_balancer_ips=("1.2.3.4",))
    # No node name on the endpoint: not local, as in kube-proxy's test.
    return svc, {svc.key: [Endpoint("10.180.0.2", 80)]}


def test_iptables_internal_policy_without_local_endpoint_every_field() -> None:
    (svc,) = parse_iptables_nat_rules(ITP_NONE)
    assert (svc.namespace, svc.name, svc.name_source, svc.no_endpoints) == (
        "ns1", "svc1", "comment", False)
    assert svc.ports == (ResolvedServicePort(
        port_name="", protocol="tcp", port=80, cluster_ips=("172.30.1.1",),
        internal_policy="Local", no_local_endpoints=("internal",), drop_in=("KUBE-SERVICES",)),)
    assert svc.ports[0].to_dict()["entry_points"] == [
        {"kind": "cluster_ip", "addresses": ["172.30.1.1"], "chain": None, "policy": "Local"}]


def test_iptables_external_policy_without_local_endpoint_every_field() -> None:
    services = {s.name: s for s in parse_iptables_nat_rules(OVERALL)}
    assert sorted(services) == ["svc1", "svc2", "svc3", "svc4", "svc5", "svc6"]
    chain = "GNZBNJ2PO5MGZ6GT"
    assert services["svc2"].ports == (ResolvedServicePort(
        port_name="p80", protocol="tcp", port=80, cluster_ips=("172.30.0.42",),
        external_ips=("192.168.99.22",), load_balancer_ips=("1.2.3.4",), node_port=3001,
        service_chain=f"KUBE-SVC-{chain}", external_chain=f"KUBE-EXT-{chain}",
        external_policy="Local",
        endpoints=(ResolvedEndpoint("10.180.0.2", 80, "tcp", 1.0, 1.0, "KUBE-SEP-RS4RBKLTHTF2IUXJ"),),
        no_local_endpoints=("external",), drop_in=("KUBE-EXTERNAL-SERVICES",),
        cluster_ip_chain=f"KUBE-SVC-{chain}", internal_policy="Cluster",
        load_balancer_chain=f"KUBE-EXT-{chain}", pod_cidrs=("10.0.0.0/8",)),)
    # The others are untouched: no DROP names them.
    assert all(p.no_local_endpoints == () and p.drop_in == ()
               for name, s in services.items() if name != "svc2" for p in s.ports)
    assert services["svc6"].no_endpoints


def test_nftables_external_policy_without_local_endpoint_every_field() -> None:
    (svc,) = parse_kube_proxy_table(NFT_ETP)
    base = "42NFTM6N-ns2/svc2/tcp/p80"
    assert (svc.namespace, svc.name, svc.name_source) == ("ns2", "svc2", "chain-name")
    assert svc.ports == (ResolvedServicePort(
        port_name="p80", protocol="tcp", port=80, cluster_ips=("172.30.0.42",),
        # Without firewall-ips nothing in the table tells an LB IP from an external IP.
        external_ips=("192.168.99.22", "1.2.3.4"), node_port=3001,
        service_chain=f"service-{base}", external_chain=f"external-{base}",
        external_policy="Local",
        endpoints=(ResolvedEndpoint("10.180.0.2", 80, "tcp", 1.0, 1.0,
                                    "endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"),),
        no_local_endpoints=("external",),
        drop_in=("no-endpoint-services", "no-endpoint-nodeports"),
        cluster_ip_chain=f"service-{base}", internal_policy="Cluster",
        pod_cidrs=("10.0.0.0/8",)),)


def test_nftables_internal_policy_drop_from_the_cluster_ips_set() -> None:
    text = ("add element ip kube-proxy cluster-ips { 172.30.1.1 }\n"
            'add element ip kube-proxy no-endpoint-services { 172.30.1.1 . tcp . 80 '
            'comment "ns1/svc1" : drop }\n')
    (svc,) = parse_kube_proxy_table(text)
    assert svc.ports == (ResolvedServicePort(
        port_name="", protocol="tcp", port=80, cluster_ips=("172.30.1.1",),
        internal_policy="Local", no_local_endpoints=("internal",),
        drop_in=("no-endpoint-services",)),)


def test_a_reject_or_an_unrelated_drop_is_not_a_local_drop() -> None:
    text = ("add element ip kube-proxy cluster-ips { 172.30.1.1 }\n"
            'add element ip kube-proxy no-endpoint-services { 172.30.1.1 . tcp . 80 '
            'comment "ns1/svc1" : goto reject-chain }\n')
    (svc,) = parse_kube_proxy_table(text)
    assert svc.no_endpoints and svc.ports[0].no_local_endpoints == ()
    # A DROP with another comment (someone else's rule) is no Service.
    other = ("*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment "
             '"ns1/svc1 blocked" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j DROP\nCOMMIT\n')
    assert parse_iptables_nat_rules(other) == []


def _rule_lines(text: str, marker: str) -> list[str]:
    return [line for line in text.splitlines() if marker in line and not line.startswith("#")]


def test_iptables_renderer_writes_kube_proxys_drops() -> None:
    svc, eps = itp_service()
    rendered = render_filter_table([svc], eps, node_name=HOST)
    assert _rule_lines(rendered, "has no local endpoints") == _rule_lines(
        ITP_NONE, "has no local endpoints")
    svc, eps = etp_service()
    rendered = render_filter_table([svc], eps, node_name=HOST)
    assert _rule_lines(rendered, "has no local endpoints") == _rule_lines(
        OVERALL, "has no local endpoints")


def test_nftables_renderer_writes_kube_proxys_drop_elements() -> None:
    svc, eps = etp_service()
    rendered = render_kube_proxy_table([svc], eps, node_ips=["192.168.0.2"],
                                       cluster_cidr="10.0.0.0/8", node_name=HOST)
    assert sorted(_rule_lines(rendered, ": drop }")) == sorted(_rule_lines(NFT_ETP, ": drop }"))
    # And what the renderer wrote parses back to the same record.
    (port,) = parse_kube_proxy_table(rendered)[0].ports
    assert (port.no_local_endpoints, port.drop_in) == (
        ("external",), ("no-endpoint-services", "no-endpoint-nodeports"))


@pytest.mark.parametrize("text", [ITP_NONE, OVERALL])
def test_renderer_round_trip_iptables(text: str) -> None:
    svc, eps = itp_service() if text is ITP_NONE else etp_service()
    (parsed,) = parse_iptables_nat_rules(render_filter_table([svc], eps, node_name=HOST))
    want = {s.name: s for s in parse_iptables_nat_rules(text)}[svc.name].ports[0]
    assert (parsed.ports[0].no_local_endpoints, parsed.ports[0].drop_in) == (
        want.no_local_endpoints, want.drop_in)


def test_services_table_shows_the_drops() -> None:
    (row,) = services_table(parse_iptables_nat_rules(ITP_NONE))
    assert row == {"service": "ns1/svc1", "port": "80/tcp", "cluster_ip": "172.30.1.1",
                   "external_ips": "-", "node_port": "-",
                   "endpoints": "no local endpoints (DROP internal)", "affinity": "-",
                   "chain": "KUBE-SERVICES", "policy": "internal Local"}
    rows = {r["service"]: r for r in services_table(parse_iptables_nat_rules(OVERALL))}
    assert rows["ns2/svc2"]["endpoints"] == (
        "10.180.0.2:80(100%); no local endpoints (DROP external)")
    assert "no local endpoints (DROP external)" in format_services_table(
        parse_kube_proxy_table(NFT_ETP))
    dumped = parse_kube_proxy_table(NFT_ETP)[0].to_dict()["ports"][0]
    assert (dumped["no_local_endpoints"], dumped["drop_in"]) == (
        ["external"], ["no-endpoint-services", "no-endpoint-nodeports"])
