"""Root tests: kube-proxy's nftables transaction, as rendered, loads with
`nft -f` into a private network namespace; what the kernel gives back (JSON
and text) resolves to the same Services; `tracer services` finds them there
without being told the mode. Every command runs inside the throwaway
namespace; the namespace the tests run in is never modified."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube.conftest import SEED_ENDPOINTS
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint, Manifest
from tracer.kube.nftables_parse import parse_kube_proxy_table
from tracer.kube.nftables_render import render_kube_proxy_table

pytestmark = pytest.mark.root

DATA = Path(__file__).parent / "data"


def in_netns(namespace: str, *cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", namespace, *cmd], input=stdin, text=True,
                          capture_output=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


def seed_table(manifest: Manifest, **options) -> str:
    return render_kube_proxy_table(
        manifest.services,
        {s.key: list(SEED_ENDPOINTS) for s in manifest.services},
        node_ips=["192.168.64.57"],
        node_name="node-a",
        **options,
    )


def test_rendered_table_loads_and_reads_back(kube_netns: str, seed_manifest: Manifest) -> None:
    text = seed_table(seed_manifest)
    in_netns(kube_netns, "nft", "-f", "-", stdin=text)
    as_json = in_netns(kube_netns, "nft", "-j", "list", "table", "ip", "kube-proxy")
    as_text = in_netns(kube_netns, "nft", "list", "ruleset")
    expected = parse_kube_proxy_table(text)
    assert [s.full_name for s in expected] == ["default/nginx-demo-1", "default/nginx-demo-2"]
    assert parse_kube_proxy_table(as_json) == expected
    assert parse_kube_proxy_table(as_text) == expected
    # The stored fixtures the non-root tests read are exactly this.
    assert as_text == (DATA / "kube_proxy_nft_seed_ruleset.txt").read_text()
    assert parse_kube_proxy_table((DATA / "kube_proxy_nft_seed.json").read_text()) == expected
    # Loading again (kube-proxy's every-sync transaction, replace_table for the
    # lab's reload) is accepted and changes nothing.
    in_netns(kube_netns, "nft", "-f", "-", stdin=seed_table(seed_manifest, replace_table=True))
    again = in_netns(kube_netns, "nft", "list", "ruleset")
    assert again == as_text


def test_services_command_finds_the_nftables_table(kube_netns: str, seed_manifest: Manifest) -> None:
    in_netns(kube_netns, "nft", "-f", "-", stdin=seed_table(seed_manifest, endpoint_counters=True))
    proc = subprocess.run([sys.executable, "-m", "tracer", "services", "--netns", kube_netns, "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)
    assert [s["name"] for s in services] == ["nginx-demo-1", "nginx-demo-2"]
    port = services[0]["ports"][0]
    assert port["service_chain"].startswith("service-") and port["external_ips"] == ["192.168.64.57"]
    assert [e["share"] for e in port["endpoints"]] == [0.5, 0.5]
    table = subprocess.run([sys.executable, "-m", "tracer", "services", "--netns", kube_netns],
                           capture_output=True, text=True).stdout
    assert "10.217.120.72:80(50%)" in table and "service-" in table


def test_the_mode_with_more_services_wins(kube_netns: str, seed_manifest: Manifest) -> None:
    """A node changing modes can briefly hold both: the fuller one is read."""
    one = [s for s in seed_manifest.services if s.name == "nginx-demo-2"]
    ipt = render_nat_table(one, {s.key: [Endpoint("10.217.120.72", 80)] for s in one},
                           node_ips=["192.168.64.57"])
    in_netns(kube_netns, "iptables-nft-restore", "--noflush", stdin=ipt)
    run = [sys.executable, "-m", "tracer", "services", "--netns", kube_netns, "--json"]
    names = [s["name"] for s in json.loads(subprocess.run(run, capture_output=True, text=True).stdout)]
    assert names == ["nginx-demo-2"]
    in_netns(kube_netns, "nft", "-f", "-", stdin=seed_table(seed_manifest))
    both = json.loads(subprocess.run(run, capture_output=True, text=True).stdout)
    assert [s["name"] for s in both] == ["nginx-demo-1", "nginx-demo-2"]
    assert both[0]["ports"][0]["service_chain"].startswith("service-")
