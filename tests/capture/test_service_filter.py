from __future__ import annotations

from tracer.capture.abi import ROLE_ENDPOINT, ROLE_FRONTEND
from tracer.capture.abi import be16_as_loaded as _be16_value
from tracer.capture.abi import be32_as_loaded as _be32_value
from tracer.capture.service_filter import ServiceKeyMap, ipv6_addresses, service_keys
from tracer.kube.iptables_parse import ResolvedEndpoint, ResolvedService, ResolvedServicePort


def _svc(endpoints=("10.217.120.72", "10.217.121.8"), node_port=None):
    n = len(endpoints)
    eps = tuple(
        ResolvedEndpoint(ip, 80, "tcp", 1 / (n - i), 1 / n, f"KUBE-SEP-{i}") for i, ip in enumerate(endpoints)
    )
    port = ResolvedServicePort(port_name="", protocol="tcp", port=8088, cluster_ips=("10.96.88.88",),
                               external_ips=("192.168.64.57",), node_port=node_port, endpoints=eps)
    return ResolvedService("default", "nginx-demo-1", (port,))


def test_keys_cover_vips_external_ips_endpoints():
    keys = service_keys(_svc(), ["127.0.0.1", "192.168.64.57"])
    assert keys[("10.96.88.88", 8088, 6)] == ROLE_FRONTEND
    assert keys[("192.168.64.57", 8088, 6)] == ROLE_FRONTEND
    assert keys[("10.217.120.72", 80, 6)] == ROLE_ENDPOINT
    assert len(keys) == 4


def test_node_port_becomes_one_key_per_local_address():
    keys = service_keys(_svc(node_port=30089), ["127.0.0.1", "192.168.64.57"])
    assert keys[("127.0.0.1", 30089, 6)] == ROLE_FRONTEND
    assert keys[("192.168.64.57", 30089, 6)] == ROLE_FRONTEND


def test_a_dual_stack_service_keys_its_ipv4_half_only():
    """The in-kernel filter keys IPv4 addresses: the IPv6 port of a
    dual-stack Service (and IPv6 node addresses for its node port) are left
    out, and counted for the capture's note, instead of failing to pack."""
    v4 = _svc(node_port=30089).ports[0]
    v6 = ResolvedServicePort(
        port_name="", protocol="tcp", port=8088, cluster_ips=("fd00:10:96::88",),
        node_port=30089, endpoints=(ResolvedEndpoint("fd00:10:217:120::72", 80, "tcp", 1.0, 1.0,
                                                     "KUBE-SEP-6"),))
    svc = ResolvedService("default", "nginx-demo-1", (v4, v6))
    keys = service_keys(svc, ["192.168.64.57", "fd00:192:168:64::57"])
    assert keys == service_keys(_svc(node_port=30089), ["192.168.64.57"])
    assert not any(":" in k[0] for k in keys)
    assert ipv6_addresses(svc) == 2 and ipv6_addresses(_svc()) == 0
    table = FakeTable(64)
    ServiceKeyMap(table, capacity=64).sync(keys)  # packs: no IPv6 reaches be32
    assert len(table) == len(keys)


def test_network_order_values_as_the_bpf_program_loads_them():
    # 192.168.64.10 in memory is c0 a8 40 0a; a little-endian u32 load gives 0x0a40a8c0.
    assert _be32_value("192.168.64.10") == 0x0A40A8C0
    assert _be16_value(8088) == 0x981F


class FakeTable(dict):
    """A BCC hash table's interface, with a capacity like the kernel map."""

    def __init__(self, capacity):
        super().__init__()
        self.capacity = capacity

    class Key:
        addr = port = proto = 0

    def Leaf(self, v):
        return v

    def __setitem__(self, k, v):
        key = (k.addr, k.port, k.proto)
        if key not in self and len(self) >= self.capacity:
            raise Exception("Could not update table: E2BIG")
        super().__setitem__(key, v)

    def __delitem__(self, k):
        super().__delitem__((k.addr, k.port, k.proto))


def test_sync_adds_removes_and_counts_overflow():
    table = FakeTable(capacity=5)
    m = ServiceKeyMap(table, 5)
    r = m.sync(service_keys(_svc(), []))
    assert (r.added, r.removed, r.overflow) == (4, 0, 0)
    # Scale to 3 endpoints, one replaced: one removed, two added.
    r = m.sync(service_keys(_svc(("10.217.120.72", "10.217.121.9", "10.217.121.10")), []))
    assert (r.added, r.removed, r.overflow) == (2, 1, 0)
    assert len(table) == 5
    r = m.sync(service_keys(_svc(("10.217.120.72", "10.217.121.9", "10.217.121.10", "10.1.1.1")), []))
    assert r.overflow == 1 and m.overflow_total == 1
