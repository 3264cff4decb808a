"""kube-proxy's IPv6 rules on a dual-stack lab's nodes (the text
kubeproxy.render6() makes; kubeproxy.load() loads them with these programs)
and their DNAT counters.

kube-proxy runs one proxier per family; its IPv6 proxier writes the same
chains with ip6tables (iptables mode) or table ip6 kube-proxy (nftables
mode). The lab keeps one rules text per node: the IPv4 rules, then, on a
dual lab, SECTION and the IPv6 rules (combine/split), so a node's rules are
reloaded, and its digest compared, as one.
"""

from __future__ import annotations

import re

from tracer.kube.nftables_table import read_nft_json
from tracer.system import run

RESTORE6 = "ip6tables-nft-restore"
SAVE6 = "ip6tables-nft-save"
IP6TABLES = "ip6tables-nft"
NFT_TABLE6 = ("ip6", "kube-proxy")
SECTION = "# --- kube-proxy's IPv6 proxier ---\n"


def combine(text4: str, text6: str | None) -> str:
    return text4 if text6 is None else text4 + SECTION + text6


def split(text: str) -> tuple[str, str | None]:
    """(IPv4 rules, IPv6 rules or None) of a node's rules text."""
    text4, marker, text6 = text.partition(SECTION)
    return text4, (text6 if marker else None)


_COUNTED = re.compile(r"^\[(\d+):\d+\] -A (KUBE-SEP-\S+) .*--to-destination \[([0-9a-f:]+)\]:\d+")


def dnat_counters(netns: str, proxy_mode: str) -> dict[str, int]:
    """Endpoint IPv6 address -> new connections the node's IPv6 proxier
    DNATed to it: the KUBE-SEP rules' counters (iptables mode) or the lab's
    counters on the endpoint- chains of table ip6 kube-proxy (nftables)."""
    out: dict[str, int] = {}
    if proxy_mode == "nftables":
        table = run(["nft", "-j", "list", "table", *NFT_TABLE6], netns=netns).stdout
        for chain, rules in read_nft_json(table, family="ip6").chains.items():
            for rule in rules:
                if chain.startswith("endpoint-") and rule.dnat_to and rule.packets is not None:
                    ip = rule.dnat_to[0]
                    out[ip] = out.get(ip, 0) + rule.packets
        return out
    for line in run([SAVE6, "-c", "-t", "nat"], netns=netns).stdout.splitlines():
        m = _COUNTED.match(line)
        if m:
            out[m.group(3)] = out.get(m.group(3), 0) + int(m.group(1))
    return out
