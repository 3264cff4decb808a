"""`iptables-save` text -> the Services kube-proxy programmed, resolved from
the rules alone (no API server): the nat table, and the filter table for
Services without endpoints.

The walk follows the jumps kube-proxy writes (pkg/proxy/iptables/proxier.go):

    KUBE-SERVICES  -d VIP --dport P        -> KUBE-SVC-H  (cluster IP)
                                           -> KUBE-EXT-H  (external / LB IP)
                                           -> KUBE-FW-H   (LB IP with source ranges)
    KUBE-NODEPORTS --dport N               -> KUBE-EXT-H
    KUBE-EXT-H / KUBE-FW-H                 -> KUBE-SVC-H or KUBE-SVL-H
    KUBE-SVC-H / KUBE-SVL-H  [statistic p] -> KUBE-SEP-E
    KUBE-SEP-E  -j DNAT --to-destination ip:port

With sessionAffinity ClientIP, KUBE-SVC/KUBE-SVL start with `-m recent
--rcheck` rules that send a returning client to its endpoint (not part of
the split; they give the port's session_affinity and its timeout).

All chains of one service port share the hash H (portProtoHash), which is how
ports are grouped, with or without comments. Names come from the comments
kube-proxy writes ("ns/name:port cluster IP", "ns/name:port -> ip:port", ...).
In large-cluster mode kube-proxy drops only the per-endpoint comments, so the
KUBE-SERVICES comments still name the service; when no comment names it at
all, the service is named after its chain and `name_source` says "chain".

A Service without endpoints has no nat rules: kube-proxy only REJECTs its
traffic in the filter table (read by tracer.kube.iptables_no_endpoints).
Such ports come back with no endpoints, no_endpoints set and reject_in
naming those chains. Text without a "*filter" section (`iptables-save -t
nat`) has none.

Here: the walk from KUBE-SERVICES and KUBE-NODEPORTS to each service port's
chains; what those chains say is read by tracer.kube.iptables_port_chains,
the rules' fields by tracer.kube.iptables_fields.

Accepts iptables-save output of both backends (nft and legacy), with or
without counters (`-c`: "[pkts:bytes] -A ..."), kube-proxy's own restore input,
and tables with unrelated chains (Docker, Calico's cali-*). Chains that no
rule jumps to (stale ones kube-proxy has not deleted yet) are not services.
"""

from __future__ import annotations

import re

from tracer.kube import iptables_fields as fields
from tracer.kube import iptables_no_endpoints as no_endpoints
from tracer.kube import iptables_port_chains as port_chains
from tracer.kube.iptables_fields import KUBE_NODEPORTS, KUBE_SERVICES, SEP_PREFIX
from tracer.kube.iptables_table import NatTable, Rule, read_nat_table, read_table
from tracer.kube.local_drops import iptables_local_drops, with_local_drops

# The result types live in tracer.kube.resolved (shared with the nftables
# parser); they are re-exported here, where callers have always found them.
from tracer.kube.resolved import (
    Address,
    PartialRulesError,
    ResolvedEndpoint,
    ResolvedService,
    ResolvedServicePort,
    group_services,
)

__all__ = [
    "Address",
    "ResolvedEndpoint",
    "ResolvedService",
    "ResolvedServicePort",
    "parse_iptables_nat_rules",
]

# Comment suffixes of KUBE-SERVICES rules -> address kind.
_VIP_COMMENT_SUFFIXES = {
    " cluster IP": "cluster",
    " external IP": "external",
    " loadbalancer IP": "loadbalancer",
}
_EXT_COMMENT = re.compile(
    r"^(?:masquerade traffic|pod traffic|masquerade LOCAL traffic|route LOCAL traffic) "
    r"for (\S+) external destinations$"
)
_FW_COMMENT = re.compile(r"^other traffic to (\S+) will be dropped by KUBE-PROXY-FIREWALL$")

# --- resolving ---------------------------------------------------------------------------


def parse_iptables_nat_rules(iptables_save_text: str) -> list[ResolvedService]:
    """Every service port kube-proxy programmed, grouped into services, from
    iptables-save (or iptables-restore) text. (rules_source.parse_kube_proxy_rules
    takes nftables mode's rules too.)

    Sorted by namespace and name (chain-named services last, by chain)."""
    table = read_nat_table(iptables_save_text)
    drafts: dict[str, fields.IptablesPortDraft] = {}

    def draft_for(chain: str | None) -> fields.IptablesPortDraft | None:
        parts = fields.port_chain_hash(chain)
        if parts is None:
            return None
        key = parts[1]
        if key not in drafts:
            drafts[key] = fields.IptablesPortDraft(hash=key)
        return drafts[key]

    for rule in table.rules(KUBE_SERVICES):
        draft = draft_for(rule.target)
        if draft is None:
            continue  # the KUBE-NODEPORTS tail call, or something not ours
        _require_chain(table, KUBE_SERVICES, rule.target)
        _add_vip(draft, rule)
    for rule in table.rules(KUBE_NODEPORTS):
        draft = draft_for(rule.target)
        if draft is None or rule.get("--dport") is None:
            continue
        _require_chain(table, KUBE_NODEPORTS, rule.target)
        # kube-proxy may write a localhost (-d 127.0.0.0/8, nfacct) twin of the
        # rule; both carry the same node port.
        draft.node_port = int(rule.get("--dport") or 0) or None
        draft.protocol = draft.protocol or fields.protocol(rule)
        draft.name_candidate(rule.comment)

    ports = []
    for draft in drafts.values():  # in the order KUBE-SERVICES lists them
        port = _resolve_port(table, draft)
        parsed = fields.parse_service_port_name(draft.names[0]) if draft.names else None
        name = (parsed[0], parsed[1]) if parsed else None
        ports.append((name, next(iter(port.chains()), "KUBE-SVC-" + draft.hash), port))
    filter_table = read_table(iptables_save_text, "filter")
    ports = with_local_drops(ports, iptables_local_drops(filter_table))
    ports += no_endpoints.rejected_ports(filter_table)
    return group_services(ports, name_source="comment")


def _require_chain(table: NatTable, jumper: str, chain: str | None) -> None:
    """A jump to a chain the text does not declare: kube-proxy's partial
    restore input (unchanged services' chains left out), not a whole table."""
    if chain and not table.has(chain):
        raise PartialRulesError(jumper, chain)



def _add_vip(draft: fields.IptablesPortDraft, rule: Rule) -> None:
    ip = fields.address(rule.get("-d"))
    kind = None
    comment = rule.comment or ""
    for suffix, suffix_kind in _VIP_COMMENT_SUFFIXES.items():
        if comment.endswith(suffix):
            kind = suffix_kind
            draft.name_candidate(comment[: -len(suffix)])
            break
    if kind is None:
        # No comment to go by: KUBE-SVC/SVL are entered from the cluster IP;
        # a KUBE-FW chain exists only for load-balancer IPs; the rest are
        # external IPs (or LB IPs, which the rules alone cannot tell apart).
        prefix = (fields.port_chain_hash(rule.target) or ("", ""))[0]
        if prefix in ("KUBE-SVC-", "KUBE-SVL-") and not draft.cluster_ips:
            kind = "cluster"
        elif prefix == "KUBE-FW-":
            kind = "loadbalancer"
        else:
            kind = "external"
    draft.protocol = draft.protocol or fields.protocol(rule)
    dport = rule.get("--dport")
    if dport and dport.isdigit() and draft.port is None:
        draft.port = int(dport)
    if kind == "cluster":
        draft.cluster_ip_chain = draft.cluster_ip_chain or rule.target
    elif kind == "loadbalancer":
        draft.load_balancer_chain = draft.load_balancer_chain or rule.target
    if ip is None:
        return
    bucket = {
        "cluster": draft.cluster_ips,
        "external": draft.external_ips,
        "loadbalancer": draft.load_balancer_ips,
    }[kind]
    if ip not in bucket:
        bucket.append(ip)


def _existing(table: NatTable, chain: str) -> str | None:
    return chain if table.has(chain) else None


def _resolve_port(table: NatTable, draft: fields.IptablesPortDraft) -> ResolvedServicePort:
    svc_chain = _existing(table, "KUBE-SVC-" + draft.hash)
    ext_chain = _existing(table, "KUBE-EXT-" + draft.hash)
    local_chain = _existing(table, "KUBE-SVL-" + draft.hash) or _existing(
        table, "KUBE-XLB-" + draft.hash
    )
    fw_chain = _existing(table, "KUBE-FW-" + draft.hash)

    # More comments that carry the ServicePortName, for when KUBE-SERVICES had none.
    for rule in table.rules(svc_chain) + table.rules(local_chain):
        comment = rule.comment or ""
        draft.name_candidate(comment.removesuffix(" cluster IP").split(" -> ")[0])
    for chain in (ext_chain, fw_chain):
        for rule in table.rules(chain):
            for pattern in (_EXT_COMMENT, _FW_COMMENT):
                match = pattern.match(rule.comment or "")
                if match:
                    draft.name_candidate(match.group(1))

    for chain in (svc_chain, local_chain, ext_chain, fw_chain):
        for rule in table.rules(chain):
            target = rule.target or ""
            if target.startswith(SEP_PREFIX) or fields.port_chain_hash(target):
                _require_chain(table, str(chain), target)
    protocol = draft.protocol or "tcp"
    endpoints = port_chains.load_balancing(table, svc_chain, protocol, draft)
    local_endpoints = port_chains.load_balancing(table, local_chain, protocol, draft)
    parsed = fields.parse_service_port_name(draft.names[0]) if draft.names else None
    return draft.resolved(
        port_name=parsed[2] if parsed else None,
        protocol=protocol,
        service_chain=svc_chain,
        external_chain=ext_chain,
        local_chain=local_chain,
        firewall_chain=fw_chain,
        external_policy=port_chains.external_policy(table, ext_chain),
        endpoints=endpoints,
        local_endpoints=local_endpoints,
        session_affinity=port_chains.session_affinity(table, svc_chain, local_chain),
        internal_policy=port_chains.policy_of(draft.cluster_ip_chain),
        load_balancer_source_ranges=port_chains.source_ranges(table, fw_chain, draft.load_balancer_ips),
        pod_cidrs=port_chains.pod_cidrs(table, ext_chain, svc_chain),
    )
