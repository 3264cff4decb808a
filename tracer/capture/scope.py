"""Which network namespaces belong to the node being captured: the node's own
and those of its pods. Tracepoints and kprobes fire for every namespace of the
machine; the BPF filter keeps only these (map netns_allow).

A pod's namespace is found the way the node sees it: the peer of one of the
node's veths that carries no address of its own (Calico's cali*, bridge CNIs'
veth*). The node's uplink has an address, so the other end of a lab's LAN
cable (or anything else) is not taken for a pod. The peer's namespace is
matched by its namespace id (RTM_GETNSID) against the named namespaces in
/run/netns, where the lab, `ip netns` and CNI runtimes keep them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))


@dataclass
class NodeScope:
    node_inode: int
    node_name: str
    namespaces: dict[int, str] = field(default_factory=dict)  # inode -> name
    local_addresses: tuple[str, ...] = ()
    # Pod addresses the node routes to over a pod's veth (Calico's /32 route
    # per workload): which node hosts an endpoint even when no packet of the
    # capture reached it (tracer diagnose names the node of a dead endpoint).
    workloads: tuple[str, ...] = ()


def _named_namespaces() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for d in NETNS_DIRS:
        if d.is_dir():
            for p in sorted(d.iterdir()):
                out.setdefault(p.name, p)
    return out


def discover(node_name: str) -> NodeScope:
    """Scope of the node whose network namespace the calling thread is in."""
    node_inode = os.stat("/proc/thread-self/ns/net").st_ino
    scope = NodeScope(node_inode=node_inode, node_name=node_name)
    scope.namespaces[node_inode] = node_name
    with IPRoute() as ipr:
        addressed = {a["index"] for a in ipr.get_addr(family=socket.AF_INET)}
        scope.local_addresses = tuple(
            a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            for a in ipr.get_addr(family=socket.AF_INET)
        )
        pod_nsids, pod_links = set(), set()
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            nsid = link.get_attr("IFLA_LINK_NETNSID")
            if kind == "veth" and nsid is not None and link["index"] not in addressed:
                pod_nsids.add(nsid)
                pod_links.add(link["index"])
        scope.workloads = tuple(sorted(
            r.get_attr("RTA_DST") for r in ipr.get_routes(family=socket.AF_INET)
            if r["dst_len"] == 32 and r.get_attr("RTA_OIF") in pod_links and r.get_attr("RTA_DST")))
        if not pod_nsids:
            return scope
        for name, path in _named_namespaces().items():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                with contextlib.suppress(Exception):
                    got = ipr.get_netnsid(fd=fd)
                    if got and got.get("nsid") in pod_nsids:
                        scope.namespaces[os.fstat(fd).st_ino] = name
            finally:
                os.close(fd)
    return scope
