"""BIRD's IPv6 half in a dual-stack lab: what Calico's bird6 template adds
(an IPv6 BGP session to the ToR on the nodes' IPv6 addresses, each node's
IPv6 block announced and the others' routed), and the ToR's side of it.
Appended to the IPv4 configs of tracer/lab/bird.py; empty for an IPv4 lab.

Separate sessions per family, as Calico runs them: IPv6 routes over an
IPv4 session would need IPv6 next hops carried in IPv4 updates.
"""

from __future__ import annotations

from collections.abc import Iterable

from tracer.lab import plan6
from tracer.lab.state import Node, Router


def node_config(node: Node, *, tor: Router, asn: int, timers: str) -> str:
    """timers: the IPv4 sessions' (bird._TIMERS), the same for IPv6's."""
    if not node.ip6 or not node.pod_cidr6:
        return ""
    return f"""
# IPv6 (dual stack): Calico's IPv6 pool, this node's block, a session to the ToR.
define POOL6 = {plan6.CLUSTER_CIDR6};

filter calico_export_to_bgp_peers6 {{
  if ( net ~ POOL6 ) then accept;
  reject;
}}

filter calico_kernel_programming6 {{
  if ( net ~ POOL6 ) then accept;
  reject;
}}

protocol static static6 {{
  ipv6;
  route {node.pod_cidr6} blackhole;
}}

protocol kernel kernel6 {{
  merge paths on;
  ipv6 {{ import none; export filter calico_kernel_programming6; }};
}}

protocol direct direct6 {{
  ipv6;
  interface -"cali*", "*";
}}

protocol bgp tor6 {{
  description "ToR route reflector {tor.ip6}";
  local {node.ip6} as {asn};
  neighbor {tor.ip6} as {asn};
  direct;
{timers}
  ipv6 {{ import all; export filter calico_export_to_bgp_peers6; }};
}}
"""


def bgp_name6(node: Node) -> str:
    return node.name.removeprefix("lab-").replace("-", "_") + "_6"


def tor_config(tor: Router, nodes: Iterable[Node], *, asn: int, timers: str) -> str:
    nodes = [n for n in nodes if n.ip6]
    if not tor.ip6 or not nodes:
        return ""
    peers = "".join(f"""
protocol bgp {bgp_name6(n)} {{
  description "{n.name} {n.ip6}";
  local {tor.ip6} as {asn};
  neighbor {n.ip6} as {asn};
  rr client;
  direct;
  passive on;
{timers}
  ipv6 {{ import all; export all; }};
}}
""" for n in nodes)
    return f"""
# IPv6 (dual stack): the nodes' IPv6 blocks, reflected and routed.
define POOL6 = {plan6.CLUSTER_CIDR6};

filter pod_blocks6 {{
  if ( net ~ POOL6 ) then accept;
  reject;
}}

protocol kernel kernel6 {{
  merge paths on;
  ipv6 {{ import none; export filter pod_blocks6; }};
}}

protocol direct direct6 {{
  ipv6;
  interface "*";
}}
{peers}"""


def expected_routes(tor: Router, nodes: Iterable[Node]) -> dict[str, set[tuple[str, str]]]:
    """netns -> {(IPv6 block, next hop)} BGP must install: every other
    node's block on each node, every block on the ToR."""
    nodes = [n for n in nodes if n.ip6 and n.pod_cidr6]
    if not nodes:
        return {}
    out = {n.netns: {(o.pod_cidr6, o.ip6) for o in nodes if o is not n} for n in nodes}
    out[tor.netns] = {(n.pod_cidr6, n.ip6) for n in nodes}
    return out
