"""Finding a service, the services table, choosing the iptables backend, and
the `tracer services` command (with stand-in iptables-save and nft programs)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from click.testing import CliRunner

from tracer import cli as cli_module
from tracer.errors import MissingPackageError, TracerError, UsageError
from tracer.kube import naming, rules_source
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint, Service, ServicePort
from tracer.kube.rules_source import (
    find_service,
    format_services_table,
    parse_kube_proxy_rules,
    read_kube_proxy_rules,
    services_table,
)


def make_service(namespace: str, name: str, ip: str) -> Service:
    return Service(
        namespace=namespace,
        name=name,
        type="ClusterIP",
        cluster_ip=ip,
        external_ips=(),
        ports=(ServicePort("", "TCP", 80, 8080),),
        selector=(("app", name),),
    )


@pytest.fixture
def text() -> str:
    services = [
        make_service("default", "web", "10.96.0.10"),
        make_service("shop", "web", "10.96.0.11"),
        make_service("shop", "cart", "10.96.0.12"),
    ]
    endpoints = {s.key: [Endpoint("10.217.120.72", 8080), Endpoint("10.217.121.8", 8080)]
                 for s in services}
    return render_nat_table(services, endpoints, node_ips=[])


def test_find_service_by_name_namespace_and_chain(text: str) -> None:
    services = parse_kube_proxy_rules(text)
    assert find_service(services, "cart").full_name == "shop/cart"
    assert find_service(services, "shop/web").full_name == "shop/web"
    assert find_service(services, "default/web").full_name == "default/web"
    chain = naming.service_chain("shop/cart", "tcp")
    assert find_service(services, chain).full_name == "shop/cart"
    sep = naming.endpoint_chain("default/web", "tcp", "10.217.121.8:8080")
    assert find_service(services, sep).full_name == "default/web"


def test_find_service_errors(text: str) -> None:
    services = parse_kube_proxy_rules(text)
    with pytest.raises(UsageError) as info:
        find_service(services, "web")
    assert str(info.value) == (
        "service 'web' is ambiguous (default/web, shop/web); use NAMESPACE/NAME"
    )
    with pytest.raises(UsageError) as info:
        find_service(services, "nginx")
    assert str(info.value) == (
        "no service 'nginx' in the kube-proxy rules "
        "(services: default/web, shop/cart, shop/web)"
    )
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match=r"\(no kube-proxy services found\)"):
        find_service([], "web")
    with pytest.raises(UsageError):
        find_service(services, "KUBE-SVC-AAAAAAAAAAAAAAAA")


def test_find_service_named_by_chain(text: str) -> None:
    stripped = re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text)
    services = parse_kube_proxy_rules(stripped)
    chain = naming.service_chain("shop/cart", "tcp")
    found = find_service(services, chain)
    assert (found.name, found.name_source) == (chain, "chain")


def test_services_table(text: str) -> None:
    rows = services_table(parse_kube_proxy_rules(text))
    assert rows[0] == {
        "service": "default/web",
        "port": "80/tcp",
        "cluster_ip": "10.96.0.10",
        "external_ips": "-",
        "node_port": "-",
        "endpoints": "10.217.120.72:8080(50%) 10.217.121.8:8080(50%)",
        "affinity": "-",
        "chain": naming.service_chain("default/web", "tcp"),
        "policy": "internal Cluster",
    }
    table = format_services_table(parse_kube_proxy_rules(text))
    header, *lines = table.splitlines()
    assert header.split() == [
        "SERVICE", "PORT", "CLUSTER-IP", "EXTERNAL-IP", "NODE-PORT", "ENDPOINTS", "(share)", "AFFINITY",
        "CHAIN", "POLICY",
    ]
    assert len(lines) == 3
    assert format_services_table([]) == (
        "no kube-proxy services in this network namespace's rules (iptables nat or nftables)"
    )


# --- read_kube_proxy_rules with stand-in programs -----------------------------------------


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


def test_read_kube_proxy_rules_picks_the_backend_with_kube_services(monkeypatch, text: str) -> None:
    empty = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
    calls = fake_programs(
        monkeypatch, {"iptables-save": (0, empty), "iptables-legacy-save": (0, text)}
    )
    rules = read_kube_proxy_rules()
    assert (rules.text, rules.source) == (text, "iptables-legacy-save")
    assert [s.name for s in rules.services] == ["web", "cart", "web"]
    assert calls == [["iptables-save", "-t", "nat"], ["iptables-save", "-t", "filter"],
                     ["iptables-legacy-save", "-t", "nat"], ["iptables-legacy-save", "-t", "filter"]]
    fake_programs(monkeypatch, {"iptables-save": (0, text), "iptables-legacy-save": (0, empty)})
    rules = read_kube_proxy_rules()
    assert (rules.text, rules.source) == (text, "iptables-save")


def test_read_kube_proxy_rules_without_kube_proxy_returns_the_text(monkeypatch) -> None:
    empty = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
    fake_programs(monkeypatch, {"iptables-save": (0, empty)})
    rules = read_kube_proxy_rules()
    assert rules.text == empty
    assert rules.services == []


def test_read_kube_proxy_rules_errors(monkeypatch) -> None:
    fake_programs(monkeypatch, {})
    with pytest.raises(MissingPackageError, match="iptables"):
        read_kube_proxy_rules()
    fake_programs(monkeypatch, {"iptables-save": (1, "iptables-save: table gone")})
    monkeypatch.setattr(rules_source.os, "geteuid", lambda: 0)
    with pytest.raises(TracerError, match="iptables-save: table gone"):
        read_kube_proxy_rules()
    # One backend failing is fine when the other answers.
    fake_programs(
        monkeypatch,
        {"iptables-save": (1, "broken"), "iptables-legacy-save": (0, "*nat\nCOMMIT\n")},
    )
    assert read_kube_proxy_rules().text == "*nat\nCOMMIT\n"


# --- the command ------------------------------------------------------------------------


def test_services_command(monkeypatch, text: str) -> None:
    fake_programs(monkeypatch, {"iptables-save": (0, text)})
    runner = CliRunner()
    result = runner.invoke(cli_module.cli, ["services", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["name"] for d in data] == ["web", "cart", "web"]
    assert data[0]["ports"][0]["cluster_ips"] == ["10.96.0.10"]
    result = runner.invoke(cli_module.cli, ["services"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].startswith("SERVICE")
    assert "shop/cart" in result.output


def test_services_command_unknown_netns(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli_module.main(["services", "--netns", "tracer-test-no-such-netns"])
    assert info.value.code == 2
    assert "no network namespace 'tracer-test-no-such-netns'" in capsys.readouterr().err
