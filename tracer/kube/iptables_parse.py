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
traffic in the filter table (tracer.kube.iptables_filter), one rule per
destination with the comment "ns/name:port has no endpoints":

    filter KUBE-SERVICES           -d VIP --dport P             -j REJECT
    filter KUBE-EXTERNAL-SERVICES  -d EXT-IP --dport P          -j REJECT
                                   --dst-type LOCAL --dport N   -j REJECT  (node port)

Such ports come back with no endpoints, no_endpoints set and reject_in
naming those chains. Text without a "*filter" section (`iptables-save -t
nat`) has none.

Accepts iptables-save output of both backends (nft and legacy), with or
without counters (`-c`: "[pkts:bytes] -A ..."), kube-proxy's own restore input,
and tables with unrelated chains (Docker, Calico's cali-*). Chains that no
rule jumps to (stale ones kube-proxy has not deleted yet) are not services.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from tracer.kube.iptables_table import NatTable, Rule, read_nat_table, read_table
from tracer.kube.local_drops import iptables_local_drops, with_local_drops
from tracer.kube.model import SessionAffinity

# The result types live in tracer.kube.resolved (shared with the nftables
# parser); they are re-exported here, where callers have always found them.
from tracer.kube.resolved import (
    Address,
    PartialRulesError,
    PortDraft,
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

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
NO_ENDPOINTS_SUFFIX = " has no endpoints"
SEP_PREFIX = "KUBE-SEP-"

# Per-service-port chain prefixes; KUBE-XLB- is the Local-policy chain of
# kube-proxy releases before the KUBE-SVL/KUBE-EXT split (v1.24), kept so
# older nodes (like the seed article's) still resolve.
_PORT_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")

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
# ServicePortName.String(): "ns/name" or "ns/name:port" ("ns/name:" on old releases).
_SERVICE_PORT_NAME = re.compile(r"^([a-z0-9][-a-z0-9.]*)/([a-z0-9][-a-z0-9.]*)(?::([-a-z0-9]*))?$")

# --- resolving ---------------------------------------------------------------------------


def _port_chain_hash(chain: str | None) -> tuple[str, str] | None:
    """KUBE-EXT-ABC -> ("KUBE-EXT-", "ABC")."""
    if not chain:
        return None
    for prefix in _PORT_CHAIN_PREFIXES:
        if chain.startswith(prefix) and len(chain) > len(prefix):
            return prefix, chain[len(prefix) :]
    return None


def _address(value: str | None) -> str | None:
    """"10.96.0.10/32" -> "10.96.0.10" (iptables-save adds the /32)."""
    if not value:
        return None
    host, _, length = value.partition("/")
    if length in ("", "32", "128"):
        return host
    return value


def _split_host_port(value: str) -> tuple[str, int] | None:
    """"10.0.0.1:80" or "[fd00::1]:80" -> (ip, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = value.rpartition(":")
    port = port.split("-")[0]  # a port range: its first port
    try:
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError:
        return None


def _parse_service_port_name(text: str | None) -> tuple[str, str, str] | None:
    """"ns/name:port" -> (ns, name, port); "ns/name" -> (ns, name, "")."""
    if not text:
        return None
    match = _SERVICE_PORT_NAME.match(text.strip())
    if not match:
        return None
    return match.group(1), match.group(2), match.group(3) or ""


@dataclass(kw_only=True)
class _PortDraft(PortDraft):
    hash: str
    names: list[str] = field(default_factory=list)  # candidate ServicePortName strings

    def name_candidate(self, text: str | None) -> None:
        if text and _parse_service_port_name(text) and text not in self.names:
            self.names.append(text)


def parse_iptables_nat_rules(iptables_save_text: str) -> list[ResolvedService]:
    """Every service port kube-proxy programmed, grouped into services, from
    iptables-save (or iptables-restore) text. (rules_source.parse_kube_proxy_rules
    takes nftables mode's rules too.)

    Sorted by namespace and name (chain-named services last, by chain)."""
    table = read_nat_table(iptables_save_text)
    drafts: dict[str, _PortDraft] = {}

    def draft_for(chain: str | None) -> _PortDraft | None:
        parts = _port_chain_hash(chain)
        if parts is None:
            return None
        key = parts[1]
        if key not in drafts:
            drafts[key] = _PortDraft(hash=key)
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
        draft.protocol = draft.protocol or _protocol(rule)
        draft.name_candidate(rule.comment)

    ports = []
    for draft in drafts.values():  # in the order KUBE-SERVICES lists them
        port = _resolve_port(table, draft)
        parsed = _parse_service_port_name(draft.names[0]) if draft.names else None
        name = (parsed[0], parsed[1]) if parsed else None
        ports.append((name, next(iter(port.chains()), "KUBE-SVC-" + draft.hash), port))
    filter_table = read_table(iptables_save_text, "filter")
    ports = with_local_drops(ports, iptables_local_drops(filter_table))
    ports += _rejected_ports(filter_table)
    return group_services(ports, name_source="comment")


def _rejected_ports(
    table: NatTable,
) -> list[tuple[tuple[str, str], str, ResolvedServicePort]]:
    """The service ports kube-proxy REJECTs in the filter table for want of
    endpoints, named by their comments, in the order the rules list them."""
    drafts: dict[str, _PortDraft] = {}
    chains: dict[str, list[str]] = {}
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES):
        for rule in table.rules(chain):
            comment = rule.comment or ""
            spn = comment.removesuffix(NO_ENDPOINTS_SUFFIX)
            if rule.target != "REJECT" or spn == comment or not _parse_service_port_name(spn):
                continue
            draft = drafts.setdefault(spn, _PortDraft(hash="", names=[spn]))
            draft.protocol = draft.protocol or _protocol(rule)
            dport = rule.get("--dport")
            ip = _address(rule.get("-d"))
            if dport is None or not dport.isdigit():
                continue
            if chain == KUBE_SERVICES:
                draft.port = int(dport)
                if ip and ip not in draft.cluster_ips:
                    draft.cluster_ips.append(ip)
            elif ip is None:  # `-m addrtype --dst-type LOCAL`: the node port
                draft.node_port = int(dport)
            elif ip not in draft.external_ips:
                # External and load-balancer IPs share the chain and comment.
                draft.external_ips.append(ip)
                draft.port = draft.port or int(dport)
            if chain not in chains.setdefault(spn, []):
                chains[spn].append(chain)
    out = []
    for spn, draft in drafts.items():
        ns, name, port_name = _parse_service_port_name(spn) or ("", "", "")
        port = draft.resolved(port_name=port_name, protocol=draft.protocol or "tcp",
                              no_endpoints=True, reject_in=tuple(chains[spn]))
        out.append(((ns, name), spn, port))
    return out


def _require_chain(table: NatTable, jumper: str, chain: str | None) -> None:
    """A jump to a chain the text does not declare: kube-proxy's partial
    restore input (unchanged services' chains left out), not a whole table."""
    if chain and not table.has(chain):
        raise PartialRulesError(jumper, chain)


def _protocol(rule: Rule) -> str | None:
    value = rule.get("-p")
    return value.lower() if value else None


def _add_vip(draft: _PortDraft, rule: Rule) -> None:
    ip = _address(rule.get("-d"))
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
        prefix = (_port_chain_hash(rule.target) or ("", ""))[0]
        if prefix in ("KUBE-SVC-", "KUBE-SVL-") and not draft.cluster_ips:
            kind = "cluster"
        elif prefix == "KUBE-FW-":
            kind = "loadbalancer"
        else:
            kind = "external"
    draft.protocol = draft.protocol or _protocol(rule)
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


def _resolve_port(table: NatTable, draft: _PortDraft) -> ResolvedServicePort:
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
            if target.startswith(SEP_PREFIX) or _port_chain_hash(target):
                _require_chain(table, str(chain), target)
    protocol = draft.protocol or "tcp"
    endpoints = _load_balancing(table, svc_chain, protocol, draft)
    local_endpoints = _load_balancing(table, local_chain, protocol, draft)
    parsed = _parse_service_port_name(draft.names[0]) if draft.names else None
    return draft.resolved(
        port_name=parsed[2] if parsed else None,
        protocol=protocol,
        service_chain=svc_chain,
        external_chain=ext_chain,
        local_chain=local_chain,
        firewall_chain=fw_chain,
        external_policy=_external_policy(table, ext_chain),
        endpoints=endpoints,
        local_endpoints=local_endpoints,
        session_affinity=_session_affinity(table, svc_chain, local_chain),
        internal_policy=_policy_of(draft.cluster_ip_chain),
        load_balancer_source_ranges=_source_ranges(table, fw_chain, draft.load_balancer_ips),
        pod_cidrs=_pod_cidrs(table, ext_chain, svc_chain),
    )


def _session_affinity(table: NatTable, *chains: str | None) -> SessionAffinity | None:
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


def _policy_of(chain: str | None) -> str | None:
    """The policy a chain implements: KUBE-SVC Cluster, KUBE-SVL (KUBE-XLB) Local."""
    prefix = (_port_chain_hash(chain) or ("", ""))[0]
    return {"KUBE-SVC-": "Cluster", "KUBE-SVL-": "Local", "KUBE-XLB-": "Local"}.get(prefix)


def _cidr(value: str) -> str:
    """"203.0.113.7" or "203.0.113.0/24" -> the network as kube-proxy writes it."""
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def _source_ranges(table: NatTable, fw_chain: str | None, lb_ips: list[str]) -> tuple[str, ...]:
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


def _pod_cidrs(table: NatTable, ext_chain: str | None, svc_chain: str | None) -> tuple[str, ...]:
    """The sources KUBE-EXT short-circuits to KUBE-SVC under external policy
    Local ("pod traffic for ... external destinations": `-s <clusterCIDR>`)."""
    out = []
    for rule in table.rules(ext_chain):
        source = rule.get("-s")
        pod_rule = source and "-s" not in rule.negated and rule.target == svc_chain
        if pod_rule and _cidr(str(source)) not in out:
            out.append(_cidr(str(source)))
    return tuple(out)


def _external_policy(table: NatTable, ext_chain: str | None) -> str | None:
    """Cluster when KUBE-EXT masquerades everything; Local when it only
    masquerades node-originated (--src-type LOCAL) traffic."""
    rules = table.rules(ext_chain)
    if not rules:
        return None
    for rule in rules:
        if rule.target == KUBE_MARK_MASQ and "--src-type" not in rule.options:
            return "Cluster"
    return "Local"


def _load_balancing(
    table: NatTable, chain: str | None, protocol: str, draft: _PortDraft
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
    table: NatTable, sep_chain: str, draft: _PortDraft
) -> tuple[str, int, str | None] | None:
    for rule in table.rules(sep_chain):
        draft.name_candidate(rule.comment)
        if rule.target == "DNAT" and rule.get("--to-destination"):
            parts = _split_host_port(rule.get("--to-destination") or "")
            if parts is not None:
                return parts[0], parts[1], _protocol(rule)
    return None

