"""The lab's IPv6 addresses (`tracer lab up --ip-family dual`): a ULA
prefix per network, each address mirroring its IPv4 twin so that one reads
off the other (node A 192.168.64.57 is fd00:192:168:64::57, its pod
10.217.120.72 is fd00:10:217:120::72; the hex digits are the decimal ones
written out, not converted).

Calico's IPv6 pool is a /48 cut into per-node blocks (blockSize 116-128;
the lab takes /120 so every IPv4 last octet has its twin); pods route
everything to the link-local address of the host side of their veth,
fe80::ecee:eeff:feee:eeee (EUI-64 of Calico's ee:ee:ee:ee:ee:ee).
"""

from __future__ import annotations

import ipaddress

from tracer.errors import UsageError

IP_FAMILIES = ("ipv4", "dual")
LAN6_PREFIXLEN = 64
LAN6_PREFIX = "fd00:192:168:64::"
CLUSTER_CIDR6 = "fd00:10:217::/48"
BLOCK6_PREFIXLEN = 120
POD_GATEWAY6 = "fe80::ecee:eeff:feee:eeee"


def check_family(ip_family: str, encap: str) -> None:
    if ip_family not in IP_FAMILIES:
        raise UsageError(f"--ip-family must be one of {', '.join(IP_FAMILIES)}, not {ip_family!r}")
    if ip_family != "ipv4" and encap != "none":
        raise UsageError(f"--ip-family {ip_family} with --encap {encap}: the lab renders "
                         "IPv6 routes over BGP only (--encap none)")


def twin(ipv4: str, prefix: str) -> str:
    """The IPv6 twin of an IPv4 address under prefix (a /64 or the /120
    block's network address): the last octet written as hex digits."""
    last = ipv4.rsplit(".", 1)[1]
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) + int(last, 16)))


def lan6(ipv4: str) -> str:
    """A LAN host's IPv6 address: 192.168.64.57 -> fd00:192:168:64::57."""
    return twin(ipv4, LAN6_PREFIX)


def block6(pod_cidr: str) -> str:
    """A node's IPv6 block: 10.217.120.64/26 -> fd00:10:217:120::/120."""
    third = pod_cidr.split(".")[2]
    return f"fd00:10:217:{third}::/{BLOCK6_PREFIXLEN}"


def pod_ip6(pod_ip: str, pod_cidr: str) -> str:
    """A pod's IPv6 address in its node's block: 10.217.120.72 -> fd00:10:217:120::72."""
    return twin(pod_ip, block6(pod_cidr).split("/")[0])
