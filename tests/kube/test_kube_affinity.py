"""ClientIP session affinity end to end without root: kube-proxy's own
expected rules (tests/kube/data/kube_proxy_affinity_local_nat.txt from its
iptables proxier_test.go, kube_proxy_nft_affinity.txt from its nftables
proxier_test.go) through both parsers, field by field; both renderers
against the same fixtures; the forms iptables-save and nft print back; the
manifest fields; `tracer services`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.kube.test_kube_manifest import DEPLOYMENT, error_of, load, service
from tests.kube.test_kube_render import by_chain
from tracer.kube import naming
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint, Service, ServicePort, SessionAffinity
from tracer.kube.nftables_parse import parse_kube_proxy_table, read_nft
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.nftables_text import nft_seconds
from tracer.kube.resolved import ResolvedServicePort
from tracer.kube.rules_source import format_services_table, services_table

DATA = Path(__file__).parent / "data"
IPT_FIXTURE = (DATA / "kube_proxy_affinity_local_nat.txt").read_text()
NFT_FIXTURE = (DATA / "kube_proxy_nft_affinity.txt").read_text()
HOST = "test-hostname"


def ipt_scenario() -> tuple[Service, dict[tuple[str, str], list[Endpoint]]]:
    """TestTerminatingEndpointsTrafficPolicyLocal, "ready endpoints exist"."""
    svc = Service(
        namespace="ns1", name="svc1", type="LoadBalancer", cluster_ip="172.30.1.1",
        external_ips=(), ports=(ServicePort("", "TCP", 80, 80),), selector=(("foo", "bar"),),
        external_traffic_policy="Local", load_balancer_ips=("1.2.3.4",),
        session_affinity=SessionAffinity(10800),
    )
    endpoints = [
        Endpoint("10.0.1.1", 80, node=HOST),
        Endpoint("10.0.1.2", 80, node=HOST),
        Endpoint("10.0.1.3", 80, node=HOST, ready=False),  # terminating
        Endpoint("10.0.1.4", 80, node=HOST, ready=False),  # terminating, not serving
        Endpoint("10.0.1.5", 80, node="host-1"),
    ]
    return svc, {svc.key: endpoints}


def nft_scenario() -> tuple[Service, dict[tuple[str, str], list[Endpoint]]]:
    """TestOverallNFTablesRules' ns5/svc5 (its source ranges left out)."""
    svc = Service(
        namespace="ns5", name="svc5", type="LoadBalancer", cluster_ip="172.30.0.45",
        external_ips=(), ports=(ServicePort("p80", "TCP", 80, 80, node_port=3002),),
        selector=(("app", "svc5"),), load_balancer_ips=("5.6.7.8",),
        session_affinity=SessionAffinity(),  # the default timeout
    )
    return svc, {svc.key: [Endpoint("10.180.0.3", 80)]}


def ep(ip: str, probability: float, share: float, chain: str) -> dict:
    return {"ip": ip, "port": 80, "protocol": "tcp", "probability": probability,
            "share": pytest.approx(share), "chain": chain}


# --- parsing kube-proxy's fixtures, every field --------------------------------------------


def test_iptables_fixture_every_field() -> None:
    (svc,) = parse_iptables_nat_rules(IPT_FIXTURE)
    assert (svc.namespace, svc.name, svc.name_source) == ("ns1", "svc1", "comment")
    (port,) = svc.ports
    assert port.to_dict() == {
        "port_name": "", "protocol": "tcp", "port": 80,
        "cluster_ips": ["172.30.1.1"], "external_ips": [], "load_balancer_ips": ["1.2.3.4"],
        "node_port": None,
        "service_chain": "KUBE-SVC-AQI2S6QIMU7PVVRP",
        "external_chain": "KUBE-EXT-AQI2S6QIMU7PVVRP",
        "local_chain": "KUBE-SVL-AQI2S6QIMU7PVVRP",
        "firewall_chain": None,
        "external_policy": "Local",
        "endpoints": [
            ep("10.0.1.1", 0.3333333333, 1 / 3, "KUBE-SEP-3JOIVZTXZZRGORX4"),
            ep("10.0.1.2", 0.5, 1 / 3, "KUBE-SEP-IO5XOSKPAXIFQXAJ"),
            ep("10.0.1.5", 1.0, 1 / 3, "KUBE-SEP-EQCHZ7S2PJ72OHAY"),
        ],
        "local_endpoints": [
            ep("10.0.1.1", 0.5, 0.5, "KUBE-SEP-3JOIVZTXZZRGORX4"),
            ep("10.0.1.2", 1.0, 0.5, "KUBE-SEP-IO5XOSKPAXIFQXAJ"),
        ],
        "no_endpoints": False,
        "reject_in": [], "no_local_endpoints": [], "drop_in": [],
        "session_affinity": {"type": "ClientIP", "timeout_seconds": 10800},
        # The traffic-policy fields (issue 14's other half), as this fixture has them:
        # cluster IP to KUBE-SVC, the LB IP to KUBE-EXT (externalTrafficPolicy Local),
        # kube-proxy's pod short-circuit from 10.0.0.0/8.
        "cluster_ip_chain": "KUBE-SVC-AQI2S6QIMU7PVVRP", "internal_policy": "Cluster",
        "load_balancer_chain": "KUBE-EXT-AQI2S6QIMU7PVVRP", "load_balancer_source_ranges": [],
        "pod_cidrs": ["10.0.0.0/8"],
        "entry_points": [
            {"kind": "cluster_ip", "addresses": ["172.30.1.1"],
             "chain": "KUBE-SVC-AQI2S6QIMU7PVVRP", "policy": "Cluster"},
            {"kind": "load_balancer_ip", "addresses": ["1.2.3.4"],
             "chain": "KUBE-EXT-AQI2S6QIMU7PVVRP", "policy": "Local"}],
    }


def test_nftables_fixture_every_field() -> None:
    (svc,) = parse_kube_proxy_table(NFT_FIXTURE)
    assert (svc.namespace, svc.name, svc.name_source) == ("ns5", "svc5", "chain-name")
    (port,) = svc.ports
    endpoint = "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    assert port.to_dict() == {
        "port_name": "p80", "protocol": "tcp", "port": 80,
        "cluster_ips": ["172.30.0.45"], "external_ips": [],
        # firewall-ips lists 5.6.7.8: a load-balancer IP with source ranges.
        "load_balancer_ips": ["5.6.7.8"],
        "node_port": 3002,
        "service_chain": "service-HVFWP5L3-ns5/svc5/tcp/p80",
        "external_chain": "external-HVFWP5L3-ns5/svc5/tcp/p80",
        "local_chain": None,
        "firewall_chain": "firewall-HVFWP5L3-ns5/svc5/tcp/p80",
        "external_policy": "Cluster",
        "endpoints": [ep("10.180.0.3", 1.0, 1.0, endpoint)],
        "local_endpoints": [],
        "no_endpoints": False,
        "reject_in": [], "no_local_endpoints": [], "drop_in": [],
        "session_affinity": {"type": "ClientIP", "timeout_seconds": 10800},
        # The traffic-policy fields: svc5's LB IP enters its firewall chain,
        # which admits 203.0.113.0/25 only.
        "cluster_ip_chain": "service-HVFWP5L3-ns5/svc5/tcp/p80", "internal_policy": "Cluster",
        "load_balancer_chain": "firewall-HVFWP5L3-ns5/svc5/tcp/p80",
        "load_balancer_source_ranges": ["203.0.113.0/25"], "pod_cidrs": [],
        "entry_points": [
            {"kind": "cluster_ip", "addresses": ["172.30.0.45"],
             "chain": "service-HVFWP5L3-ns5/svc5/tcp/p80", "policy": "Cluster"},
            {"kind": "load_balancer_ip", "addresses": ["5.6.7.8"],
             "chain": "firewall-HVFWP5L3-ns5/svc5/tcp/p80", "policy": "Cluster"},
            {"kind": "node_port", "addresses": [],
             "chain": "external-HVFWP5L3-ns5/svc5/tcp/p80", "policy": "Cluster"}],
    }
    table = read_nft(NFT_FIXTURE)
    affinity_set = "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    assert table.set_timeouts == {affinity_set: 10800}
    assert [r.updates_set for r in table.rules(endpoint)] == [None, affinity_set, None]


def test_only_the_affinity_service_has_affinity() -> None:
    overall = parse_iptables_nat_rules((DATA / "kube_proxy_overall_nat.txt").read_text())
    got = {s.full_name: s.ports[0].session_affinity for s in overall}
    assert got == {"ns1/svc1": None, "ns2/svc2": None, "ns3/svc3": None, "ns4/svc4": None,
                   "ns5/svc5": SessionAffinity(10800)}
    seed = (DATA / "kube_proxy_nft_seed_ruleset.txt").read_text()
    assert all(p.session_affinity is None for s in parse_kube_proxy_table(seed) for p in s.ports)


# --- rendering as kube-proxy writes it -------------------------------------------------------


def test_iptables_render_is_kube_proxys() -> None:
    svc, endpoints = ipt_scenario()
    rendered = render_nat_table([svc], endpoints, node_ips=["192.168.0.2"],
                                cluster_cidr="10.0.0.0/8", node_name=HOST,
                                random_fully=False, jump_rules=False)
    assert by_chain(rendered) == by_chain(IPT_FIXTURE)
    without = render_nat_table([Service(**{**svc.__dict__, "session_affinity": None})], endpoints,
                               node_ips=[], cluster_cidr="10.0.0.0/8", node_name=HOST)
    assert "recent" not in without


def test_nftables_render_is_kube_proxys() -> None:
    svc, endpoints = nft_scenario()
    rendered = render_kube_proxy_table([svc], endpoints, node_ips=["192.168.0.2"],
                                       cluster_cidr="10.0.0.0/8").splitlines()
    expected = [line for line in NFT_FIXTURE.splitlines()
                if line.startswith("add ") and "firewall" not in line]
    masq = "ip saddr != 10.0.0.0/8 jump mark-for-masquerade"
    for line in expected:
        # The release the renderer follows matches the port in this rule too.
        want = line.replace(f"172.30.0.45 {masq}", f"172.30.0.45 tcp dport 80 {masq}")
        assert want in rendered, want
    # kube-proxy's order: the set before the rules naming it, affinity before the split.
    at = {line: i for i, line in enumerate(rendered)}
    set_line = next(line for line in expected if line.startswith("add set"))
    lookup = next(line for line in expected if "ip saddr @affinity" in line)
    numgen = next(line for line in expected if "numgen" in line)
    assert at[set_line] < at[lookup] < at[numgen]
    (resolved,) = parse_kube_proxy_table("\n".join(rendered))
    assert resolved.ports[0].session_affinity == SessionAffinity(10800)


@pytest.mark.parametrize("timeout", [1, 60, 86400])
def test_timeouts_round_trip_in_both_modes(timeout: int) -> None:
    svc, endpoints = ipt_scenario()
    svc = Service(**{**svc.__dict__, "session_affinity": SessionAffinity(timeout)})
    nat = render_nat_table([svc], endpoints, node_ips=[], node_name=HOST)
    nft = render_kube_proxy_table([svc], endpoints, node_ips=[], node_name=HOST)
    assert f"--rcheck --seconds {timeout} --reap" in nat
    assert f"timeout {timeout}s ;" in nft
    for services in (parse_iptables_nat_rules(nat), parse_kube_proxy_table(nft)):
        assert services[0].ports[0].session_affinity == SessionAffinity(timeout)


def test_large_cluster_mode_drops_the_affinity_comments() -> None:
    svc, endpoints = ipt_scenario()
    text = render_nat_table([svc], endpoints, node_ips=[], node_name=HOST, large_cluster_mode=True)
    chain = naming.service_chain("ns1/svc1", "tcp")
    rcheck = [r for r in by_chain(text)[1][chain] if "--rcheck" in r]
    assert len(rcheck) == 3 and not any("--comment" in r for r in rcheck)
    assert parse_iptables_nat_rules(text)[0].ports[0].session_affinity == SessionAffinity(10800)


# --- the forms the kernel's tools print back --------------------------------------------------


def test_iptables_save_normalised_recent_rules() -> None:
    """iptables-save reorders `recent`'s options and adds --mask/--rsource."""
    text = IPT_FIXTURE.replace(
        "-m recent --name KUBE-SEP-3JOIVZTXZZRGORX4 --rcheck --seconds 10800 --reap",
        "-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-3JOIVZTXZZRGORX4 "
        "--mask 255.255.255.255 --rsource",
    )
    assert parse_iptables_nat_rules(text) == parse_iptables_nat_rules(IPT_FIXTURE)
    no_seconds = IPT_FIXTURE.replace("--seconds 10800 ", "")
    assert parse_iptables_nat_rules(no_seconds)[0].ports[0].session_affinity == SessionAffinity(None)


def test_nft_list_and_json_forms() -> None:
    name = "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    block = (f"table ip kube-proxy {{\n\tset {name} {{\n\t\ttype ipv4_addr\n\t\tsize 65535\n"
             "\t\tflags dynamic,timeout\n\t\ttimeout 3h\n"
             "\t\telements = { 203.0.113.7 timeout 3h expires 2h59m58s }\n\t}\n}\n")
    table = read_nft(block)
    assert table.set_timeouts == {name: 10800}
    assert [e.key for e in table.elements[name]] == [("203.0.113.7",)]
    doc = {"nftables": [
        {"table": {"family": "ip", "name": "kube-proxy"}},
        {"set": {"family": "ip", "table": "kube-proxy", "name": name, "type": "ipv4_addr",
                 "flags": ["timeout", "dynamic"], "timeout": 600}},
        {"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-X", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "@" + name}},
            {"goto": {"target": "endpoint-X"}}]}},
        {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-X", "expr": [
            {"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                     "set": "@" + name}}]}},
    ]}
    table = read_nft(json.dumps(doc))
    assert table.set_timeouts == {name: 600}
    assert table.rules("service-X")[0].saddr_in_set == name
    assert table.rules("endpoint-X")[0].updates_set == name
    assert [nft_seconds(t) for t in ("10800s", "3h", "2h59m58s", "1d", "1500ms", "3x", "")] == [
        10800, 10800, 10798, 86400, 1, None, None]


# --- the manifest ------------------------------------------------------------------------------

SPEC = "clusterIP: 10.96.0.50\nselector: {app: web}\nports: [{port: 80, targetPort: 8080}]\n"


def test_manifest_reads_session_affinity() -> None:
    plain = load(DEPLOYMENT, service(SPEC)).services[0]
    assert plain.session_affinity is None
    default = load(DEPLOYMENT, service(SPEC + "sessionAffinity: ClientIP")).services[0]
    assert default.session_affinity == SessionAffinity(10800)
    timed = load(DEPLOYMENT, service(
        SPEC + "sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}"
    )).services[0]
    assert timed.session_affinity == SessionAffinity(30)
    none = load(DEPLOYMENT, service(SPEC + "sessionAffinity: None")).services[0]
    assert none.session_affinity is None


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("sessionAffinity: Cookie", "spec.sessionAffinity 'Cookie' is not one of None, ClientIP"),
        ("sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}",
         "spec.sessionAffinityConfig is set but spec.sessionAffinity is None"),
        ("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
         "spec.sessionAffinityConfig.clientIP.timeoutSeconds 0 is out of range (1-86400)"),
        ("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}",
         "timeoutSeconds 86401 is out of range (1-86400)"),
        ("sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: '5'}}",
         "timeoutSeconds must be a number, not '5'"),
        ("sessionAffinity: ClientIP\nsessionAffinityConfig: [1]",
         "spec.sessionAffinityConfig must be a mapping, not a list"),
    ],
)
def test_manifest_affinity_errors(extra: str, problem: str) -> None:
    message = error_of(DEPLOYMENT, service(SPEC + extra))
    assert message.startswith("test.yaml: document 2 (Service web-svc): ")
    assert problem in message


# --- tracer services and the JSON model --------------------------------------------------------


def test_services_table_and_json() -> None:
    (svc,) = parse_iptables_nat_rules(IPT_FIXTURE)
    assert services_table([svc])[0]["affinity"] == "ClientIP 10800s"
    header, row = format_services_table([svc]).splitlines()
    assert "AFFINITY" in header.split() and "ClientIP 10800s" in row
    port = svc.ports[0]
    assert ResolvedServicePort.from_dict(json.loads(json.dumps(port.to_dict()))) == port
    old = {k: v for k, v in port.to_dict().items() if k != "session_affinity"}
    assert ResolvedServicePort.from_dict(old).session_affinity is None  # older captures
    assert SessionAffinity.from_dict({"type": "None"}) is None
    no_timeout = ResolvedServicePort(port_name="", protocol="tcp", port=80,
                                     session_affinity=SessionAffinity(None))
    assert services_table([type(svc)(None, "x", (no_timeout,))])[0]["affinity"] == (
        "ClientIP (no timeout)")
