"""kube-proxy's nftables mode without root: render -> parse round trips, the
same Services as iptables mode resolves from the same input, the three text
forms nft gives (JSON, `nft list`, the knftables transaction), and
rules_source picking the nftables table with stand-in programs.

Fixtures kube_proxy_nft_seed.json and kube_proxy_nft_seed_ruleset.txt are
what the kernel gave back (`nft -j list table ip kube-proxy`, `nft list
ruleset`, nft 1.0.6, kernel 6.18) after `nft -f` of
render_kube_proxy_table(shipped manifest, pods 10.217.120.72 and 10.217.121.8,
node-a) in a private namespace (see test_kube_nftables_root.py, which
regenerates and compares them)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from tests.kube.conftest import SEED_ENDPOINTS
from tracer.errors import TracerError, UsageError
from tracer.kube import naming, rules_source
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.manifest import parse_manifest
from tracer.kube.model import Endpoint, Manifest
from tracer.kube.nftables_parse import parse_chain_base, parse_kube_proxy_table, read_nft
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.nftables_table import NftablesParseError, looks_like_nft
from tracer.kube.resolved import ResolvedService
from tracer.kube.rules_source import find_service, parse_kube_proxy_rules, read_kube_proxy_rules

DATA = Path(__file__).parent / "data"
SEED_JSON = (DATA / "kube_proxy_nft_seed.json").read_text()
SEED_RULESET = (DATA / "kube_proxy_nft_seed_ruleset.txt").read_text()

LOCAL_AND_MULTIPORT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: nginx
          ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9100}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.10.10
  externalTrafficPolicy: Local
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080}
    - {name: metrics, port: 9100, targetPort: 9100, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 10.96.10.11
  selector: {app: web}
  ports: [{port: 53, protocol: UDP}]
"""


def seed_nft(manifest: Manifest, n: int = 2, **options) -> str:
    endpoints = [Endpoint(f"10.217.{120 + i % 2}.{72 + i}", 80, node=f"node-{'ab'[i % 2]}")
                 for i in range(n)]
    return render_kube_proxy_table(
        manifest.services,
        {s.key: endpoints for s in manifest.services},
        node_ips=["192.168.64.57"],
        node_name="node-a",
        **options,
    )


def without_chains(services: list[ResolvedService]) -> list[dict]:
    """to_dict minus what differs between the modes by design: chain names,
    the iptables rule probabilities, where the name came from."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if not k.endswith("chain") and k not in ("probability", "name_source")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, float):
            return round(value, 9)
        return value

    return [strip(s.to_dict()) for s in services]


# --- render -> parse -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_seed_round_trip(seed_manifest: Manifest, n: int) -> None:
    services = parse_kube_proxy_table(seed_nft(seed_manifest, n))
    assert [s.full_name for s in services] == ["default/nginx-demo-1", "default/nginx-demo-2"]
    assert {s.name_source for s in services} == {"chain-name"}
    demo1, demo2 = services
    (p1,) = demo1.ports
    assert (p1.port_name, p1.protocol, p1.port, p1.node_port) == ("", "tcp", 8088, None)
    assert p1.cluster_ips == ("10.96.88.88",) and p1.external_ips == ("192.168.64.57",)
    assert p1.service_chain == naming.nft_service_chain("default", "nginx-demo-1", "tcp", "")
    assert p1.external_chain == naming.nft_external_chain("default", "nginx-demo-1", "tcp", "")
    assert p1.external_policy == "Cluster"
    (p2,) = demo2.ports
    assert (p2.port, p2.node_port, p2.cluster_ips, p2.external_ips) == (
        8089, 30089, ("10.96.88.89",), ())
    for service in services:
        (port,) = service.ports
        assert len(port.endpoints) == n
        assert [e.share for e in port.endpoints] == pytest.approx([1 / n] * n)
        for e in port.endpoints:
            assert e.chain == naming.nft_endpoint_chain(
                "default", service.name, "tcp", "", e.ip, e.port)


@pytest.mark.parametrize("n", [1, 2, 3, 11])
def test_same_services_as_iptables_mode(seed_manifest: Manifest, n: int) -> None:
    """The two modes' rules for the same Services and pods resolve to the same
    addresses, endpoints and shares (endpoint order: both sort by "ip:port")."""
    endpoints = [Endpoint(f"10.217.{120 + i % 2}.{72 + i}", 80) for i in range(n)]
    eps = {s.key: endpoints for s in seed_manifest.services}
    nft = parse_kube_proxy_table(render_kube_proxy_table(
        seed_manifest.services, eps, node_ips=["192.168.64.57"]))
    ipt = parse_iptables_nat_rules(render_nat_table(
        seed_manifest.services, eps, node_ips=["192.168.64.57"]))
    assert without_chains(nft) == without_chains(ipt)


def test_local_policy_multiport_and_no_endpoints() -> None:
    manifest = parse_manifest(LOCAL_AND_MULTIPORT)
    pods = [Endpoint("10.217.120.72", 8080, node="node-a"), Endpoint("10.217.121.8", 8080, node="node-b"),
            Endpoint("10.217.120.73", 8080, node="node-a")]
    metrics = [Endpoint(e.ip, 9100, node=e.node) for e in pods]
    eps = {("shop", "web"): pods + metrics, ("shop", "empty"): []}
    text = render_kube_proxy_table(manifest.services, eps, node_ips=["192.168.64.57"],
                                   node_name="node-a")
    # shop/empty is given no endpoints (as if its pods were not ready): it only
    # gets a reject element, as kube-proxy writes it, and no NAT; it resolves
    # as a Service with no endpoints, rejected by that map (as in iptables mode
    # from the filter table).
    assert 'no-endpoint-services { 10.96.10.11 . udp . 53 comment "shop/empty" : goto reject-chain }' in text
    assert "service-ips { 10.96.10.11 " not in text
    empty, web = parse_kube_proxy_table(text)
    assert empty.full_name == "shop/empty" and empty.no_endpoints and not web.no_endpoints
    (dns,) = empty.ports
    assert (dns.protocol, dns.port, dns.cluster_ips, dns.endpoints, dns.chains()) == (
        "udp", 53, ("10.96.10.11",), (), ())
    assert dns.no_endpoints and dns.reject_in == ("no-endpoint-services",)
    http, metrics_port = sorted(web.ports, key=lambda p: p.port_name or "")
    assert (http.port_name, http.port, http.node_port) == ("http", 80, 30080)
    assert http.external_policy == "Local"
    assert http.local_chain == naming.nft_local_chain("shop", "web", "tcp", "http")
    # Cluster choice: all three pods; Local choice (external traffic): node-a's two.
    assert [e.ip for e in http.endpoints] == ["10.217.120.72", "10.217.120.73", "10.217.121.8"]
    assert [e.ip for e in http.local_endpoints] == ["10.217.120.72", "10.217.120.73"]
    assert [e.share for e in http.local_endpoints] == [0.5, 0.5]
    assert {e.port for e in http.endpoints} == {8080}
    # A NodePort port without nodePort gets one allocated (tracer.kube.manifest).
    assert (metrics_port.port_name, metrics_port.port) == ("metrics", 9100)
    assert metrics_port.node_port is not None
    assert {e.port for e in metrics_port.endpoints} == {9100}
    # Same Services as iptables mode resolves from the same input.
    ipt = parse_iptables_nat_rules(render_nat_table(
        manifest.services, eps, node_ips=["192.168.64.57"], node_name="node-a"))
    assert without_chains([web]) == without_chains(ipt)


def test_local_policy_without_local_endpoints_drops_external_traffic() -> None:
    manifest = parse_manifest(LOCAL_AND_MULTIPORT)
    pods = [Endpoint("10.217.121.8", 8080, node="node-b")]
    text = render_kube_proxy_table(manifest.services, {("shop", "web"): pods},
                                   node_ips=["192.168.64.57"], node_name="node-a")
    assert "no-endpoint-nodeports { tcp . 30080 comment \"shop/web:http\" : drop }" in text
    # A `drop` element (no local endpoint) is no Service without endpoints;
    # shop/empty, given none at all, is one.
    empty, web = parse_kube_proxy_table(text)
    assert empty.no_endpoints and not web.no_endpoints
    http = next(p for p in web.ports if p.port_name == "http")
    assert not http.no_endpoints and http.reject_in == ()
    assert http.local_endpoints == () and [e.ip for e in http.endpoints] == ["10.217.121.8"]
    assert http.external_policy == "Local"


def test_endpoint_counters_and_replace_table(seed_manifest: Manifest) -> None:
    plain = seed_nft(seed_manifest)
    counted = seed_nft(seed_manifest, endpoint_counters=True, replace_table=True)
    assert "counter" not in plain  # kube-proxy writes none
    assert counted.count("counter dnat to") == 4
    assert counted.splitlines()[:2] == ["add table ip kube-proxy", "delete table ip kube-proxy"]
    assert parse_kube_proxy_table(counted) == parse_kube_proxy_table(plain)


def test_render_follows_kube_proxy_layout(seed_manifest: Manifest) -> None:
    text = seed_nft(seed_manifest)
    lines = text.splitlines()
    assert lines[0] == 'add table ip kube-proxy { comment "rules for kube-proxy" ; }'
    assert "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }" in lines
    assert "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }" in lines
    assert "add rule ip kube-proxy nat-prerouting jump services" in lines
    assert "add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check" in lines
    assert "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x004000" in lines
    assert "add rule ip kube-proxy masquerading masquerade fully-random" in lines
    assert ("add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 "
            "meta l4proto . th dport vmap @service-nodeports") in lines
    chain = naming.nft_service_chain("default", "nginx-demo-1", "tcp", "")
    assert (f"add rule ip kube-proxy {chain} ip daddr 10.96.88.88 tcp dport 8088 "
            "ip saddr != 10.217.0.0/16 jump mark-for-masquerade") in lines
    numgen = [line for line in lines if line.startswith(f"add rule ip kube-proxy {chain} numgen")]
    assert len(numgen) == 1 and "numgen random mod 2 vmap { 0 : goto endpoint-" in numgen[0]
    # --nodeport-addresses given: the nodeport-ips set instead of fib daddr type local.
    by_ip = seed_nft(seed_manifest, nodeport_addresses="node-ips")
    assert "add element ip kube-proxy nodeport-ips { 192.168.64.57 }" in by_ip
    assert "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in by_ip
    with pytest.raises(UsageError, match="nodeport_addresses"):
        seed_nft(seed_manifest, nodeport_addresses="some")
    with pytest.raises(UsageError, match="cluster CIDR"):
        seed_nft(seed_manifest, cluster_cidr="10.217.0.0/33")


# --- what the kernel gives back ------------------------------------------------------------


def test_kernel_json_and_list_text_resolve_like_the_render(seed_manifest: Manifest) -> None:
    endpoints = {s.key: list(SEED_ENDPOINTS) for s in seed_manifest.services}
    rendered = parse_kube_proxy_table(render_kube_proxy_table(
        seed_manifest.services, endpoints, node_ips=["192.168.64.57"], node_name="node-a"))
    assert parse_kube_proxy_table(SEED_JSON) == rendered
    assert parse_kube_proxy_table(SEED_RULESET) == rendered
    # The two kernel forms read into the same table (rule text aside).
    a, b = read_nft(SEED_JSON), read_nft(SEED_RULESET)

    def facts(table):
        return {c: [dataclasses.replace(r, text="") for r in rules] for c, rules in table.chains.items()}

    assert facts(a) == facts(b) and a.elements == b.elements and a.exists and b.exists


def test_only_kube_proxys_table_is_read() -> None:
    other = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0;\n" \
            "\t\tip daddr 10.96.88.88 dnat to 1.2.3.4:80\n\t}\n}\n"
    assert parse_kube_proxy_table(other + SEED_RULESET) == parse_kube_proxy_table(SEED_RULESET)
    assert parse_kube_proxy_table(other) == []
    assert not read_nft(other).exists


def test_stale_chains_are_not_services() -> None:
    """kube-proxy flushes a removed service's chains and deletes them a second
    later; only what the maps reach counts."""
    doc = json.loads(SEED_JSON)
    doc["nftables"] = [i for i in doc["nftables"]
                       if not ("map" in i and i["map"]["name"] in ("service-ips", "service-nodeports"))]
    assert parse_kube_proxy_table(json.dumps(doc)) == []


def test_affinity_rules_do_not_change_the_split(seed_manifest: Manifest) -> None:
    chain = naming.nft_service_chain("default", "nginx-demo-1", "tcp", "")
    text = seed_nft(seed_manifest, 2)
    affinity = f"add rule ip kube-proxy {chain} ip saddr @affinity-X goto endpoint-X\n"
    before = parse_kube_proxy_table(text)
    assert parse_kube_proxy_table(affinity + text) == before


def test_text_forms_and_errors() -> None:
    assert looks_like_nft(SEED_JSON) and looks_like_nft(SEED_RULESET)
    assert looks_like_nft("add table ip kube-proxy\n")
    assert not looks_like_nft("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-NODEPORTS\nCOMMIT\n")
    with pytest.raises(NftablesParseError, match="JSON"):
        read_nft("{not json")
    with pytest.raises(NftablesParseError, match="nftables"):
        read_nft('{"something": []}')
    assert parse_kube_proxy_table("") == []


def test_chain_base_names() -> None:
    base = naming.nft_service_chain_base("shop", "web", "tcp", "http")
    assert parse_chain_base(base) == ("shop", "web", "tcp", "http")
    assert parse_chain_base(naming.nft_service_chain_base("default", "x", "udp", "")) == (
        "default", "x", "udp", "")
    assert parse_chain_base("ABCDEFGH-" + "a" * 300 + "...") is None


# --- finding a service; parse_kube_proxy_rules dispatches ----------------------------------


def test_find_service_by_nftables_chain(seed_manifest: Manifest) -> None:
    services = parse_kube_proxy_rules(seed_nft(seed_manifest))  # the capture session's call
    assert [s.full_name for s in services] == ["default/nginx-demo-1", "default/nginx-demo-2"]
    chain = naming.nft_external_chain("default", "nginx-demo-2", "tcp", "")
    assert find_service(services, chain).name == "nginx-demo-2"
    endpoint = services[0].ports[0].endpoints[1].chain
    assert find_service(services, endpoint).name == "nginx-demo-1"
    assert find_service(services, "nginx-demo-1").name == "nginx-demo-1"
    with pytest.raises(UsageError, match="no service 'service-nope'"):
        find_service(services, "service-nope")


def fake_programs(monkeypatch, outputs: dict[str, tuple[int, str]]) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        calls.append(list(cmd))
        # `-t filter` answers outputs["PROGRAM -t filter"], an empty table if not given.
        if cmd[1:] == ["-t", "filter"]:
            code, out = outputs.get(f"{cmd[0]} -t filter", (0, ""))
        else:
            code, out = outputs[cmd[0]]
        return subprocess.CompletedProcess(cmd, code, out if code == 0 else "", out)

    monkeypatch.setattr(rules_source, "_find", lambda p: p if p in outputs else None)
    monkeypatch.setattr(rules_source, "run", fake_run)
    return calls


EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"


def test_read_kube_proxy_rules_prefers_the_mode_with_services(monkeypatch, seed_manifest) -> None:
    calls = fake_programs(monkeypatch, {"iptables-save": (0, EMPTY_NAT), "nft": (0, SEED_JSON)})
    rules = read_kube_proxy_rules()
    assert rules.text == SEED_JSON
    assert (rules.source, len(rules.services)) == ("nft", 2)
    assert ["nft", "-j", "list", "table", "ip", "kube-proxy"] in calls
    # iptables mode with services and a leftover empty nft table: iptables.
    ipt = render_nat_table(seed_manifest.services, {}, node_ips=["192.168.64.57"])
    ipt_with = render_nat_table(
        seed_manifest.services,
        {s.key: [Endpoint("10.217.120.72", 80)] for s in seed_manifest.services},
        node_ips=["192.168.64.57"])
    empty_table = '{"nftables": [{"table": {"family": "ip", "name": "kube-proxy", "handle": 1}}]}'
    fake_programs(monkeypatch, {"iptables-save": (0, ipt_with), "nft": (0, empty_table)})
    rules = read_kube_proxy_rules()
    assert rules.text == ipt_with
    assert (rules.source, len(rules.services)) == ("iptables-save", 2)
    # Neither has services: the iptables text (the caller reports "no services").
    fake_programs(monkeypatch, {"iptables-save": (0, ipt), "nft": (0, empty_table)})
    rules = read_kube_proxy_rules()
    assert rules.text == ipt
    assert (rules.source, rules.services) == ("iptables-save", [])
    # No table ip kube-proxy is not an error.
    fake_programs(monkeypatch, {"iptables-save": (0, EMPTY_NAT),
                                "nft": (1, "Error: No such file or directory")})
    assert read_kube_proxy_rules().text == EMPTY_NAT
    # A node with nft only (no iptables at all) in nftables mode.
    fake_programs(monkeypatch, {"nft": (0, SEED_JSON)})
    assert [s.name for s in rules_source.read_kube_proxy_rules().services] == ["nginx-demo-1", "nginx-demo-2"]


def test_read_kube_proxy_rules_failures_name_both(monkeypatch) -> None:
    monkeypatch.setattr(rules_source.os, "geteuid", lambda: 0)
    fake_programs(monkeypatch, {"iptables-save": (1, "iptables gone"), "nft": (1, "Error: netlink busy")})
    with pytest.raises(TracerError, match=r"iptables gone.*nft: Error: netlink busy"):
        read_kube_proxy_rules()
