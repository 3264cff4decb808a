"""The lab with kube-proxy in nftables mode (`tracer lab up --proxy-mode
nftables`), with real traffic: the rules load into the nodes' namespaces as
table ip kube-proxy (and the iptables rules go), `tracer services` lists the
Services from it, and `tracer capture` on a node sees the DNAT and MASQUERADE
of every connection, its DNAT choices per endpoint matching the counters on
the endpoint chains' DNAT rules (added by the lab: kube-proxy writes none)
and the pods' nginx logs. The default lab (iptables mode) is put back after
each test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.capture.lab_capture import capture, client_connections, last_bindings, sh
from tracer.capfile import load
from tracer.lab import controller, kubeproxy
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

CLIENT = "192.168.64.10"
NODE_A, NODE_B = "192.168.64.57", "192.168.64.58"


@pytest.fixture
def nft_lab(lab):
    state = controller.up(proxy_mode="nftables").state
    yield state
    controller.up()


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _endpoint_of_chain(meta: dict) -> dict[str, str]:
    return {ep["chain"]: ep["ip"] for port in meta["service"]["ports"] for ep in port["endpoints"]}


def test_up_switches_modes_both_ways(nft_lab):
    assert nft_lab.proxy_mode == "nftables"
    for node in nft_lab.nodes:
        assert kubeproxy.nft_table(node.netns) is not None
        assert "KUBE-" not in kubeproxy.save(node.netns)
    again = controller.up(proxy_mode="nftables")
    assert again.action == "unchanged"
    back = controller.up()
    assert back.state.proxy_mode == "iptables"
    assert any("reloaded kube-proxy rules" in c for c in back.changes)
    for node in back.state.nodes:
        assert kubeproxy.nft_table(node.netns) is None
        assert ":KUBE-SERVICES" in kubeproxy.save(node.netns)


def test_services_lists_the_nftables_services(nft_lab):
    proc = subprocess.run([sys.executable, "-m", "tracer", "services", "--netns", "lab-node-a",
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    services = {s["name"]: s for s in json.loads(proc.stdout)}
    assert list(services) == ["nginx-demo-1", "nginx-demo-2"]
    demo1 = services["nginx-demo-1"]["ports"][0]
    assert demo1["cluster_ips"] == ["10.96.88.88"] and demo1["external_ips"] == [NODE_A]
    assert demo1["service_chain"].startswith("service-")
    pods = sorted(p.ip for p in nft_lab.pods)
    assert sorted(e["ip"] for e in demo1["endpoints"]) == pods
    assert [e["share"] for e in demo1["endpoints"]] == [0.5, 0.5]
    assert services["nginx-demo-2"]["ports"][0]["node_port"] == 30089


def test_capture_on_node_a_agrees_with_nft_counters_and_nginx(nft_lab, tmp_path):
    pod_ip = {p.name: p.ip for p in nft_lab.pods}
    sh("lab-node-a", "conntrack", "-F")
    before = kubeproxy.nft_endpoint_counters("lab-node-a")
    with capture(["--svc", "nginx-demo-1", "--netns", "lab-node-a"], tmp_path / "a") as a:
        result = run_traffic(requests=60, concurrency=4, target="external-ip")
        time.sleep(0.5)
    assert a.returncode == 0, a.stderr_lines
    assert result.ok == 60 and result.failed == 0
    cap = load(tmp_path / "a")
    assert cap.meta["complete"] and cap.meta["stats"]["lost"] == 0
    port = cap.meta["service"]["ports"][0]
    assert port["service_chain"].startswith("service-")  # resolved from table ip kube-proxy

    ev = cap.events
    nat = ev[ev.probe == "nat"]
    dnat = nat[(nat.nat_kind == "dnat") & nat.nat_first]
    snat = nat[(nat.nat_kind == "snat") & nat.nat_first]
    # One DNAT per NAT binding (a connection whose masqueraded port collides
    # with a pod's TIME_WAIT one gets a second binding, as in iptables mode).
    assert client_connections(dnat) == result.connections == 60
    assert len(snat) == len(dnat)
    assert set(dnat.saddr) == {CLIENT} and set(dnat.daddr) == {NODE_A}
    assert set(dnat.dport) == {8088} and set(dnat.nat_dport) == {80}
    # MASQUERADE (the masquerading chain's `masquerade fully-random`): pods see node A.
    assert set(snat.nat_saddr) == {NODE_A} and set(snat.hook) == {"postrouting"}

    # Witness 1: the counters on the endpoint chains' DNAT rules, per endpoint.
    counted = _delta(kubeproxy.nft_endpoint_counters("lab-node-a"), before)
    chain_ip = _endpoint_of_chain(cap.meta)
    assert set(counted) <= set(chain_ip)
    assert Counter(dnat.nat_daddr.astype(str)) == Counter({chain_ip[c]: n for c, n in counted.items()})
    # Witness 2: nginx access logs, per pod (a connection's last binding carried it).
    final = last_bindings(dnat)
    assert Counter(final.nat_daddr.astype(str)) == Counter(
        {pod_ip[p]: n for p, n in result.served_by_pod.items()})
    # Both endpoints were chosen (numgen random mod 2; 60 draws).
    assert set(final.nat_daddr.astype(str)) == set(pod_ip.values())


def test_node_port_on_node_b(nft_lab, tmp_path):
    before = kubeproxy.nft_endpoint_counters("lab-node-b")
    with capture(["--svc", "default/nginx-demo-2", "--netns", "lab-node-b"], tmp_path / "np") as c:
        result = run_traffic(requests=30, concurrency=3, target="node-port", node="b")
        time.sleep(0.3)
    assert c.returncode == 0, c.stderr_lines
    cap = load(tmp_path / "np")
    ev = cap.events
    dnat = ev[(ev.nat_kind == "dnat") & ev.nat_first]
    assert result.ok == 30 and client_connections(dnat) == result.connections == 30
    assert set(dnat.daddr) == {NODE_B} and set(dnat.dport) == {30089}
    counted = _delta(kubeproxy.nft_endpoint_counters("lab-node-b"), before)
    chain_ip = _endpoint_of_chain(cap.meta)
    assert Counter(dnat.nat_daddr.astype(str)) == Counter({chain_ip[c]: n for c, n in counted.items()})
    assert len(ev[(ev.nat_kind == "snat") & ev.nat_first]) == len(dnat)
