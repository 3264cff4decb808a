"""The nat table renderer: a golden comparison with kube-proxy's own expected
output, then structure (probabilities, comments, large-cluster mode, policies)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer.errors import UsageError
from tracer.kube import naming
from tracer.kube.iptables_render import probability, render_nat_table
from tracer.kube.model import Endpoint, Manifest, Service, ServicePort

DATA = Path(__file__).parent / "data"
NODEPORTS_RULE = (
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
    'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
)


def svc(
    namespace: str,
    name: str,
    *,
    type: str = "ClusterIP",
    cluster_ip: str = "172.30.0.41",
    ports: tuple[ServicePort, ...] = (ServicePort("p80", "TCP", 80, 80),),
    external_ips: tuple[str, ...] = (),
    load_balancer_ips: tuple[str, ...] = (),
    policy: str = "Cluster",
) -> Service:
    return Service(
        namespace=namespace,
        name=name,
        type=type,
        cluster_ip=cluster_ip,
        external_ips=external_ips,
        ports=ports,
        selector=(("app", name),),
        external_traffic_policy=policy,
        load_balancer_ips=load_balancer_ips,
    )


def by_chain(text: str) -> tuple[set[str], dict[str, list[str]]]:
    """Chain declarations, and each chain's rules in order."""
    chains: set[str] = set()
    rules: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.add(line.split()[0][1:])
        elif line.startswith(("-A ", "-I ")):
            rules.setdefault(line.split()[1], []).append(line)
    return chains, rules


# --- golden: kube-proxy's TestOverallIPTablesRules ------------------------------------------


def overall_scenario() -> tuple[list[Service], dict[tuple[str, str], list[Endpoint]]]:
    """The services and endpoints of kube-proxy's TestOverallIPTablesRules
    (pkg/proxy/iptables/proxier_test.go), minus ns5/svc5, whose session
    affinity and loadBalancerSourceRanges the renderer does not model."""
    services = [
        svc("ns1", "svc1", cluster_ip="172.30.0.41"),
        svc(
            "ns2",
            "svc2",
            type="LoadBalancer",
            cluster_ip="172.30.0.42",
            ports=(ServicePort("p80", "TCP", 80, 80, node_port=3001),),
            external_ips=("192.168.99.22",),
            load_balancer_ips=("1.2.3.4",),
            policy="Local",
        ),
        svc(
            "ns3",
            "svc3",
            type="NodePort",
            cluster_ip="172.30.0.43",
            ports=(ServicePort("p80", "TCP", 80, 80, node_port=3003),),
        ),
        # type NodePort but no nodePort in the fixture: no KUBE-NODEPORTS rule.
        svc("ns4", "svc4", type="NodePort", cluster_ip="172.30.0.44",
            external_ips=("192.168.99.33",)),
        svc("ns6", "svc6", cluster_ip="172.30.0.46"),
    ]
    endpoints = {
        ("ns1", "svc1"): [Endpoint("10.180.0.1", 80)],
        # No node name: not local, so ns2's Local policy has no local endpoint.
        ("ns2", "svc2"): [Endpoint("10.180.0.2", 80)],
        ("ns3", "svc3"): [Endpoint("10.180.0.3", 80)],
        ("ns4", "svc4"): [
            Endpoint("10.180.0.4", 80),
            Endpoint("10.180.0.5", 80, node="test-hostname"),
        ],
    }
    return services, endpoints


def without_ns5(text: str) -> str:
    ns5 = ("ns5/", "NUKIZ6OKUXPJNT4C", "I77PXRDZVX7PMWMN")
    return "\n".join(line for line in text.splitlines() if not any(s in line for s in ns5))


def test_golden_kube_proxy_overall_rules() -> None:
    services, endpoints = overall_scenario()
    rendered = render_nat_table(
        services,
        endpoints,
        node_ips=["192.168.0.2"],
        cluster_cidr="10.0.0.0/8",  # the fake proxier's detect-local CIDR
        node_name="test-hostname",
        random_fully=False,  # the fake iptables has no --random-fully
        nfacct_localhost_nodeports=True,  # the fake proxier's nfacct counters exist
        jump_rules=False,  # kube-proxy's restore data has none
    )
    expected = without_ns5((DATA / "kube_proxy_overall_nat.txt").read_text())
    got_chains, got_rules = by_chain(rendered)
    want_chains, want_rules = by_chain(expected)
    assert got_chains == want_chains
    assert got_rules.keys() == want_rules.keys()
    # kube-proxy walks services in Go map order, so only per-chain order is
    # fixed -- except that the nodeports tail call must close KUBE-SERVICES.
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS"):
        assert sorted(got_rules.pop(chain)) == sorted(want_rules.pop(chain)), chain
    assert by_chain(rendered)[1]["KUBE-SERVICES"][-1] == NODEPORTS_RULE
    for chain, rules in want_rules.items():
        assert got_rules[chain] == rules, chain
    assert rendered.startswith("*nat\n") and rendered.endswith("COMMIT\n")


# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, []),
        (2, ["0.5000000000"]),
        (3, ["0.3333333333", "0.5000000000"]),
        (5, ["0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000"]),
    ],
)
def test_probabilities(n: int, expected: list[str]) -> None:
    endpoints = [Endpoint(f"10.217.120.{70 + i}", 80) for i in range(n)]
    text = render_nat_table([svc("ns", "web")], {("ns", "web"): endpoints}, node_ips=[])
    chain = naming.service_chain("ns/web:p80", "tcp")
    lb_rules = [r for r in by_chain(text)[1][chain] if "KUBE-SEP-" in r]
    assert len(lb_rules) == n
    assert re.findall(r"--probability (\S+)", "\n".join(lb_rules)) == expected
    assert "--probability" not in lb_rules[-1]  # the last one always matches
    assert probability(7) == "0.1428571429"  # Go's %0.10f rounding


def test_seed_rules_and_comments(seed_manifest: Manifest, seed_endpoints) -> None:
    text = render_nat_table(seed_manifest.services, seed_endpoints, node_ips=["192.168.64.57"])
    svc1 = naming.service_chain("default/nginx-demo-1", "tcp")
    ext1 = naming.external_chain("default/nginx-demo-1", "tcp")
    sep = naming.endpoint_chain("default/nginx-demo-1", "tcp", "10.217.120.72:80")
    lines = text.splitlines()
    for expected in [
        '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        '-A KUBE-SERVICES -m comment --comment "default/nginx-demo-1 cluster IP" -m tcp -p tcp '
        f"-d 10.96.88.88 --dport 8088 -j {svc1}",
        '-A KUBE-SERVICES -m comment --comment "default/nginx-demo-1 external IP" -m tcp -p tcp '
        f"-d 192.168.64.57 --dport 8088 -j {ext1}",
        f'-A {svc1} -m comment --comment "default/nginx-demo-1 cluster IP" -m tcp -p tcp '
        "-d 10.96.88.88 --dport 8088 ! -s 10.217.0.0/16 -j KUBE-MARK-MASQ",
        f'-A {ext1} -m comment --comment "masquerade traffic for default/nginx-demo-1 external '
        'destinations" -j KUBE-MARK-MASQ',
        f"-A {ext1} -j {svc1}",
        f'-A {svc1} -m comment --comment "default/nginx-demo-1 -> 10.217.120.72:80" '
        f"-m statistic --mode random --probability 0.5000000000 -j {sep}",
        f"-A {sep} -m comment --comment default/nginx-demo-1 -s 10.217.120.72 -j KUBE-MARK-MASQ",
        f"-A {sep} -m comment --comment default/nginx-demo-1 -m tcp -p tcp "
        "-j DNAT --to-destination 10.217.120.72:80",
        "-A KUBE-NODEPORTS -m comment --comment default/nginx-demo-2 -m tcp -p tcp --dport 30089 "
        f"-j {naming.external_chain('default/nginx-demo-2', 'tcp')}",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]:
        assert expected in lines, expected
    assert lines[-2] == NODEPORTS_RULE
    declared = [line for line in lines if line.startswith(":")]
    assert declared[:4] == [
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
    ]
    assert len(declared) == len(set(declared))


def test_large_cluster_mode_drops_only_endpoint_comments(seed_manifest, seed_endpoints) -> None:
    text = render_nat_table(
        seed_manifest.services, seed_endpoints, node_ips=[], large_cluster_mode=True
    )
    _, rules = by_chain(text)
    for chain, chain_rules in rules.items():
        if chain.startswith("KUBE-SEP-"):
            assert all("--comment" not in r for r in chain_rules)
        if chain.startswith("KUBE-SVC-"):
            masq, *lb = chain_rules
            assert '"default/nginx-demo-' in masq and "cluster IP" in masq
            assert all("--comment" not in r for r in lb)
    # KUBE-SERVICES, KUBE-NODEPORTS and KUBE-EXT keep theirs (kube-proxy only
    # drops what appendServiceCommentLocked adds).
    assert all("--comment" in r for r in rules["KUBE-SERVICES"])
    assert all("--comment" in r for r in rules["KUBE-NODEPORTS"])


@pytest.mark.parametrize(("count", "dropped"), [(1000, False), (1001, True)])
def test_large_cluster_mode_automatic_threshold(count: int, dropped: bool) -> None:
    endpoints = [Endpoint(f"10.{i // 250}.{i % 250}.1", 80) for i in range(count)]
    text = render_nat_table(
        [svc("ns", "big")], {("ns", "big"): endpoints}, node_ips=[], large_cluster_mode=None
    )
    sep_rules = [r for r in text.splitlines() if r.startswith("-A KUBE-SEP-")]
    assert len(sep_rules) == 2 * count
    assert all(("--comment" in r) != dropped for r in sep_rules)


def test_endpoint_order_readiness_and_duplicates() -> None:
    endpoints = [
        Endpoint("10.0.0.9", 80),
        Endpoint("10.0.0.10", 80),
        Endpoint("10.0.0.9", 80),  # the same address twice: one endpoint
        Endpoint("10.0.0.11", 80, ready=False),
    ]
    text = render_nat_table([svc("ns", "web")], {("ns", "web"): endpoints}, node_ips=[])
    dnats = re.findall(r"--to-destination (\S+)", text)
    # kube-proxy sorts endpoints by their "ip:port" string: 10.0.0.10 < 10.0.0.9.
    assert dnats == ["10.0.0.10:80", "10.0.0.9:80"]


def test_service_without_ready_endpoints_has_no_nat_rules() -> None:
    text = render_nat_table(
        [svc("ns", "web"), svc("ns", "idle", cluster_ip="172.30.0.50")],
        {
            ("ns", "web"): [Endpoint("10.0.0.1", 80)],
            ("ns", "idle"): [Endpoint("10.0.0.2", 80, ready=False)],
        },
        node_ips=[],
    )
    assert "ns/idle" not in text
    assert naming.service_chain("ns/idle:p80", "tcp") not in text


def test_external_traffic_policy_local() -> None:
    service = svc(
        "ns",
        "lb",
        type="NodePort",
        ports=(ServicePort("http", "TCP", 80, 8080, node_port=30080),),
        policy="Local",
    )
    endpoints = {
        ("ns", "lb"): [
            Endpoint("10.0.1.5", 8080, node="node-a"),
            Endpoint("10.0.2.5", 8080, node="node-b"),
        ]
    }
    text = render_nat_table([service], endpoints, node_ips=[], node_name="node-a")
    spn = "ns/lb:http"
    svc_chain = naming.service_chain(spn, "tcp")
    svl_chain = naming.service_local_chain(spn, "tcp")
    ext_chain = naming.external_chain(spn, "tcp")
    _, rules = by_chain(text)
    assert rules[ext_chain] == [
        f'-A {ext_chain} -m comment --comment "pod traffic for {spn} external destinations" '
        f"-s 10.217.0.0/16 -j {svc_chain}",
        f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {spn} external '
        'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {spn} external '
        f'destinations" -m addrtype --src-type LOCAL -j {svc_chain}',
        f"-A {ext_chain} -j {svl_chain}",
    ]
    local = naming.endpoint_chain(spn, "tcp", "10.0.1.5:8080")
    assert rules[svl_chain] == [
        f'-A {svl_chain} -m comment --comment "{spn} -> 10.0.1.5:8080" -j {local}'
    ]
    assert len([r for r in rules[svc_chain] if "KUBE-SEP-" in r]) == 2
    # On node B's view with no local endpoint, KUBE-EXT ends without a jump.
    text_c = render_nat_table([service], endpoints, node_ips=[], node_name="node-c")
    assert svl_chain not in text_c
    assert by_chain(text_c)[1][ext_chain][-1].endswith(f"-j {svc_chain}")


def test_multi_port_service_endpoints_follow_target_ports() -> None:
    service = svc(
        "ns",
        "multi",
        ports=(ServicePort("http", "TCP", 80, 8080), ServicePort("dns", "UDP", 53, 5353)),
    )
    endpoints = {("ns", "multi"): [Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.1", 5353)]}
    text = render_nat_table([service], endpoints, node_ips=[])
    assert "-m tcp -p tcp -j DNAT --to-destination 10.0.0.1:8080" in text
    assert "-m udp -p udp -j DNAT --to-destination 10.0.0.1:5353" in text
    assert "-m udp -p udp -d 172.30.0.41 --dport 53" in text


def test_nodeport_addresses_node_ips_and_no_localhost() -> None:
    text = render_nat_table(
        [svc("ns", "web")],
        {("ns", "web"): [Endpoint("10.0.0.1", 80)]},
        node_ips=["192.168.64.57", "192.168.64.99"],
        nodeport_addresses="node-ips",
    )
    tail = [r for r in text.splitlines() if r.endswith("-j KUBE-NODEPORTS")]
    assert [r.split(" -d ")[1] for r in tail] == [
        "192.168.64.57 -j KUBE-NODEPORTS",
        "192.168.64.99 -j KUBE-NODEPORTS",
    ]
    text = render_nat_table(
        [svc("ns", "web")], {("ns", "web"): [Endpoint("10.0.0.1", 80)]}, node_ips=[],
        localhost_nodeports=False,
    )
    assert "--dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in text


def test_options_without_cluster_cidr_and_jumps() -> None:
    text = render_nat_table(
        [svc("ns", "web")],
        {("ns", "web"): [Endpoint("10.0.0.1", 80)]},
        node_ips=[],
        cluster_cidr=None,
        jump_rules=False,
        random_fully=False,
    )
    assert "! -s" not in text
    assert "-I " not in text
    assert "--random-fully" not in text


def test_render_input_errors() -> None:
    with pytest.raises(UsageError, match="not an IPv4 address"):
        render_nat_table([svc("ns", "web")], {("ns", "web"): [Endpoint("nope", 80)]}, node_ips=[])
    with pytest.raises(UsageError, match="node IP"):
        render_nat_table([], {}, node_ips=["x"])
    with pytest.raises(UsageError, match="nodeport_addresses"):
        render_nat_table([], {}, node_ips=[], nodeport_addresses="some")
    named = svc(
        "ns", "m", ports=(ServicePort("a", "TCP", 80, "http"), ServicePort("b", "TCP", 81, 81))
    )
    with pytest.raises(UsageError, match="resolve it to a number"):
        render_nat_table([named], {("ns", "m"): [Endpoint("10.0.0.1", 80)]}, node_ips=[])
