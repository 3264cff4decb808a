"""The kernel's own counts of what a lab fault's rules did: witnesses for the
fault tests (tests/lab/test_lab_faults.py, tests/analysis/test_lab_rules.py)."""

from __future__ import annotations

import re

from tests.capture.lab_capture import sh


def drop_counter(netns: str, chain: str) -> int:
    """Packets the DROP rule of a filter chain dropped (iptables-save -c)."""
    for line in sh(netns, "iptables-save", "-c", "-t", "filter").splitlines():
        m = re.match(rf"^\[(\d+):\d+\] -A {re.escape(chain)} .*-j DROP", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no DROP rule in {chain}")


def reject_packets(state, netns: str) -> int:
    """SYNs kube-proxy's REJECT refused on netns: the filter rule's counter
    for nginx-demo-1's external IP (iptables mode), or reject-chain's counter
    the lab adds (nftables mode)."""
    if state.proxy_mode == "nftables":
        chain = sh(netns, "nft", "list", "chain", "ip", "kube-proxy", "reject-chain")
        m = re.search(r"counter packets (\d+) ", chain)
        assert m, chain
        return int(m.group(1))
    for line in sh(netns, "iptables-save", "-c", "-t", "filter").splitlines():
        m = re.match(r"^\[(\d+):\d+\] -A KUBE-EXTERNAL-SERVICES .*nginx-demo-1 has no endpoints.*"
                     r"-j REJECT", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no REJECT rule for nginx-demo-1 on " + netns)
