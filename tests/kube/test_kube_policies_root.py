"""Root tests: the rendered traffic-policy and source-range rules load into a
private network namespace (iptables-nft-restore: nat then filter; nft -f),
and what the kernel lists back (iptables-save; nft -j list, the JSON a node
is read with) parses to every field the model has for them."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.kube import policy_services as ps
from tests.kube.test_kube_policies import expected, rounded
from tracer.kube.iptables_filter import render_filter_table
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.nftables_parse import parse_kube_proxy_table
from tracer.kube.nftables_render import render_kube_proxy_table

pytestmark = pytest.mark.root


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"tracer-pol-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run(namespace: str, *args: str, text: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", namespace, *args], input=text, text=True,
                          capture_output=True)
    assert proc.returncode == 0, f"{args[0]} refused: {proc.stderr}"
    return proc.stdout


def check(services, mode: str) -> None:
    got = {s.name: s for s in services if s.namespace == "ns-p"}
    for name, port in expected(mode).items():
        assert [rounded(p.to_dict()) for p in got[name].ports] == [rounded(port.to_dict())], name


def test_iptables_policies_load_and_parse_back(namespace: str) -> None:
    run(namespace, "iptables-restore", text=render_nat_table(ps.SERVICES, ps.ENDPOINTS, **ps.RENDER))
    run(namespace, "iptables-restore", "--noflush",
        text=render_filter_table(ps.SERVICES, ps.ENDPOINTS, node_name=ps.NODE))
    saved = run(namespace, "iptables-save")
    assert "-A KUBE-FW-" in saved and "-j KUBE-PROXY-FIREWALL" in saved
    check(parse_iptables_nat_rules(saved), "iptables")


def test_nftables_policies_load_and_parse_back_from_json(namespace: str) -> None:
    run(namespace, "nft", "-f", "-",
        text=render_kube_proxy_table(ps.SERVICES, ps.ENDPOINTS, **ps.RENDER))
    listed = run(namespace, "nft", "-j", "list", "table", "ip", "kube-proxy")
    check(parse_kube_proxy_table(listed), "nftables")
    # The text listing too (what tests/kube/data/kube_proxy_nft_policies.txt holds).
    check(parse_kube_proxy_table(run(namespace, "nft", "list", "table", "ip", "kube-proxy")),
          "nftables")
