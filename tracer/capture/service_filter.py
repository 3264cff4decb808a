"""The in-kernel service filter: which (address, port, protocol) keys the BPF
map svc_keys holds for one resolved Service on one node, and keeping the map
in step as endpoints change. The key computation is pure; only sync() talks
to the map."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from tracer.capfile import PROTO_NUMBERS
from tracer.capture.abi import ROLE_ENDPOINT, ROLE_FRONTEND, be16_as_loaded, be32_as_loaded
from tracer.kube.resolved import ResolvedService

Key = tuple[str, int, int]  # (ip, port, protocol number)


def ipv6_addresses(svc: ResolvedService) -> int:
    """How many of the Service's addresses (frontends and endpoints) are
    IPv6: the in-kernel filter keys IPv4 only, so a dual-stack Service is
    traced on its IPv4 half (the capture says so)."""
    return sum(1 for ip, _, _ in (*svc.service_addresses(), *svc.endpoint_addresses())
               if ip is not None and ":" in ip)


def service_keys(svc: ResolvedService, node_addresses: Iterable[str]) -> dict[Key, int]:
    """Every tuple side that marks a packet as this service's, with its role.
    A node port is reachable on every address of the node (kube-proxy matches
    it with --dst-type LOCAL), so it becomes one key per local address.
    IPv6 addresses are left out (ipv6_addresses)."""
    keys: dict[Key, int] = {}
    local = [a for a in node_addresses if a and ":" not in a]
    for ip, port, proto in svc.service_addresses():
        number = PROTO_NUMBERS.get(proto.lower())
        if number is None:
            continue
        if ip is not None and ":" in ip:
            continue
        for addr in ([ip] if ip is not None else local):
            keys[(addr, port, number)] = keys.get((addr, port, number), 0) | ROLE_FRONTEND
    for ip, port, proto in svc.endpoint_addresses():
        number = PROTO_NUMBERS.get(proto.lower())
        if number is None or ip is None or ":" in ip:
            continue
        keys[(ip, port, number)] = keys.get((ip, port, number), 0) | ROLE_ENDPOINT
    return keys


@dataclass
class SyncResult:
    added: int
    removed: int
    overflow: int  # keys that did not fit in the map


class ServiceKeyMap:
    """Mirror of the BPF hash map svc_keys (a BCC table)."""

    def __init__(self, table, capacity: int):
        self.table = table
        self.capacity = capacity
        self.current: dict[Key, int] = {}
        self.overflow_total = 0

    def _ckey(self, key: Key):
        k = self.table.Key()
        k.addr = be32_as_loaded(key[0])
        k.port = be16_as_loaded(key[1])
        k.proto = key[2]
        return k

    def sync(self, wanted: dict[Key, int]) -> SyncResult:
        removed = [k for k in self.current if k not in wanted]
        for key in removed:
            with contextlib.suppress(KeyError):
                del self.table[self._ckey(key)]
            del self.current[key]
        added = overflow = 0
        for key, role in wanted.items():
            if self.current.get(key) == role:
                continue
            try:
                self.table[self._ckey(key)] = self.table.Leaf(role)
                self.current[key] = role
                added += 1
            except Exception:  # BCC raises a bare Exception when the map is full
                overflow += 1
        self.overflow_total += overflow
        return SyncResult(added, len(removed), overflow)
