"""Where the node's Service rules are: nf_tables tracing only sees nf_tables.
kube-proxy's and Calico's images write through whichever iptables backend
already holds rules; when that is legacy xtables (ip_tables), `--rules`
would trace nothing and must say so instead."""

from __future__ import annotations

from tracer.errors import LegacyXtablesError
from tracer.rules.rule_text import Runner, run_program

# Chains kube-proxy (iptables mode) and Calico's Felix make.
CHAIN_PREFIXES = ("KUBE-", "cali-")


def _has_service_chains(saved: str) -> bool:
    for line in saved.splitlines():
        chain = line[1:] if line.startswith(":") else line[3:] if line.startswith("-A ") else ""
        if chain.startswith(CHAIN_PREFIXES):
            return True
    return False


def check_not_legacy(runner: Runner = run_program) -> None:
    """Raise LegacyXtablesError when kube-proxy/Calico chains are in legacy
    xtables and none are in nf_tables (the calling thread's namespace)."""
    if not _has_service_chains(runner(["iptables-legacy-save"])):
        return
    if _has_service_chains(runner(["iptables-nft-save"])):
        return
    if runner(["nft", "list", "table", "ip", "kube-proxy"]).strip():
        return
    raise LegacyXtablesError(
        "--rules cannot trace legacy xtables rules: this node's KUBE-/cali- chains are in "
        "iptables-legacy, which nf_tables tracing does not see (switch the node to iptables-nft)"
    )
