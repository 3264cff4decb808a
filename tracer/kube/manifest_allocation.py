"""Deterministic allocation for tracer.kube.manifest: a cluster IP inside
the service CIDR of its family for a Service without one there, a node port in 30000-32767 for a
NodePort or LoadBalancer port without one. A stable hash of the Service's
name picks the first candidate, probing past addresses and ports already
taken, so the same manifest always renders the same rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from tracer.kube.manifest_families import IPNetwork
from tracer.kube.manifest_service import NODE_PORT_RANGE, ServiceDraft
from tracer.kube.model import ServicePort


def _stable_hash(text: str) -> int:
    # sha256 rather than hash(): Python salts str hashes per process.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def allocate_cluster_ip(draft: ServiceDraft, cidr: IPNetwork, taken: Mapping[str, Any]) -> str:
    # Usable offsets, IPv4: 2 .. size-2 (skip the network address, .1 which
    # is default/kubernetes, and the broadcast address); IPv6: 1 .. size-1
    # (no broadcast, and default/kubernetes has no IPv6 address when IPv4
    # is the primary family).
    first, usable = (2, cidr.num_addresses - 3) if cidr.version == 4 else (
        1, cidr.num_addresses - 1)
    start = _stable_hash(f"{draft.namespace}/{draft.name}") % usable
    for step in range(usable):
        address = str(cidr.network_address + first + (start + step) % usable)
        if address not in taken:
            return address
    raise draft.where.error(f"no free cluster IP left in {cidr}")


def allocate_node_port(
    draft: ServiceDraft, port: ServicePort, taken: Mapping[int, Any]
) -> int:
    size = len(NODE_PORT_RANGE)
    start = _stable_hash(f"{draft.namespace}/{draft.name}:{port.name}/{port.protocol}") % size
    for step in range(size):
        candidate = NODE_PORT_RANGE.start + (start + step) % size
        if candidate not in taken:
            return candidate
    raise draft.where.error("no free nodePort left in 30000-32767")
