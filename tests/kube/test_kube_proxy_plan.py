"""What both renderers decide per service port before writing rules
(tracer.kube.proxy_plan): addresses checked, endpoints categorized, the
external traffic policy. The rules themselves are tested per mode in
test_kube_render.py and test_kube_nftables.py."""

from __future__ import annotations

import pytest

from tracer.errors import UsageError
from tracer.kube.model import Endpoint, Service, ServicePort
from tracer.kube.proxy_plan import plan_service_port, port_endpoints

PORT = ServicePort("http", "TCP", 80, 8080, node_port=30080)


def service(type: str = "NodePort", policy: str = "Local", **kwargs) -> Service:
    return Service(
        namespace="shop", name="web", type=type, cluster_ip="10.96.0.10", external_ips=(),
        ports=(PORT,), selector=(("app", "web"),), external_traffic_policy=policy, **kwargs,
    )


ENDPOINTS = [
    Endpoint("10.217.1.9", 8080, node="node-a"),
    Endpoint("10.217.1.10", 8080, node="node-b"),
    Endpoint("10.217.1.11", 8080, node="node-a", ready=False),
]


def test_local_policy_categorizes_ready_endpoints_by_node() -> None:
    chosen = port_endpoints(service(), PORT, ENDPOINTS)
    assert [e.ip for e in chosen] == ["10.217.1.10", "10.217.1.11", "10.217.1.9"]  # string order
    plan = plan_service_port(service(), PORT, chosen, "node-a")
    assert (plan.spn, plan.proto, plan.cluster_ip) == ("shop/web:http", "tcp", "10.96.0.10")
    assert [e.ip for e in plan.cluster_endpoints] == ["10.217.1.10", "10.217.1.9"]
    assert [e.ip for e in plan.local_endpoints] == ["10.217.1.9"]
    assert plan.externally_accessible and plan.external_policy_local
    assert plan.has_endpoints and plan.has_external_endpoints and plan.uses_local_chain
    # On a node without a local endpoint, external traffic has nowhere to go.
    elsewhere = plan_service_port(service(), PORT, chosen, "node-c")
    assert not elsewhere.has_external_endpoints and not elsewhere.uses_local_chain
    assert elsewhere.has_endpoints


def test_policy_local_only_counts_for_nodeport_and_loadbalancer() -> None:
    plan = plan_service_port(service(type="ClusterIP"), PORT, ENDPOINTS, "node-a")
    assert not plan.external_policy_local and plan.has_external_endpoints
    no_ready = plan_service_port(service(), PORT, ENDPOINTS[2:], "node-a")
    assert not no_ready.has_endpoints and not no_ready.has_external_endpoints


def test_plan_checks_protocol_and_addresses() -> None:
    with pytest.raises(UsageError, match="protocol 'ICMP' is not TCP, UDP or SCTP"):
        plan_service_port(service(), ServicePort("x", "ICMP", 1, 1), [], None)
    with pytest.raises(UsageError, match="shop/web: load-balancer IP 'nope' is not an IPv4"):
        plan_service_port(service(load_balancer_ips=("nope",)), PORT, [], None)
