"""A Service without ready endpoints, as kube-proxy writes it (filter-table
REJECTs in iptables mode, no-endpoint-* map elements in nftables mode): the
renderers write exactly that, the parsers find it as a Service with no
endpoints, `tracer services` lists it so, `--svc` finds it, and the capture's
service keys are its frontends."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from click.testing import CliRunner

from tracer import cli as cli_module
from tracer.capture.abi import ROLE_FRONTEND
from tracer.capture.service_filter import service_keys
from tracer.kube import rules_source
from tracer.kube.iptables_filter import render_filter_table
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint, Service, ServicePort
from tracer.kube.nftables_parse import parse_kube_proxy_table
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.rules_source import find_service, format_services_table, services_table

DATA = Path(__file__).parent / "data"
# `iptables-nft-save` (both tables) and `nft list table ip kube-proxy` of a
# private namespace holding the rendered rules of the shipped manifest with
# default/nginx-demo-1 without endpoints and default/nginx-demo-2 with two.
IPTABLES_SAVE = (DATA / "kube_proxy_no_endpoints.txt").read_text()
NFT_LIST = (DATA / "kube_proxy_nft_no_endpoints.txt").read_text()
TWO = {("default", "nginx-demo-2"): [Endpoint("10.217.120.72", 80, node="node-a"),
                                     Endpoint("10.217.121.8", 80, node="node-b")]}

# What kube-proxy writes for nginx-demo-1 without endpoints, in its own
# argument order (pkg/proxy/iptables/proxier.go, pkg/proxy/nftables/proxier.go).
IPTABLES_REJECTS = [
    '-A KUBE-SERVICES -m comment --comment "default/nginx-demo-1 has no endpoints" '
    "-m tcp -p tcp -d 10.96.88.88 --dport 8088 -j REJECT",
    '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/nginx-demo-1 has no endpoints" '
    "-m tcp -p tcp -d 192.168.64.57 --dport 8088 -j REJECT",
]
NFT_REJECTS = [
    "add element ip kube-proxy cluster-ips { 10.96.88.88 }",
    'add element ip kube-proxy no-endpoint-services { 10.96.88.88 . tcp . 8088 '
    'comment "default/nginx-demo-1" : goto reject-chain }',
    'add element ip kube-proxy no-endpoint-services { 192.168.64.57 . tcp . 8088 '
    'comment "default/nginx-demo-1" : goto reject-chain }',
]


def test_iptables_render_rejects_in_the_filter_table_and_writes_no_nat(seed_manifest) -> None:
    filter_text = render_filter_table(seed_manifest.services, TWO)
    rejects = [line for line in filter_text.splitlines() if line.endswith("-j REJECT")]
    assert rejects == IPTABLES_REJECTS
    nat = render_nat_table(seed_manifest.services, TWO, node_ips=["192.168.64.57"])
    assert "nginx-demo-1" not in nat and "default/nginx-demo-2 cluster IP" in nat
    # With endpoints, no REJECT at all.
    healthy = render_filter_table(seed_manifest.services,
                                  {s.key: TWO[("default", "nginx-demo-2")]
                                   for s in seed_manifest.services})
    assert "REJECT" not in healthy and "-A KUBE-FORWARD" in healthy


def test_iptables_render_node_port_and_local_policy_drop() -> None:
    services = [LOCAL_NODEPORT]
    text = render_filter_table(services, {})
    assert ('-A KUBE-EXTERNAL-SERVICES -m comment --comment "shop/web:http has no endpoints" '
            "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT") in text
    # Endpoints only on another node, externalTrafficPolicy Local: external
    # traffic is dropped, the cluster IP works (no REJECT, no DROP for it).
    remote = {("shop", "web"): [Endpoint("10.217.121.8", 8080, node="node-b")]}
    text = render_filter_table(services, remote, node_name="node-a")
    assert [line for line in text.splitlines() if "shop/web" in line] == [
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "shop/web:http has no local endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"]
    # Not a Service without endpoints for the parser: one whose external
    # traffic is dropped here (tracer.kube.local_drops).
    (service,) = parse_iptables_nat_rules(text)
    (port,) = service.ports
    assert (service.full_name, service.no_endpoints, port.no_local_endpoints, port.drop_in,
            port.node_port, port.external_policy) == (
        "shop/web", False, ("external",), ("KUBE-EXTERNAL-SERVICES",), 30080, "Local")


def test_nftables_render_rejects_in_the_no_endpoint_map(seed_manifest) -> None:
    text = render_kube_proxy_table(seed_manifest.services, TWO, node_ips=["192.168.64.57"])
    lines = text.splitlines()
    assert [line for line in lines if "nginx-demo-1" in line or "10.96.88.88" in line] == NFT_REJECTS
    assert "add rule ip kube-proxy reject-chain reject" in lines
    counted = render_kube_proxy_table(seed_manifest.services, TWO, node_ips=["192.168.64.57"],
                                      endpoint_counters=True)
    assert "add rule ip kube-proxy reject-chain counter reject" in counted.splitlines()


def _check_found(services, reject_in) -> None:
    demo1, demo2 = services
    assert (demo1.full_name, demo1.no_endpoints, demo2.no_endpoints) == (
        "default/nginx-demo-1", True, False)
    (port,) = demo1.ports
    assert (port.port_name, port.protocol, port.port) == ("", "tcp", 8088)
    assert (port.cluster_ips, port.external_ips, port.node_port) == (
        ("10.96.88.88",), ("192.168.64.57",), None)
    assert (port.endpoints, port.local_endpoints, port.chains()) == ((), (), ())
    assert set(port.reject_in) == set(reject_in)
    assert [e.ip for e in demo2.ports[0].endpoints] == ["10.217.120.72", "10.217.121.8"]


def test_parsers_find_the_service_without_endpoints() -> None:
    _check_found(parse_iptables_nat_rules(IPTABLES_SAVE), ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"])
    _check_found(parse_kube_proxy_table(NFT_LIST), ["no-endpoint-services"])
    # The nat table alone (what was read before) has no trace of it.
    nat_only = IPTABLES_SAVE[IPTABLES_SAVE.index("*nat"):]
    assert [s.full_name for s in parse_iptables_nat_rules(nat_only)] == ["default/nginx-demo-2"]


def test_services_table_and_find_service() -> None:
    services = parse_iptables_nat_rules(IPTABLES_SAVE)
    row = services_table(services)[0]
    assert row == {"service": "default/nginx-demo-1", "port": "8088/tcp",
                   "cluster_ip": "10.96.88.88", "external_ips": "192.168.64.57",
                   "node_port": "-", "endpoints": "no endpoints (REJECT)",
                   "affinity": "-", "chain": "KUBE-SERVICES,KUBE-EXTERNAL-SERVICES", "policy": "-"}
    assert "no endpoints (REJECT)" in format_services_table(services).splitlines()[1]
    assert find_service(services, "nginx-demo-1").no_endpoints
    assert find_service(parse_kube_proxy_table(NFT_LIST), "default/nginx-demo-1").no_endpoints


def test_service_keys_are_the_frontends_only() -> None:
    (demo1, _) = parse_iptables_nat_rules(IPTABLES_SAVE)
    # The client's SYN to the VIP or external IP, and the ICMP port
    # unreachable the REJECT sends back (which quotes that tuple), are keyed
    # by the frontends; there is no endpoint to key.
    assert service_keys(demo1, ["127.0.0.1", "192.168.64.57"]) == {
        ("10.96.88.88", 8088, 6): ROLE_FRONTEND,
        ("192.168.64.57", 8088, 6): ROLE_FRONTEND,
    }


def test_services_command_shows_no_endpoints(monkeypatch) -> None:
    nat = IPTABLES_SAVE[IPTABLES_SAVE.index("# Generated", 10):]
    filt = IPTABLES_SAVE[: IPTABLES_SAVE.index("# Generated", 10)]

    def fake_run(cmd, **kwargs):
        out = filt if cmd[1:] == ["-t", "filter"] else nat
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(rules_source, "_find", lambda p: p if p == "iptables-save" else None)
    monkeypatch.setattr(rules_source, "run", fake_run)
    runner = CliRunner()
    result = runner.invoke(cli_module.cli, ["services", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(d["name"], d["ports"][0]["no_endpoints"]) for d in data] == [
        ("nginx-demo-1", True), ("nginx-demo-2", False)]
    assert data[0]["ports"][0]["reject_in"] == ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
    result = runner.invoke(cli_module.cli, ["services"])
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.startswith("default/nginx-demo-1"))
    assert "no endpoints (REJECT)" in line and "10.96.88.88" in line


LOCAL_NODEPORT = Service(
    namespace="shop", name="web", type="NodePort", cluster_ip="10.96.10.10", external_ips=(),
    ports=(ServicePort("http", "TCP", 80, 8080, node_port=30080),), selector=(("app", "web"),),
    external_traffic_policy="Local")
