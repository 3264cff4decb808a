"""What one service port's nat chains say, for tracer.kube.iptables_parse:
the endpoint split of KUBE-SVC / KUBE-SVL (rule by rule, with each KUBE-SEP
chain's DNAT destination), session affinity (`-m recent`), the policy a chain
implements, the external policy KUBE-EXT implements, the load-balancer source
ranges of KUBE-FW and the pod CIDRs KUBE-EXT short-circuits.
"""

from __future__ import annotations

import ipaddress

from tracer.kube import iptables_fields as fields
from tracer.kube.iptables_fields import KUBE_MARK_MASQ, SEP_PREFIX
from tracer.kube.iptables_table import NatTable
from tracer.kube.model import SessionAffinity
from tracer.kube.resolved import ResolvedEndpoint


def session_affinity(table: NatTable, *chains: str | None) -> SessionAffinity | None:
    """ClientIP affinity: kube-proxy heads KUBE-SVC (and KUBE-SVL) with one
    rule per endpoint, `-m recent --name KUBE-SEP-E --rcheck --seconds T
    --reap -j KUBE-SEP-E` (iptables-save prints the options in its own order,
    with --mask and --rsource added); KUBE-SEP-E records the client with
    `-m recent --name KUBE-SEP-E --set`."""
    for chain in chains:
        for rule in table.rules(chain):
            if "--rcheck" in rule.flags and (rule.target or "").startswith(SEP_PREFIX):
                seconds = rule.get("--seconds") or ""
                return SessionAffinity(int(seconds) if seconds.isdigit() else None)
    return None


def policy_of(chain: str | None) -> str | None:
    """The policy a chain implements: KUBE-SVC Cluster, KUBE-SVL (KUBE-XLB) Local."""
    prefix = (fields.port_chain_hash(chain) or ("", ""))[0]
    return {"KUBE-SVC-": "Cluster", "KUBE-SVL-": "Local", "KUBE-XLB-": "Local"}.get(prefix)


def _cidr(value: str) -> str:
    """"203.0.113.7" or "203.0.113.0/24" -> the network as kube-proxy writes it."""
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def source_ranges(table: NatTable, fw_chain: str | None, lb_ips: list[str]) -> tuple[str, ...]:
    """loadBalancerSourceRanges from KUBE-FW: its `-s CIDR -j KUBE-EXT` rules,
    less the LB IPs themselves (kube-proxy admits them too when a range
    holds the node's IP: a node reaching its own VIP loops back from it)."""
    out: list[str] = []
    lb_hosts = {_cidr(ip) for ip in lb_ips}
    for rule in table.rules(fw_chain):
        source = rule.get("-s")
        if source is None or "-s" in rule.negated or not (rule.target or "").startswith("KUBE-"):
            continue
        cidr = _cidr(source)
        if cidr not in lb_hosts and cidr not in out:
            out.append(cidr)
    return tuple(out)


def pod_cidrs(table: NatTable, ext_chain: str | None, svc_chain: str | None) -> tuple[str, ...]:
    """The sources KUBE-EXT short-circuits to KUBE-SVC under external policy
    Local ("pod traffic for ... external destinations": `-s <clusterCIDR>`)."""
    out = []
    for rule in table.rules(ext_chain):
        source = rule.get("-s")
        pod_rule = source and "-s" not in rule.negated and rule.target == svc_chain
        if pod_rule and _cidr(str(source)) not in out:
            out.append(_cidr(str(source)))
    return tuple(out)


def external_policy(table: NatTable, ext_chain: str | None) -> str | None:
    """Cluster when KUBE-EXT masquerades everything; Local when it only
    masquerades node-originated (--src-type LOCAL) traffic."""
    rules = table.rules(ext_chain)
    if not rules:
        return None
    for rule in rules:
        if rule.target == KUBE_MARK_MASQ and "--src-type" not in rule.options:
            return "Cluster"
    return "Local"


def load_balancing(
    table: NatTable, chain: str | None, protocol: str, draft: fields.IptablesPortDraft
) -> tuple[ResolvedEndpoint, ...]:
    """The endpoint choice of a KUBE-SVC/KUBE-SVL chain, in rule order.

    Rule i matches with its probability p_i among the packets rules 0..i-1
    left, so endpoint i gets p_i * prod_{j<i}(1 - p_j) of new connections.
    Session-affinity rules (`-m recent --rcheck`) only send returning clients
    back and are not part of the split."""
    choices: list[tuple[str, float]] = []
    for rule in table.rules(chain):
        target = rule.target
        if not target or not target.startswith(SEP_PREFIX) or "--rcheck" in rule.flags:
            continue
        value = rule.get("--probability")
        p = 1.0 if value is None or rule.get("--mode") not in (None, "random") else float(value)
        choices.append((target, p))
        if p >= 1.0:
            break  # an unconditional jump: later rules are never reached
    out: list[ResolvedEndpoint] = []
    remaining = 1.0
    for sep_chain, p in choices:
        share = remaining * p
        remaining *= 1.0 - p
        destination = _dnat_destination(table, sep_chain, draft)
        if destination is None:
            continue
        ip, port, ep_protocol = destination
        out.append(
            ResolvedEndpoint(
                ip=ip,
                port=port,
                protocol=ep_protocol or protocol,
                probability=p,
                share=share,
                chain=sep_chain,
            )
        )
    return tuple(out)


def _dnat_destination(
    table: NatTable, sep_chain: str, draft: fields.IptablesPortDraft
) -> tuple[str, int, str | None] | None:
    for rule in table.rules(sep_chain):
        draft.name_candidate(rule.comment)
        if rule.target == "DNAT" and rule.get("--to-destination"):
            parts = fields.split_host_port(rule.get("--to-destination") or "")
            if parts is not None:
                return parts[0], parts[1], fields.protocol(rule)
    return None
