"""Loading kube-proxy's IPv6 rules on a dual-stack lab's nodes (the text
kubeproxy.render6() makes), and reading them back for the node's digest.

kube-proxy runs one proxier per family; its IPv6 proxier writes the same
chains with ip6tables (iptables mode) or table ip6 kube-proxy (nftables
mode). The lab keeps one rules text per node: the IPv4 rules, then, on a
dual lab, SECTION and the IPv6 rules (combine/split), so a node's rules are
reloaded, and its digest compared, as one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.kube.iptables_filter import FILTER_JUMP_RULES
from tracer.kube.nftables_table import read_nft_json
from tracer.system import run

RESTORE6 = "ip6tables-nft-restore"
SAVE6 = "ip6tables-nft-save"
IP6TABLES = "ip6tables-nft"
NFT_TABLE6 = ("ip6", "kube-proxy")
SECTION = "# --- kube-proxy's IPv6 proxier ---\n"
_EMPTY_NAT = "*nat\nCOMMIT\n"


def combine(text4: str, text6: str | None) -> str:
    return text4 if text6 is None else text4 + SECTION + text6


def split(text: str) -> tuple[str, str | None]:
    """(IPv4 rules, IPv6 rules or None) of a node's rules text."""
    text4, marker, text6 = text.partition(SECTION)
    return text4, (text6 if marker else None)


def _split_filter(text: str) -> tuple[str, str]:
    head, marker, rest = text.partition("*nat\n")
    if not marker or not head.startswith("*filter"):
        return "", text
    return head, marker + rest


def _has_table(netns: str) -> bool:
    return run(["nft", "list", "table", *NFT_TABLE6], netns=netns, check=False).returncode == 0


def _jump_present(netns: str, jump) -> bool:
    return run([IP6TABLES, "-t", "filter", "-C", jump.source, *jump.args()],
               netns=netns, check=False).returncode == 0


def _filter_jumps(netns: str, *, add: bool) -> None:
    """kube-proxy's IPv6 filter jumps: each inserted where missing (add), or
    every copy removed."""
    for jump in FILTER_JUMP_RULES:
        if add:
            if not _jump_present(netns, jump):
                run([IP6TABLES, "-t", "filter", "-I", jump.source, *jump.args()], netns=netns)
            continue
        while _jump_present(netns, jump):
            run([IP6TABLES, "-t", "filter", "-D", jump.source, *jump.args()], netns=netns)


def load(netns: str, proxy_mode: str, text6: str, filter_cleanup: str) -> None:
    """Make the node's IPv6 kube-proxy rules text6 and remove the other
    mode's, as kubeproxy.load() does for IPv4 (filter_cleanup: its restore
    input that deletes kube-proxy's filter chains)."""
    if proxy_mode == "nftables":
        run([RESTORE6], netns=netns, input=_EMPTY_NAT)
        _filter_jumps(netns, add=False)
        run([RESTORE6, "--noflush"], netns=netns, input=filter_cleanup)
        run(["nft", "-f", "-"], netns=netns, input=text6)
        return
    filter_text, nat_text = _split_filter(text6)
    run([RESTORE6], netns=netns, input=nat_text)
    if filter_text:
        run([RESTORE6, "--noflush"], netns=netns, input=filter_text)
        _filter_jumps(netns, add=True)
    if _has_table(netns):
        run(["nft", "delete", "table", *NFT_TABLE6], netns=netns)


def digest_lines(netns: str, strip_counters) -> Sequence[str]:
    """The IPv6 rules as the kernel gives them back, for the node's digest:
    the nat table, kube-proxy's filter lines and table ip6 kube-proxy."""
    nat = run([SAVE6, "-t", "nat"], netns=netns).stdout
    filt = run([SAVE6, "-t", "filter"], netns=netns).stdout
    lines = ["# IPv6", *(strip_counters(line) for line in nat.splitlines()
                         if line and not line.startswith("#"))]
    lines += [line for line in filt.splitlines() if "KUBE-" in line and not line.startswith("#")]
    table = run(["nft", "-s", "list", "table", *NFT_TABLE6], netns=netns, check=False)
    if table.returncode == 0:
        lines += ["# table ip6 kube-proxy", *table.stdout.splitlines()]
    return lines


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
