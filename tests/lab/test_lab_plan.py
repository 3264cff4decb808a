"""Pure planning: names, addresses, placement, endpoints. No root needed."""

from __future__ import annotations

import hashlib
import re

import pytest

from tracer.errors import ManifestError, UsageError
from tracer.kube.manifest import load_manifest, parse_manifest
from tracer.lab import plan
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan

POD_NAME = re.compile(r"^nginx-demo-1-[0-9a-f]{10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")


@pytest.fixture(scope="module")
def seed():
    return load_manifest(DEFAULT_MANIFEST)


def test_seed_plan_matches_the_article(seed):
    s = make_plan(seed)
    assert [(n.name, n.netns, n.ip, n.pod_cidr) for n in s.nodes] == [
        ("node-a", "lab-node-a", "192.168.64.57", "10.217.120.64/26"),
        ("node-b", "lab-node-b", "192.168.64.58", "10.217.121.0/26"),
    ]
    assert (s.tor.netns, s.tor.ip, s.client.netns, s.client.ip) == (
        "lab-tor", "192.168.64.1", "lab-client", "192.168.64.10")
    assert s.asn == 64512 and s.pod_gateway == "169.254.1.1"
    assert [(p.node, p.ip, p.index) for p in s.pods] == [
        ("node-a", "10.217.120.72", 0),  # the seed article's pod IP
        ("node-b", "10.217.121.8", 1),
    ]
    for p in s.pods:
        assert POD_NAME.match(p.name), p.name
        assert p.netns == f"lab-pod-{p.name}"
        assert p.ports == (80,)
        assert p.nginx.access_log == f"/run/tracer-lab/pods/{p.name}/access.log"


def test_pod_names_are_deterministic_and_share_the_template_hash(seed):
    a, b = make_plan(seed), make_plan(seed)
    assert [p.name for p in a.pods] == [p.name for p in b.pods]
    hashes = {p.name.split("-")[-2] for p in a.pods}
    assert len(hashes) == 1  # one ReplicaSet
    assert len({p.name for p in make_plan(seed, replicas=40).pods}) == 40


def test_veth_name_is_calicos():
    name = plan.veth_name("default", "nginx-demo-1-abc")
    assert name == "cali" + hashlib.sha1(b"default.nginx-demo-1-abc").hexdigest()[:11]
    assert len(name) == 15  # IFNAMSIZ - 1


def test_round_robin_and_sequential_addresses(seed):
    s = make_plan(seed, replicas=5)
    assert [(p.index, p.node, p.ip) for p in s.pods] == [
        (0, "node-a", "10.217.120.72"),
        (1, "node-b", "10.217.121.8"),
        (2, "node-a", "10.217.120.73"),
        (3, "node-b", "10.217.121.9"),
        (4, "node-a", "10.217.120.74"),
    ]
    # Scaling keeps the existing pods as they are (names, addresses).
    assert make_plan(seed, replicas=3).pods[:2] == make_plan(seed).pods


def test_replicas_bounds(seed):
    assert make_plan(seed, replicas=0).pods == ()
    with pytest.raises(UsageError, match=">= 0"):
        make_plan(seed, replicas=-1)
    cap = plan.block_capacity("10.217.120.64/26")
    assert cap == 55
    make_plan(seed, replicas=2 * cap)
    with pytest.raises(UsageError, match="room for 55 pods"):
        make_plan(seed, replicas=2 * cap + 1)


def test_services_and_endpoints(seed):
    s = make_plan(seed, replicas=3)
    svc1, svc2 = s.service("nginx-demo-1"), s.service("nginx-demo-2")
    assert (svc1.type, svc1.cluster_ip, svc1.external_ips, svc1.port, svc1.node_port) == (
        "ClusterIP", "10.96.88.88", ("192.168.64.57",), 8088, None)
    assert (svc2.type, svc2.cluster_ip, svc2.port, svc2.node_port) == (
        "NodePort", "10.96.88.89", 8089, 30089)
    eps = svc1.ports[0].endpoints
    assert [(e.ip, e.port, e.node) for e in eps] == [
        ("10.217.120.72", 80, "node-a"), ("10.217.121.8", 80, "node-b"),
        ("10.217.120.73", 80, "node-a")]
    assert svc1.ports[0].target_port == 80


MULTI = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: nginx
          ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, image: nginx}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: admin, port: 81, targetPort: admin}
"""


def test_named_ports_multiple_deployments_and_listen_ports():
    m = parse_manifest(MULTI, source="multi.yaml")
    s = make_plan(m)
    web = [p for p in s.pods if p.deployment == "web"]
    api = [p for p in s.pods if p.deployment == "api"]
    assert [p.ports for p in web] == [(8080, 9090)]
    assert all(p.ports == (80,) for p in api)  # no port known: nginx's 80
    # Each Deployment starts on node A; addresses continue per node.
    assert [(p.node, p.ip) for p in s.pods] == [
        ("node-a", "10.217.120.72"), ("node-a", "10.217.120.73"), ("node-b", "10.217.121.8")]
    svc = s.service("shop/web")
    assert [(sp.name, sp.port, sp.target_port) for sp in svc.ports] == [
        ("http", 80, 8080), ("admin", 81, 9090)]
    assert svc.ports[1].endpoints[0].port == 9090
    assert web[0].veth == plan.veth_name("shop", web[0].name)


def test_unresolvable_named_port_is_a_manifest_error():
    m = parse_manifest(MULTI, source="multi.yaml")
    web = m.deployments[0]
    with pytest.raises(ManifestError, match="names no containerPort"):
        plan.resolve_target_port(m.services[0], "nope", web)

