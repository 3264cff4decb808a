"""The dual-stack lab (`tracer lab up --ip-family dual`) with real traffic:
IPv6 routes learned over BGP as Calico's bird6 learns them, pods reached on
their IPv6 addresses from the client and across nodes through Calico's
link-local gateway, neighbour discovery inside the lab, and the pods' nginx
logs as the witness of the client's IPv6 source."""

from __future__ import annotations

import json
import subprocess

import pytest

from tracer.lab import access_log, bird, bird6, controller

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def dual_lab(lab):
    yield controller.up(ip_family="dual").state
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
