"""The dual-stack lab (`tracer lab up --ip-family dual`, the shipped
dual-stack.yaml) with real traffic, in both kube-proxy modes: IPv6 routes
learned over BGP as Calico's bird6 learns them, pods reached on their IPv6
addresses from the client and across nodes through Calico's link-local
gateway, neighbour discovery inside the lab, and a dual-stack Service
reached on its IPv6 node port, external IP and cluster IP through
kube-proxy's IPv6 rules. Witnesses: the pods' nginx logs, the IPv6 DNAT
counters and `conntrack -f ipv6`."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tracer.lab import access_log, bird, bird6, controller, kubeproxy6, plan
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]


MANIFEST = Path(plan.__file__).parent / "manifests" / "dual-stack.yaml"


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def dual_lab(lab, request):
    yield controller.up(MANIFEST, ip_family="dual", proxy_mode=request.param).state
    controller.up()


def _in(netns: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, timeout=30)


def test_bgp_routes_every_ipv6_block(dual_lab):
    s = dual_lab
    for netns, want in bird6.expected_routes(s.tor, s.nodes).items():
        assert want <= bird.installed(netns, six=True), netns
    # Each node's own block is its blackhole, as for IPv4.
    for n in s.nodes:
        routes = bird.learned_routes(n.netns, six=True)
        assert {"dst": n.pod_cidr6, "type": "blackhole"}.items() <= next(
            r for r in routes if r["dst"] == n.pod_cidr6).items()


def test_client_and_pods_reach_every_pod_over_ipv6(dual_lab):
    s = dual_lab
    marks = access_log.offsets(s)
    for p in s.pods:
        for netns in [s.client.netns, *(q.netns for q in s.pods if q is not p)]:
            proc = _in(netns, "curl", "-sS", "-m", "3", f"http://[{p.ip6}]/")
            assert proc.returncode == 0, proc.stderr
            assert f"pod={p.name} " in proc.stdout
    # nginx saw each IPv6 client address unchanged (no NAT on the way).
    logged = {(e.pod, e.remote_addr) for e in access_log.read_since(marks, s)}
    for p in s.pods:
        assert (p.name, s.client.ip6) in logged
        assert {(p.name, q.ip6) for q in s.pods if q is not p} <= logged


def test_pods_route_through_calicos_link_local_gateway(dual_lab):
    s = dual_lab
    p = s.pods[0]
    route = json.loads(_in(p.netns, "ip", "-6", "-j", "route", "show", "default").stdout)
    assert route[0]["gateway"] == "fe80::ecee:eeff:feee:eeee"
    # The node answered the pod's neighbour solicitation for it: the host
    # side of the veth (Calico's ee:ee:ee:ee:ee:ee) is the gateway.
    neigh = json.loads(_in(p.netns, "ip", "-6", "-j", "neigh", "show", "dev", "eth0").stdout)
    gw = [n for n in neigh if n["dst"] == "fe80::ecee:eeff:feee:eeee"]
    assert gw and gw[0]["lladdr"] == "ee:ee:ee:ee:ee:ee"


def _conntrack6(netns: str, port: int) -> int:
    out = _in(netns, "conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", str(port)).stdout
    return sum(1 for line in out.splitlines() if line.startswith("tcp"))


def test_the_dual_stack_service_answers_on_ipv6(dual_lab):
    """The client to node A's IPv6 node port and to the IPv6 external IP,
    a pod on node A to the IPv6 cluster IP: all DNATed by node A's IPv6
    proxier, whose per-endpoint counters equal what the pods logged."""
    s = dual_lab
    svc = s.service("nginx-demo-dual")
    assert svc.cluster_ip6 == "fd00:10:96::90" and svc.external_ips6 == ("fd00:192:168:64::57",)
    for n in s.nodes:
        _in(n.netns, "conntrack", "-F")
    before = kubeproxy6.dnat_counters("lab-node-a", s.proxy_mode)
    marks = access_log.offsets(s)
    pod_a = next(p for p in s.pods if p.node == "node-a")
    runs = [run_traffic(requests=30, target="node-port", node="a", family="ipv6", state=s),
            run_traffic(requests=30, target="external-ip", family="ipv6", state=s),
            run_traffic(requests=30, target="cluster-ip", source=pod_a.name, family="ipv6",
                        state=s)]
    assert [(r.ok, r.failed) for r in runs] == [(30, 0)] * 3
    assert runs[0].url == "http://[fd00:192:168:64::57]:30090/"
    after = kubeproxy6.dnat_counters("lab-node-a", s.proxy_mode)
    dnat = {ip: after[ip] - before.get(ip, 0) for ip in after if after[ip] > before.get(ip, 0)}
    logged = Counter(p.ip6 for e in access_log.read_since(marks, s)
                     for p in s.pods if p.name == e.pod)
    assert dnat == dict(logged) and sum(dnat.values()) == 90
    # Every answer came over IPv6: nginx logged IPv6 sources only.
    assert all(":" in e.remote_addr for e in access_log.read_since(marks, s))
    assert _conntrack6("lab-node-a", 30090) == 30
    assert _conntrack6("lab-node-a", 8090) == 60
