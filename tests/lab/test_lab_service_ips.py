"""Which node advertises which load-balancer IP (Calico's
serviceLoadBalancerIPs), what BIRD is told, and how `lab traffic` spreads
connections over the client's addresses. No root: plans and configs only
(bird checks the syntax itself where it is installed)."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

from tracer.errors import UsageError
from tracer.kube.manifest import load_manifest
from tracer.lab import bird, traffic
from tracer.lab.build import advertised_ips, node_bird_config
from tracer.lab.http_engine import Tally, Target
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan

SERVICE_API = DEFAULT_MANIFEST.parent / "service-api.yaml"

LOCAL_LB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 80, nodePort: 30090}]
status:
  loadBalancer:
    ingress: [{ip: 192.168.100.20}]
"""


def test_every_node_advertises_cluster_policy_lb_ips():
    s = make_plan(load_manifest(SERVICE_API), run_dir="/run/tracer-lab")
    for n in s.nodes:
        assert advertised_ips(s, n) == ("192.168.100.10", "192.168.100.13")
        cfg = node_bird_config(s, n)
        assert "route 192.168.100.10/32 blackhole;" in cfg
        assert 'if ( proto = "service_ips" ) then accept;' in cfg


def test_local_policy_lb_ip_only_from_nodes_with_an_endpoint(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(LOCAL_LB)
    s = make_plan(load_manifest(path), run_dir="/run/tracer-lab")
    # One replica: on node A; node B has no endpoint and must not attract traffic.
    assert [p.node for p in s.pods] == ["node-a"]
    assert advertised_ips(s, s.node("a")) == ("192.168.100.20",)
    assert advertised_ips(s, s.node("b")) == ()
    assert "192.168.100.20" not in node_bird_config(s, s.node("b"))


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 not installed")
def test_bird_accepts_the_service_ip_config(tmp_path):
    s = make_plan(load_manifest(SERVICE_API), run_dir=str(tmp_path))
    for n in s.nodes:
        cfg = tmp_path / f"{n.name}.cfg"
        cfg.write_text(node_bird_config(s, n).replace(n.bird.log, str(tmp_path / "log")))
        proc = subprocess.run(["bird", "-p", "-c", str(cfg)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert bird.render_node_config(s.nodes[0], tor_ip=s.tor.ip, asn=s.asn,
                                   cluster_cidr=s.cluster_cidr).count(" blackhole;") == 1


def test_connections_take_the_client_addresses_in_turn():
    tally = Tally()
    sources = ("192.168.64.10", "192.168.64.11", "192.168.64.12")
    got: list[str | None] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(30):
            s = tally.next_source(sources)
            with lock:
                got.append(s)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.connections == 120
    assert {s: got.count(s) for s in sources} == dict.fromkeys(sources, 40)
    assert Tally().next_source(()) is None


@pytest.mark.parametrize("source, clients, duration, message", [
    ("web", 2, None, "--clients needs --from client"),
    ("client", 2, 3.0, "--clients needs --requests"),
    ("client", 16, None, "--clients must be 1..15"),
])
def test_clients_option_is_checked(source, clients, duration, message):
    s = make_plan(load_manifest(SERVICE_API), run_dir="/run/tracer-lab")
    netns = s.client.netns if source == "client" else s.pods[0].netns
    tgt = Target("load-balancer", "web-affinity", "192.168.100.10", 80, source, netns)
    with pytest.raises(UsageError, match=message):
        traffic._client_addresses(s, tgt, clients, duration)


def test_convergence_waits_for_a_withdrawn_lb_ip_but_not_for_a_tunnel_address(monkeypatch):
    """The ToR must stop routing a load-balancer IP nobody advertises any
    more; a /32 inside a node's block (IPIP's tunl0 address, which BIRD
    exports as Calico's does) is not one."""
    s = make_plan(load_manifest(SERVICE_API), run_dir="/run/tracer-lab")
    blocks = {(n.pod_cidr, n.ip) for n in s.nodes}
    kernel = {s.tor.netns: blocks | {("10.217.120.64/32", "192.168.64.57")}}
    monkeypatch.setattr(bird, "bgp_sessions", lambda files: [])
    monkeypatch.setattr(bird, "installed", lambda netns, six=False: kernel.get(netns, set()))
    assert bird._not_converged(s.tor, s.nodes, {s.tor.netns: blocks}) is None
    kernel[s.tor.netns] |= {("192.168.100.10/32", "192.168.64.58")}
    assert bird._not_converged(s.tor, s.nodes, {s.tor.netns: blocks}) == (
        "lab-tor still routes 192.168.100.10/32 via 192.168.64.58 (no longer advertised)")
