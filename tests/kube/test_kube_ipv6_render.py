"""The IPv6 renderers against kube-proxy's own IPv6 expectations, every rule
line (iptables mode) and every nft statement (nftables mode), and a
dual-stack Service rendered per family: each family's rules hold only its
part, and parse back to one Service with both families' ports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer.errors import UsageError
from tracer.kube.iptables_filter import render_filter_table
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint, Service, ServicePort
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.resolved import merge_families
from tracer.kube.rules_source import parse_kube_proxy_rules

DATA = Path(__file__).parent / "data"


def fixture_lines(name: str) -> list[str]:
    return [line for line in (DATA / name).read_text().splitlines()
            if line and not line.startswith("#")]


def svc1(cluster_ip: str, node_port: int, policy: str, **more) -> Service:
    return Service(
        namespace="ns1", name="svc1", type="NodePort", cluster_ip=cluster_ip, external_ips=(),
        ports=(ServicePort("p80", "TCP", 80, 80, node_port=node_port),),
        selector=(("app", "svc1"),), external_traffic_policy=policy, **more,
    )


def test_golden_ip6tables_localhost_nodeports() -> None:
    """TestEnableLocalhostNodePortsIPv6 (and ...Disable...: IPv6 ignores
    localhostNodePorts): filter and nat, line for line, in order."""
    service = svc1("fd00:ab34::20", 30001, "Local")
    endpoints = {service.key: [Endpoint("ff06::c1", 80),
                               Endpoint("ff06::c2", 80, node="test-hostname")]}
    for localhost_nodeports in (True, False):
        options = dict(node_name="test-hostname", localhost_nodeports=localhost_nodeports,
                       jump_rules=False, family="ipv6")
        filter_text = render_filter_table([service], endpoints, **options)
        nat_text = render_nat_table([service], endpoints, node_ips=[], cluster_cidr=None,
                                    random_fully=False, **options)
        rendered = (filter_text + nat_text).splitlines()
        want = fixture_lines("kube_proxy_ipv6_localhost_nodeports.txt")
        # Declarations as a set (kube-proxy writes them in map order), the
        # rules of each table in order.
        assert sorted(x for x in rendered if x.startswith(":")) == sorted(
            x for x in want if x.startswith(":"))
        for table in ("*filter", "*nat"):
            got = section(rendered, table)
            expected = section(want, table)
            assert sorted(got) == sorted(expected), table
            for chain in {line.split()[1] for line in expected}:
                assert [x for x in got if x.split()[1] == chain] == [
                    x for x in expected if x.split()[1] == chain], chain


def section(lines: list[str], table: str) -> list[str]:
    start = lines.index(table)
    end = lines.index("COMMIT", start)
    return [x for x in lines[start + 1:end] if x.startswith("-A ")]


def nft_state(lines: list[str]) -> dict[str, object]:
    """What a transaction leaves: chains, sets and maps, each chain's rules
    in order, elements; "test comment"s (the dump test's own) dropped."""
    lines = [re.sub(r' comment "test comment"', "", x) for x in lines]
    chains = {x.split()[4] for x in lines if x.startswith("add chain ")}
    rules: dict[str, list[str]] = {}
    for x in lines:
        if x.startswith("add rule "):
            rules.setdefault(x.split()[4], []).append(x)
    return {
        "table": [x for x in lines if x.startswith("add table ")],
        "chains": chains,
        "typed": {x for x in lines if x.startswith("add chain ") and "{" in x},
        "sets": {x for x in lines if x.startswith(("add set ", "add map "))},
        "rules": rules,
        "elements": sorted(x for x in lines if x.startswith("add element ")),
    }


def test_golden_nft_ip6_table() -> None:
    """kube-proxy's IPv6 nftables rules (TestNodePorts' IPv6 basic case, as
    kube_proxy_nft_ipv6_nodeports.txt has them): every statement."""
    service = svc1("fd00:172:30::41", 3001, "Cluster")
    endpoints = {service.key: [Endpoint("fd00:10:180::2:1", 80), Endpoint("fd00:10:180::1", 80)]}
    rendered = render_kube_proxy_table(
        [service], endpoints, node_ips=["2001:db8::1", "2001:db8:1::2"],
        nodeport_addresses="node-ips", cluster_cidr="fd00:10::/64",
        service_cidrs=["fd00:10:96::/112"], masquerade_mark="0x4000", family="ipv6",
    )
    got = nft_state(rendered.splitlines())
    want = nft_state(fixture_lines("kube_proxy_nft_ipv6_nodeports.txt"))
    for key in want:
        assert got[key] == want[key], key


def test_ipv6_nodeports_on_any_address_exclude_localhost() -> None:
    service = svc1("fd00:ab34::20", 30001, "Cluster")
    endpoints = {service.key: [Endpoint("fd00:10::5", 80)]}
    nft = render_kube_proxy_table([service], endpoints, node_ips=[], cluster_cidr=None,
                                  service_cidrs=[], family="ipv6")
    assert ("add rule ip6 kube-proxy services fib daddr type local ip6 daddr != ::1 "
            "meta l4proto . th dport vmap @service-nodeports") in nft
    assert "127.0.0.0/8" not in nft and " ip " not in nft.replace("add table ip6", "")
    nat = render_nat_table([service], endpoints, node_ips=["2001:db8::1", "::1"],
                           nodeport_addresses="node-ips", cluster_cidr=None,
                           nfacct_localhost_nodeports=True, family="ipv6")
    assert "-d 2001:db8::1 -j KUBE-NODEPORTS" in nat
    assert "-d ::1 " not in nat and "nfacct" not in nat and "127.0.0.0/8" not in nat


def dual_stack() -> tuple[Service, dict]:
    service = Service(
        namespace="default", name="web", type="LoadBalancer", cluster_ip="10.96.0.20",
        external_ips=("192.0.2.7", "2001:db8:7::7"),
        ports=(ServicePort("http", "TCP", 80, 8080, node_port=30080),),
        selector=(("app", "web"),), load_balancer_ips=("198.51.100.9", "2001:db8:9::9"),
        load_balancer_source_ranges=("203.0.113.0/24", "2001:db8:100::/48"),
        cluster_ips=("10.96.0.20", "fd00:96::20"), ip_families=("IPv4", "IPv6"),
        ip_family_policy="RequireDualStack",
    )
    endpoints = {service.key: [Endpoint("10.217.0.5", 8080, node="a"),
                               Endpoint("fd00:217::5", 8080, node="a"),
                               Endpoint("fd00:217::6", 8080, node="b")]}
    return service, endpoints


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_dual_stack_service_renders_each_family_and_parses_back_as_one(mode: str) -> None:
    service, endpoints = dual_stack()
    texts = []
    for family, cidr, node_ip in (("ipv4", "10.217.0.0/16", "192.168.64.2"),
                                  ("ipv6", "fd00:217::/64", "2001:db8::2")):
        common = dict(node_ips=[node_ip], cluster_cidr=cidr, node_name="a", family=family)
        if mode == "iptables":
            text = render_nat_table([service], endpoints, **common) + render_filter_table(
                [service], endpoints, node_name="a", family=family)
        else:
            text = render_kube_proxy_table(
                [service], endpoints,
                service_cidrs=["10.96.0.0/12" if family == "ipv4" else "fd00:96::/112"], **common)
        other = ("fd00:", "2001:db8:") if family == "ipv4" else ("10.96.", "192.0.2.", "10.217.")
        assert not any(o in text for o in other), family
        texts.append(text)
    (web,) = merge_families(parse_kube_proxy_rules(texts[0]), parse_kube_proxy_rules(texts[1]))
    assert [(p.family, p.cluster_ips, p.external_ips, p.node_port) for p in web.ports] == [
        ("ipv4", ("10.96.0.20",), ("192.0.2.7",), 30080),
        ("ipv6", ("fd00:96::20",), ("2001:db8:7::7",), 30080)]
    assert [[(e.ip, e.share) for e in p.endpoints] for p in web.ports] == [
        [("10.217.0.5", 1.0)], [("fd00:217::5", 0.5), ("fd00:217::6", 0.5)]]
    assert [p.load_balancer_source_ranges for p in web.ports] == [
        ("203.0.113.0/24",), ("2001:db8:100::/48",)]
    assert {a[0] for a in web.service_addresses()} >= {"10.96.0.20", "fd00:96::20"}


def test_single_stack_services_render_in_their_family_only() -> None:
    v6_only = svc1("fd00:ab34::20", 30001, "Cluster", cluster_ips=("fd00:ab34::20",),
                   ip_families=("IPv6",), ip_family_policy="SingleStack")
    v4_only = Service(namespace="ns2", name="v4", type="ClusterIP", cluster_ip="10.96.0.9",
                      external_ips=(), ports=(ServicePort("", "TCP", 80, 80),),
                      selector=(("app", "v4"),))
    endpoints = {v6_only.key: [Endpoint("fd00:10::1", 80)], v4_only.key: [Endpoint("10.0.0.1", 80)]}
    v4 = parse_kube_proxy_rules(render_nat_table([v6_only, v4_only], endpoints, node_ips=[]))
    v6 = parse_kube_proxy_rules(render_nat_table([v6_only, v4_only], endpoints, node_ips=[],
                                                 cluster_cidr="fd00:10::/64", family="ipv6"))
    assert [s.full_name for s in v4] == ["ns2/v4"] and [s.full_name for s in v6] == ["ns1/svc1"]
    # An IPv6 render refuses IPv4 node options in one line.
    with pytest.raises(UsageError) as info:
        render_kube_proxy_table([v6_only], endpoints, node_ips=[], family="ipv6")
    assert str(info.value) == "cluster CIDR '10.217.0.0/16' is not an IPv6 CIDR"
    with pytest.raises(UsageError) as info:
        render_nat_table([v6_only], endpoints, node_ips=["192.168.0.2"], cluster_cidr=None,
                         family="ipv6")
    assert str(info.value) == "node IP '192.168.0.2' is not an IPv6 address"
    assert info.value.exit_code == 2
