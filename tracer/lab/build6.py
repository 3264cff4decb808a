"""The IPv6 half of a dual-stack lab (`--ip-family dual`; addresses from
tracer/lab/plan6.py): addresses on the LAN and the pods, the pods' route to
Calico's link-local gateway, forwarding on the routers. No-ops for an
IPv4 lab, which stays exactly as it was.

Duplicate address detection is off in every lab namespace (accept_dad 0,
set before any link exists): an address is usable the moment it is added,
as `nodad` would make it, and the veths' link-local addresses too (Calico's
gateway fe80::ecee:eeff:feee:eeee is the host side's own). `ip -batch`
takes no -6: each line's family comes from its addresses.
"""

from __future__ import annotations

from collections.abc import Sequence

from tracer.lab import netdev, plan6
from tracer.lab.state import LabState, Pod

NO_DAD = {
    "net/ipv6/conf/all/accept_dad": 0,
    "net/ipv6/conf/default/accept_dad": 0,
}
ROUTER6 = {**NO_DAD, "net/ipv6/conf/all/forwarding": 1}


def namespace_sysctls(s: LabState, router: bool) -> dict[str, int]:
    """What a lab namespace gets besides its IPv4 settings."""
    if s.ip_family == "ipv4":
        return {}
    return dict(ROUTER6 if router else NO_DAD)


def wire_lan(s: LabState) -> None:
    """The ToR's bridge and every host's eth0 on the LAN's /64, with a
    default route to the ToR."""
    if s.ip_family == "ipv4":
        return
    netdev.ip_batch(s.tor.netns, [
        f"addr add {s.tor.ip6}/{plan6.LAN6_PREFIXLEN} dev {s.tor.bridge} nodad"])
    for netns, ip6 in [(s.client.netns, s.client.ip6), *((n.netns, n.ip6) for n in s.nodes)]:
        netdev.ip_batch(netns, [
            f"addr add {ip6}/{plan6.LAN6_PREFIXLEN} dev eth0 nodad",
            f"route add default via {s.tor.ip6} dev eth0",
        ])


def node_pod_routes(s: LabState, pods: Sequence[Pod]) -> list[str]:
    """The node's /128 route to each of its pods (as Felix programs them)."""
    if s.ip_family == "ipv4":
        return []
    return [f"route add {p.ip6}/128 dev {p.veth}" for p in pods]


def pod_lines(s: LabState, p: Pod) -> list[str]:
    """The pod's IPv6 address and default route via Calico's gateway."""
    if s.ip_family == "ipv4":
        return []
    return [
        f"addr add {p.ip6}/128 dev eth0 nodad",
        f"route add default via {plan6.POD_GATEWAY6} dev eth0",
    ]
