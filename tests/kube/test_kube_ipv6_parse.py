"""IPv6 and dual-stack rules: kube-proxy's own IPv6 expectations through both
parsers (every field), a dual-stack Service merged into one, the family of a
port through to_dict/from_dict (old IPv4 JSON unchanged and loadable), and
read_kube_proxy_rules / `tracer services` reading both families (stand-in
programs; tests/kube/test_kube_ipv6_root.py does it with the real ones)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracer import cli as cli_module
from tracer.errors import TracerError
from tracer.kube import rules_source
from tracer.kube.resolved import (
    ResolvedEndpoint,
    ResolvedService,
    ResolvedServicePort,
    address_family,
    merge_families,
)
from tracer.kube.rules_source import (
    find_service,
    format_services_table,
    parse_kube_proxy_rules,
    read_kube_proxy_rules,
    services_table,
)

DATA = Path(__file__).parent / "data"
IPT6 = (DATA / "kube_proxy_ipv6_localhost_nodeports.txt").read_text()
NFT6 = (DATA / "kube_proxy_nft_ipv6_nodeports.txt").read_text()
OVERALL_NAT = (DATA / "kube_proxy_overall_nat.txt").read_text()
NFT_SEED = (DATA / "kube_proxy_nft_seed_ruleset.txt").read_text()


def test_ip6tables_fixture_every_field() -> None:
    (service,) = parse_kube_proxy_rules(IPT6)
    assert (service.namespace, service.name, service.name_source) == ("ns1", "svc1", "comment")
    (port,) = service.ports
    assert port == ResolvedServicePort(
        port_name="p80", protocol="tcp", port=80,
        cluster_ips=("fd00:ab34::20",), node_port=30001,
        service_chain="KUBE-SVC-XPGD46QRK7WJZT7O", external_chain="KUBE-EXT-XPGD46QRK7WJZT7O",
        local_chain="KUBE-SVL-XPGD46QRK7WJZT7O", external_policy="Local",
        endpoints=(
            ResolvedEndpoint("ff06::c1", 80, "tcp", 0.5, 0.5, "KUBE-SEP-LIGRYQQLSZN4UWQ5"),
            ResolvedEndpoint("ff06::c2", 80, "tcp", 1.0, 0.5, "KUBE-SEP-XJJ5QXWGJG344QDZ"),
        ),
        local_endpoints=(
            ResolvedEndpoint("ff06::c2", 80, "tcp", 1.0, 1.0, "KUBE-SEP-XJJ5QXWGJG344QDZ"),
        ),
        cluster_ip_chain="KUBE-SVC-XPGD46QRK7WJZT7O", internal_policy="Cluster",
    )
    assert port.family == "ipv6"
    assert service.all_addresses() == [
        ("fd00:ab34::20", 80, "tcp"), (None, 30001, "tcp"),
        ("ff06::c1", 80, "tcp"), ("ff06::c2", 80, "tcp"),
    ]


def test_nft_ip6_table_every_field() -> None:
    # Before IPv6 the nft reader looked at table ip kube-proxy only: this
    # text resolved to no Service at all.
    (service,) = parse_kube_proxy_rules(NFT6)
    assert (service.namespace, service.name, service.name_source) == ("ns1", "svc1", "chain-name")
    (port,) = service.ports
    base = "ULMVA6XW-ns1/svc1/tcp/p80"
    ep1 = "endpoint-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80"
    ep2 = "endpoint-2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80"
    assert port == ResolvedServicePort(
        port_name="p80", protocol="tcp", port=80,
        cluster_ips=("fd00:172:30::41",), node_port=3001,
        service_chain="service-" + base, external_chain="external-" + base,
        external_policy="Cluster",
        endpoints=(
            ResolvedEndpoint("fd00:10:180::1", 80, "tcp", 0.5, 0.5, ep1),
            ResolvedEndpoint("fd00:10:180::2:1", 80, "tcp", 0.5, 0.5, ep2),
        ),
        cluster_ip_chain="service-" + base, internal_policy="Cluster",
    )
    assert port.family == "ipv6"
    assert find_service([service], ep2) is service


def test_nft_json_of_the_ip6_table() -> None:
    """`nft -j list table ip6 kube-proxy`: the JSON a node is read with."""
    doc = {"nftables": [
        {"table": {"family": "ip6", "name": "kube-proxy", "handle": 1}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": "service-X"}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": "endpoint-E"}},
        {"map": {"family": "ip6", "table": "kube-proxy", "name": "service-ips",
                 "elem": [[{"concat": ["fd00:96::10", "tcp", 80]}, {"goto": {"target": "service-X"}}]]}},
        {"rule": {"family": "ip6", "table": "kube-proxy", "chain": "service-X", "expr": [
            {"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": 0}},
                      "data": {"set": [[0, {"goto": {"target": "endpoint-E"}}]]}}}]}},
        {"rule": {"family": "ip6", "table": "kube-proxy", "chain": "endpoint-E", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"dnat": {"family": "ip6", "addr": "fd00:10::5", "port": 8080}}]}},
    ]}
    (service,) = parse_kube_proxy_rules(json.dumps(doc))
    (port,) = service.ports
    assert (port.cluster_ips, port.port, port.family) == (("fd00:96::10",), 80, "ipv6")
    assert [(e.ip, e.port, e.share) for e in port.endpoints] == [("fd00:10::5", 8080, 1.0)]


def test_dual_stack_service_is_one_service_with_a_port_per_family() -> None:
    ipv4 = parse_kube_proxy_rules(OVERALL_NAT)
    ipv6 = parse_kube_proxy_rules(IPT6)
    merged = merge_families(ipv4, ipv6)
    assert [s.full_name for s in merged] == [s.full_name for s in ipv4]  # ns1/svc1 is in both
    svc1 = find_service(merged, "ns1/svc1")
    assert [p.family for p in svc1.ports] == ["ipv4", "ipv6"]
    v4 = next(s for s in ipv4 if s.full_name == "ns1/svc1")
    assert svc1.ports == (*v4.ports, *ipv6[0].ports)
    # What --svc traces: both families' VIPs and endpoints at once.
    addresses = svc1.all_addresses()
    assert ("172.30.0.41", 80, "tcp") in addresses and ("fd00:ab34::20", 80, "tcp") in addresses
    assert ("10.180.0.1", 80, "tcp") in addresses and ("ff06::c2", 80, "tcp") in addresses
    # Each family's split still adds up to 1.
    for port in svc1.ports:
        assert sum(e.share for e in port.endpoints) == pytest.approx(1.0)
    # A Service of one family only is left as it was; the chain (shared
    # by both families in iptables mode) finds the merged Service.
    assert find_service(merged, "ns2/svc2") == next(s for s in ipv4 if s.full_name == "ns2/svc2")
    assert find_service(merged, "KUBE-SVC-XPGD46QRK7WJZT7O") is svc1
    # nft text with both tables (`nft list ruleset`): merged in one parse.
    both = parse_kube_proxy_rules(NFT6 + NFT_SEED)
    assert [s.full_name for s in both] == [
        "default/nginx-demo-1", "default/nginx-demo-2", "ns1/svc1"]


def test_family_round_trips_and_old_json_loads() -> None:
    (v6,) = parse_kube_proxy_rules(IPT6)
    data = json.loads(json.dumps(v6.to_dict()))
    assert data["ports"][0]["family"] == "ipv6"
    assert ResolvedService.from_dict(data) == v6
    v4 = parse_kube_proxy_rules(OVERALL_NAT)
    for service in v4:
        stored = json.loads(json.dumps(service.to_dict()))
        # An IPv4 port's dict is as before IPv6: no "family" key.
        assert all("family" not in p for p in stored["ports"])
        loaded = ResolvedService.from_dict(stored)
        assert loaded == service and {p.family for p in loaded.ports} == {"ipv4"}
    assert ResolvedServicePort(port_name=None, protocol="tcp", port=None).family == "ipv4"
    assert [address_family(a) for a in ("10.0.0.1", "fd00::/64", "::1", "10.0.0.0/8")] == [
        "ipv4", "ipv6", "ipv6", "ipv4"]


def test_services_table_shows_the_family_only_with_ipv6() -> None:
    merged = merge_families(parse_kube_proxy_rules(OVERALL_NAT), parse_kube_proxy_rules(IPT6))
    rows = [r for r in services_table(merged) if r["service"] == "ns1/svc1"]
    assert [(r["family"], r["cluster_ip"], r["endpoints"]) for r in rows] == [
        ("ipv4", "172.30.0.41", "10.180.0.1:80(100%)"),
        ("ipv6", "fd00:ab34::20", "[ff06::c1]:80(50%) [ff06::c2]:80(50%)"),
    ]
    header = format_services_table(merged).splitlines()[0].split()
    assert header[:3] == ["SERVICE", "PORT", "FAMILY"]
    ipv4_only = format_services_table(parse_kube_proxy_rules(OVERALL_NAT))
    assert "FAMILY" not in ipv4_only
    assert all("family" not in r for r in services_table(parse_kube_proxy_rules(OVERALL_NAT)))


# --- reading both families, with stand-in programs ------------------------------------------


def fake_node(monkeypatch, outputs: dict[str, tuple[int, str]]) -> list[list[str]]:
    """Programs by name ("iptables-save", "ip6tables-save", "nft ip", "nft
    ip6"); each answers (exit code, output) and `-t filter` an empty table."""
    calls: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        calls.append(list(cmd))
        if cmd[1:] == ["-t", "filter"]:
            code, out = 0, ""
        elif cmd[0] == "nft":
            code, out = outputs[f"nft {cmd[-2]}"]
        else:
            code, out = outputs[cmd[0]]
        return subprocess.CompletedProcess(cmd, code, out if code == 0 else "", out)

    present = {name.split()[0] for name in outputs}
    monkeypatch.setattr(rules_source, "_find", lambda p: p if p in present else None)
    monkeypatch.setattr(rules_source, "run", fake_run)
    return calls


EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
NO_TABLE = (1, "Error: No such file or directory")


def nft_json(text: str, family: str) -> str:
    """A stand-in for `nft -j list table FAMILY kube-proxy` holding the
    table that text (a transaction) builds: the JSON reader's input."""
    from tracer.kube.nftables_parse import read_nft

    table = read_nft(text, family)
    items: list[dict] = [{"table": {"family": family, "name": "kube-proxy", "handle": 1}}]
    for name, elements in table.elements.items():
        elems = []
        for e in elements:
            key = {"concat": list(e.key)} if len(e.key) > 1 else e.key[0]
            elems.append([key, {e.verdict: {"target": e.target}}] if e.verdict else key)
        items.append({"map": {"family": family, "table": "kube-proxy", "name": name, "elem": elems}})
    for chain, rules in table.chains.items():
        items.append({"chain": {"family": family, "table": "kube-proxy", "name": chain}})
        for rule in rules:
            expr: list[dict] = []
            if rule.numgen_mod:
                expr.append({"vmap": {"key": {"numgen": {"mode": "random", "mod": rule.numgen_mod}},
                                      "data": {"set": [[i, {"goto": {"target": t}}]
                                                       for i, t in rule.numgen_targets]}}})
            if rule.dnat_to:
                expr.append({"dnat": {"addr": rule.dnat_to[0], "port": rule.dnat_to[1]}})
            if rule.verdict in ("jump", "goto"):
                expr.append({rule.verdict: {"target": rule.target}})
            items.append({"rule": {"family": family, "table": "kube-proxy", "chain": chain,
                                   "expr": expr}})
    return json.dumps({"nftables": items})


def test_read_both_families_iptables_mode(monkeypatch) -> None:
    calls = fake_node(monkeypatch, {"iptables-save": (0, OVERALL_NAT), "ip6tables-save": (0, IPT6),
                                    "nft ip": NO_TABLE, "nft ip6": NO_TABLE})
    rules = read_kube_proxy_rules()
    assert ["ip6tables-save", "-t", "nat"] in calls and ["ip6tables-save", "-t", "filter"] in calls
    assert (rules.source, rules.text) == ("iptables-save", OVERALL_NAT)
    assert (rules.ipv6_source, rules.ipv6_text) == ("ip6tables-save", IPT6)
    svc1 = find_service(rules.services, "ns1/svc1")
    assert [p.family for p in svc1.ports] == ["ipv4", "ipv6"]


def test_read_both_families_nftables_mode(monkeypatch) -> None:
    v6_json = nft_json(NFT6, "ip6")
    calls = fake_node(monkeypatch, {"iptables-save": (0, EMPTY), "ip6tables-save": (0, EMPTY),
                                    "nft ip": NO_TABLE, "nft ip6": (0, v6_json)})
    rules = read_kube_proxy_rules()
    assert ["nft", "-j", "list", "table", "ip6", "kube-proxy"] in calls
    # IPv4 has iptables text without services; IPv6 is in nftables mode.
    assert (rules.source, rules.ipv6_source, rules.ipv6_text) == ("iptables-save", "nft", v6_json)
    (service,) = rules.services
    assert [(p.family, p.cluster_ips) for p in service.ports] == [("ipv6", ("fd00:172:30::41",))]
    # An nft answering the ip6 query with the ip table only (or an old
    # answer) has no ip6 table: not read as IPv6 rules.
    ip_only = '{"nftables": [{"table": {"family": "ip", "name": "kube-proxy", "handle": 1}}]}'
    fake_node(monkeypatch, {"iptables-save": (0, EMPTY), "nft ip": (0, ip_only), "nft ip6": (0, ip_only)})
    assert read_kube_proxy_rules().ipv6_text is None


def test_missing_ipv6_is_not_an_error_and_failures_name_both(monkeypatch) -> None:
    # No ip6tables-save and no table ip6 kube-proxy: the IPv4 rules as before.
    fake_node(monkeypatch, {"iptables-save": (0, OVERALL_NAT), "nft ip": NO_TABLE, "nft ip6": NO_TABLE})
    rules = read_kube_proxy_rules()
    assert (rules.source, rules.ipv6_source, rules.ipv6_text) == ("iptables-save", None, None)
    assert rules.services == parse_kube_proxy_rules(OVERALL_NAT)
    # A failing ip6tables-save while IPv4 reads: the IPv4 rules (as a
    # failing iptables-save is passed over when nft answers).
    fake_node(monkeypatch, {"iptables-save": (0, OVERALL_NAT), "ip6tables-save": (1, "ip6 gone"),
                            "nft ip": NO_TABLE, "nft ip6": NO_TABLE})
    assert read_kube_proxy_rules().services == parse_kube_proxy_rules(OVERALL_NAT)
    # An IPv6-only node whose IPv4 reading fails: the IPv6 rules.
    fake_node(monkeypatch, {"iptables-save": (1, "v4 gone"), "ip6tables-save": (0, IPT6),
                            "nft ip": NO_TABLE, "nft ip6": NO_TABLE})
    rules = read_kube_proxy_rules()
    assert (rules.source, rules.text, rules.ipv6_source) == ("ip6tables-save", IPT6, "ip6tables-save")
    # Nothing readable in either family: one line naming every failure.
    monkeypatch.setattr(rules_source.os, "geteuid", lambda: 0)
    fake_node(monkeypatch, {"iptables-save": (1, "v4 gone"), "ip6tables-save": (1, "ip6 gone"),
                            "nft ip": (1, "Error: netlink busy"), "nft ip6": (1, "Error: ip6 busy")})
    with pytest.raises(TracerError) as info:
        read_kube_proxy_rules()
    assert str(info.value) == (
        "cannot read kube-proxy's rules: iptables-save: v4 gone; nft: Error: netlink busy; "
        "ip6tables-save: ip6 gone; nft (ip6): Error: ip6 busy")


def test_services_command_shows_both_families(monkeypatch) -> None:
    fake_node(monkeypatch, {"iptables-save": (0, OVERALL_NAT), "ip6tables-save": (0, IPT6),
                            "nft ip": NO_TABLE, "nft ip6": NO_TABLE})
    runner = CliRunner()
    result = runner.invoke(cli_module.cli, ["services", "--json"])
    assert result.exit_code == 0, result.output
    svc1 = next(s for s in json.loads(result.output) if s["name"] == "svc1")
    assert [p.get("family", "ipv4") for p in svc1["ports"]] == ["ipv4", "ipv6"]
    assert svc1["ports"][1]["cluster_ips"] == ["fd00:ab34::20"]
    result = runner.invoke(cli_module.cli, ["services"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[0][:3] == ["SERVICE", "PORT", "FAMILY"]
    assert ["ns1/svc1", "p80:80/tcp", "ipv4", "172.30.0.41"] in [line[:4] for line in lines]
    assert ["ns1/svc1", "p80:80/tcp", "ipv6", "fd00:ab34::20"] in [line[:4] for line in lines]
