"""Root tests: the rendered rules load with `iptables-restore --noflush` into a
private network namespace, on both iptables backends, and parse back from the
real `iptables-save` output to the same services.

Every command runs inside the throwaway namespace (`ip netns exec`, or
tracer.netns.entered for the calling thread); the namespace the tests run in
is never modified."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tracer import cli as cli_module
from tracer import netns
from tracer.kube.iptables_parse import ResolvedService, parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.iptables_table import read_nat_table
from tracer.kube.model import Endpoint, Manifest, Service, ServicePort
from tracer.kube.rules_source import read_kube_proxy_rules

pytestmark = pytest.mark.root

BACKENDS = {
    "nft": ("iptables-restore", "iptables-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy-save"),
}


def restore(namespace: str, backend: str, text: str) -> None:
    program = BACKENDS[backend][0]
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, program, "--noflush"],
        input=text,
        text=True,
        capture_output=True,
    )
    assert proc.returncode == 0, f"{program} refused the rules: {proc.stderr}"


def save(namespace: str, backend: str, *extra: str) -> str:
    program = BACKENDS[backend][1]
    return subprocess.run(
        ["ip", "netns", "exec", namespace, program, "-t", "nat", *extra],
        text=True,
        capture_output=True,
        check=True,
    ).stdout


def comparable(services: list[ResolvedService]) -> list[dict[str, Any]]:
    """to_dict with probabilities rounded: xt_statistic keeps the probability
    as a 32-bit fraction, so iptables-save prints 0.3333333333 back as
    0.33333333349."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 8)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    return [rounded(s.to_dict()) for s in services]


def seed_rules(manifest: Manifest, n: int = 3, **options: Any) -> str:
    endpoints = [Endpoint(f"10.217.{120 + i % 2}.{72 + i}", 80) for i in range(n)]
    return render_nat_table(
        manifest.services,
        {s.key: endpoints for s in manifest.services},
        node_ips=["192.168.64.57"],
        **options,
    )


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_seed_rules_load_and_parse_back(kube_netns: str, backend: str, seed_manifest) -> None:
    text = seed_rules(seed_manifest, 3)
    restore(kube_netns, backend, text)
    saved = save(kube_netns, backend)
    # iptables-save shows kube-proxy's MARK targets in their normalised form.
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in saved
    assert "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0" in saved
    assert "MASQUERADE --random-fully" in saved
    portals = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    assert f"-A PREROUTING {portals}" in saved and f"-A OUTPUT {portals}" in saved

    expected = comparable(parse_iptables_nat_rules(text))
    assert [s["name"] for s in expected] == ["nginx-demo-1", "nginx-demo-2"]
    assert comparable(parse_iptables_nat_rules(saved)) == expected
    with_counters = save(kube_netns, backend, "-c")
    assert "[0:0] -A KUBE-SERVICES" in with_counters
    assert comparable(parse_iptables_nat_rules(with_counters)) == expected

    # read_kube_proxy_rules, run inside the namespace, finds this backend's rules.
    with netns.entered(netns.resolve(kube_netns)):
        from_source = read_kube_proxy_rules()
    assert comparable(from_source.services) == expected
    assert from_source.source == BACKENDS[backend][1]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_large_cluster_mode_parses_back(kube_netns: str, backend: str, seed_manifest) -> None:
    text = seed_rules(seed_manifest, 2, large_cluster_mode=True)
    restore(kube_netns, backend, text)
    parsed = parse_iptables_nat_rules(save(kube_netns, backend))
    assert comparable(parsed) == comparable(parse_iptables_nat_rules(text))
    assert "-> " not in save(kube_netns, backend)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_rule_form_loads(kube_netns: str, backend: str) -> None:
    """Local policy (KUBE-SVL, --src-type LOCAL), load-balancer IPs, UDP and
    SCTP ports, node-ip NodePort rules, five-way balancing."""
    services = [
        Service(
            namespace="shop",
            name="front",
            type="LoadBalancer",
            cluster_ip="10.96.7.7",
            external_ips=("192.168.64.57",),
            ports=(
                ServicePort("http", "TCP", 80, 8080, node_port=30080),
                ServicePort("dns", "UDP", 53, 5353, node_port=30053),
                ServicePort("sig", "SCTP", 9999, 9999, node_port=30099),
            ),
            selector=(("app", "front"),),
            external_traffic_policy="Local",
            load_balancer_ips=("203.0.113.7",),
        )
    ]
    endpoints = {
        ("shop", "front"): [
            Endpoint(f"10.217.{120 + i % 2}.{10 + i}", port, node=f"node-{'ab'[i % 2]}")
            for i in range(5)
            for port in (8080, 5353, 9999)
        ]
    }
    text = render_nat_table(
        services,
        endpoints,
        node_ips=["192.168.64.57", "192.168.64.99"],
        node_name="node-a",
        nodeport_addresses="node-ips",
    )
    restore(kube_netns, backend, text)
    saved = save(kube_netns, backend)
    (resolved,) = parse_iptables_nat_rules(saved)
    assert comparable([resolved]) == comparable(parse_iptables_nat_rules(text))
    by_name = {p.port_name: p for p in resolved.ports}
    assert {name: p.protocol for name, p in by_name.items()} == {
        "http": "tcp",
        "dns": "udp",
        "sig": "sctp",
    }
    for port in resolved.ports:
        assert len(port.endpoints) == 5
        assert len(port.local_endpoints) == 3  # node-a has replicas 0, 2, 4
        assert port.external_policy == "Local"
        assert sum(e.share for e in port.endpoints) == pytest.approx(1.0)
        assert [e.share for e in port.endpoints] == pytest.approx([0.2] * 5, abs=1e-8)
    tail = [r for r in read_nat_table(saved).rules("KUBE-SERVICES") if r.target == "KUBE-NODEPORTS"]
    assert [r.get("-d") for r in tail] == ["192.168.64.57/32", "192.168.64.99/32"]


def test_resync_without_jump_rules(kube_netns: str, seed_manifest) -> None:
    """A second restore, as kube-proxy's sync does it (no jump rules), replaces
    the service chains' contents and leaves a single set of jumps."""
    restore(kube_netns, "nft", seed_rules(seed_manifest, 2))
    restore(kube_netns, "nft", seed_rules(seed_manifest, 4, jump_rules=False))
    saved = save(kube_netns, "nft")
    assert saved.count("-j KUBE-SERVICES") == 2  # PREROUTING and OUTPUT, once each
    for service in parse_iptables_nat_rules(saved):
        (port,) = service.ports
        assert len(port.endpoints) == 4


def test_services_command_in_netns(kube_netns: str, seed_manifest, capsys) -> None:
    restore(kube_netns, "nft", seed_rules(seed_manifest, 2))
    with pytest.raises(SystemExit) as info:
        cli_module.main(["services", "--netns", kube_netns, "--json"])
    assert info.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["namespace"], d["name"]) for d in data] == [
        ("default", "nginx-demo-1"),
        ("default", "nginx-demo-2"),
    ]
    assert data[0]["ports"][0]["external_ips"] == ["192.168.64.57"]
    assert data[1]["ports"][0]["node_port"] == 30089
    with pytest.raises(SystemExit):
        cli_module.main(["services", "--netns", kube_netns])
    table = capsys.readouterr().out
    assert "default/nginx-demo-1" in table and "10.96.88.88" in table
