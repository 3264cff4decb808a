"""Root tests, in two private network namespaces (a node and a client on a
veth pair; the namespace the tests run in is never modified): kube-proxy's
rules for a Service without endpoints load as the lab loads them (iptables
filter + nat; nft -f), parse back from the kernel as a Service with no
endpoints, and really refuse connections: the client's connect() fails with
ECONNREFUSED (ICMP port unreachable from the REJECT), `tracer lab traffic`'s
engine counts each as failed, and the REJECT's own counter saw each SYN."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.manifest import SHIPPED_MANIFEST, load_manifest
from tracer.kube.nftables_parse import parse_kube_proxy_table
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.lab import kubeproxy
from tracer.lab.http_engine import Target, run_exact
from tracer.system import run

pytestmark = pytest.mark.root

NODE_IP = "192.168.64.57"  # nginx-demo-1's external IP: node A's address in the lab
CLIENT_IP = "192.168.64.10"
REQUESTS = 6


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def node_and_client() -> Iterator[tuple[str, str]]:
    """(node namespace, client namespace), joined by a veth pair on the LAN."""
    tag = uuid.uuid4().hex[:6]
    node, client = f"tracer-test-ne-node-{tag}", f"tracer-test-ne-cli-{tag}"
    _ip("netns", "add", node)
    _ip("netns", "add", client)
    try:
        _ip("link", "add", f"ne{tag}a", "netns", node, "type", "veth",
            "peer", "name", f"ne{tag}b", "netns", client)
        for ns, dev, addr in ((node, f"ne{tag}a", NODE_IP), (client, f"ne{tag}b", CLIENT_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield node, client
    finally:
        subprocess.run(["ip", "netns", "del", node], capture_output=True)
        subprocess.run(["ip", "netns", "del", client], capture_output=True)


def _refused(client: str) -> tuple[int, dict[str, int], int]:
    """(failed, errors, ok) of REQUESTS requests to nginx-demo-1's external IP."""
    target = Target("external-ip", "nginx-demo-1", NODE_IP, 8088, "client", client)
    tally, _ = run_exact(target, REQUESTS, concurrency=2, keepalive=False, timeout=2.0)
    return sum(tally.errors.values()), dict(tally.errors), tally.ok


def _iptables_rules(node: str) -> str:
    """What the lab renders for node A with nginx-demo-1 (and nginx-demo-2,
    the same pods) without endpoints, loaded the way kubeproxy.load does."""
    from tracer.kube.iptables_filter import render_filter_table
    from tracer.kube.iptables_render import render_nat_table

    manifest = load_manifest(SHIPPED_MANIFEST)
    text = render_filter_table(manifest.services, {}, node_name="node-a",
                               forwarding_rules=False, jump_rules=False)
    text += render_nat_table(manifest.services, {}, node_ips=[NODE_IP], node_name="node-a")
    filter_text, nat_text = kubeproxy._split_filter(text)
    for _ in range(2):  # a reload changes nothing (no second jump, no second REJECT)
        run([kubeproxy.RESTORE], netns=node, input=nat_text)
        run([kubeproxy.RESTORE, "--noflush"], netns=node, input=filter_text)
        kubeproxy._ensure_filter_jumps(node)
    return run([kubeproxy.SAVE, "-c"], netns=node).stdout


def test_iptables_mode_rejects_and_parses_back(node_and_client) -> None:
    node, client = node_and_client
    saved = _iptables_rules(node)
    assert saved.count("-j KUBE-EXTERNAL-SERVICES") == 2  # INPUT and FORWARD, once each
    demo1, demo2 = parse_iptables_nat_rules(saved)
    assert demo1.full_name == "default/nginx-demo-1" and demo1.no_endpoints
    assert demo2.no_endpoints and demo2.ports[0].node_port == 30089
    assert demo1.ports[0].reject_in == ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES")

    failed, errors, ok = _refused(client)
    assert (failed, errors, ok) == (REQUESTS, {"ConnectionRefusedError": REQUESTS}, 0)
    counted = [line for line in run([kubeproxy.SAVE, "-c", "-t", "filter"], netns=node).stdout
               .splitlines() if "nginx-demo-1 has no endpoints" in line and "192.168.64.57" in line]
    assert len(counted) == 1 and counted[0].startswith(f"[{REQUESTS}:")

    kubeproxy._remove_filter_rules(node)
    left = run([kubeproxy.SAVE, "-t", "filter"], netns=node).stdout
    assert "KUBE-" not in left


def test_nftables_mode_rejects_and_parses_back(node_and_client) -> None:
    node, client = node_and_client
    manifest = load_manifest(SHIPPED_MANIFEST)
    text = render_kube_proxy_table(manifest.services, {}, node_ips=[NODE_IP], node_name="node-a",
                                   endpoint_counters=True, replace_table=True)
    run(["nft", "-f", "-"], netns=node, input=text)
    listed = run(["nft", "-j", "list", "table", "ip", "kube-proxy"], netns=node).stdout
    demo1, demo2 = parse_kube_proxy_table(listed)
    assert (demo1.full_name, demo1.no_endpoints, demo2.no_endpoints) == (
        "default/nginx-demo-1", True, True)
    assert demo1.ports[0].cluster_ips == ("10.96.88.88",)
    assert demo1.ports[0].external_ips == (NODE_IP,)
    assert demo2.ports[0].reject_in == ("no-endpoint-services", "no-endpoint-nodeports")

    failed, errors, ok = _refused(client)
    assert (failed, errors, ok) == (REQUESTS, {"ConnectionRefusedError": REQUESTS}, 0)
    chain = run(["nft", "list", "chain", "ip", "kube-proxy", "reject-chain"], netns=node).stdout
    assert f"counter packets {REQUESTS} " in chain
