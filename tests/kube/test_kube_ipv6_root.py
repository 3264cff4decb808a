"""Root tests: a dual-stack Service's rules, rendered per family, load into a
private network namespace (ip6tables-restore / iptables-restore on both
backends, or `nft -f` for table ip kube-proxy and table ip6 kube-proxy); what
the real ip6tables-save, iptables-save and nft give back resolves, through
read_kube_proxy_rules and `tracer services --netns`, to one Service with both
families, as the rendered text does. Every command runs inside the throwaway
namespace; the namespace the tests run in is never modified."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.kube.test_kube_ipv6_render import dual_stack
from tracer import netns
from tracer.kube.iptables_filter import render_filter_table
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.resolved import ResolvedService, merge_families
from tracer.kube.rules_source import parse_kube_proxy_rules, read_kube_proxy_rules

pytestmark = pytest.mark.root

FAMILIES = (("ipv4", "10.217.0.0/16", "192.168.64.2", "10.96.0.0/12"),
            ("ipv6", "fd00:217::/64", "2001:db8::2", "fd00:96::/112"))
RESTORE = {("nft", "ipv4"): "iptables-restore", ("nft", "ipv6"): "ip6tables-restore",
           ("legacy", "ipv4"): "iptables-legacy-restore",
           ("legacy", "ipv6"): "ip6tables-legacy-restore"}
SAVE = {("nft", "ipv6"): "ip6tables-save", ("legacy", "ipv6"): "ip6tables-legacy-save"}


def in_netns(namespace: str, *cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", namespace, *cmd], input=stdin, text=True,
                          capture_output=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


def comparable(services: list[ResolvedService]) -> list[dict[str, Any]]:
    """to_dict with probabilities rounded (xt_statistic keeps 32 bits)."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value
    return [rounded(s.to_dict()) for s in services]


def rendered(mode: str) -> dict[str, str]:
    service, endpoints = dual_stack()
    out = {}
    for family, cidr, node_ip, service_cidr in FAMILIES:
        common = dict(node_ips=[node_ip], cluster_cidr=cidr, node_name="a", family=family)
        if mode == "nftables":
            out[family] = render_kube_proxy_table([service], endpoints,
                                                  service_cidrs=[service_cidr], **common)
        else:
            nat = render_nat_table([service], endpoints, **common)
            out[family] = render_filter_table([service], endpoints, node_name="a",
                                              family=family) + nat
    return out


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_ip6tables_round_trip(kube_netns: str, backend: str) -> None:
    texts = rendered("iptables")
    for family in ("ipv4", "ipv6"):
        in_netns(kube_netns, RESTORE[(backend, family)], "--noflush", stdin=texts[family])
    saved6 = in_netns(kube_netns, SAVE[(backend, "ipv6")], "-t", "nat") + in_netns(
        kube_netns, SAVE[(backend, "ipv6")], "-t", "filter")
    assert "--to-destination [fd00:217::5]:8080" in saved6
    assert parse_kube_proxy_rules(saved6)[0].ports[0].family == "ipv6"
    expected = merge_families(*(parse_kube_proxy_rules(texts[f]) for f in ("ipv4", "ipv6")))
    with netns.entered(f"/run/netns/{kube_netns}"):
        rules = read_kube_proxy_rules()
    assert rules.ipv6_source == SAVE[(backend, "ipv6")]
    assert comparable(rules.services) == comparable(expected)
    (web,) = rules.services
    assert [p.family for p in web.ports] == ["ipv4", "ipv6"]


def test_nft_ip6_table_round_trip_and_services_command(kube_netns: str) -> None:
    texts = rendered("nftables")
    for family in ("ipv4", "ipv6"):
        in_netns(kube_netns, "nft", "-f", "-", stdin=texts[family])
    as_json = in_netns(kube_netns, "nft", "-j", "list", "table", "ip6", "kube-proxy")
    as_text = in_netns(kube_netns, "nft", "list", "ruleset")
    ipv6 = parse_kube_proxy_rules(texts["ipv6"])
    assert parse_kube_proxy_rules(as_json) == ipv6
    expected = merge_families(parse_kube_proxy_rules(texts["ipv4"]), ipv6)
    assert parse_kube_proxy_rules(as_text) == expected
    with netns.entered(f"/run/netns/{kube_netns}"):
        rules = read_kube_proxy_rules()
    assert (rules.source, rules.ipv6_source) == ("nft", "nft")
    assert rules.services == expected
    proc = subprocess.run([sys.executable, "-m", "tracer", "services", "--netns", kube_netns,
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    (web,) = json.loads(proc.stdout)
    assert [(p.get("family", "ipv4"), p["cluster_ips"]) for p in web["ports"]] == [
        ("ipv4", ["10.96.0.20"]), ("ipv6", ["fd00:96::20"])]


def _rules_hash(netns: str) -> str:
    """The IPv6 nat rules' hash, without ip6tables-save's "# Generated ...
    on <time>" comments: two saves a second apart differ only there."""
    text = in_netns(netns, "ip6tables-save", "-t", "nat")
    kept = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return hashlib.sha256(kept.encode()).hexdigest()


def test_a_broken_ip6tables_save_is_one_line_and_changes_nothing(kube_netns: str, tmp_path) -> None:
    """With no IPv4 rules to fall back on, a failing ip6tables-save is
    reported with iptables-save's: one line, exit 1, no traceback; the
    namespace's rules are untouched."""
    texts = rendered("iptables")
    in_netns(kube_netns, "ip6tables-restore", "--noflush", stdin=texts["ipv6"])
    before = _rules_hash(kube_netns)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(mode=0o700)
    # Stand-ins ahead of the real programs: every save program fails, nft
    # has no kube-proxy table.
    for name in ("iptables-save", "iptables-legacy-save", "ip6tables-save", "ip6tables-legacy-save"):
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\necho '{name}: broken' >&2\nexit 1\n")
        fake.chmod(0o700)
    (bin_dir / "nft").write_text("#!/bin/sh\necho 'Error: No such file or directory' >&2\nexit 1\n")
    (bin_dir / "nft").chmod(0o700)
    path = f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"
    proc = subprocess.run(["ip", "netns", "exec", kube_netns, "env", f"PATH={path}",
                           sys.executable, "-m", "tracer", "services"],
                          capture_output=True, text=True, env={"PATH": path, "PYTHONPATH": _root()})
    after = _rules_hash(kube_netns)
    assert before == after
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracer: error: cannot read kube-proxy's rules")
    assert lines[0] == (
        "tracer: error: cannot read kube-proxy's rules: iptables-save: iptables-save: broken; "
        "iptables-legacy-save: iptables-legacy-save: broken; ip6tables-save: ip6tables-save: "
        "broken; ip6tables-legacy-save: ip6tables-legacy-save: broken")


def _root() -> str:
    from pathlib import Path
    return str(Path(__file__).resolve().parents[2])
