"""kube-proxy's nftables table (`ip kube-proxy`, or `ip6 kube-proxy` for its
IPv6 proxier) -> the Services it programs, as the same ResolvedService model
the iptables parser gives.

The ip6 table is laid out as the ip one, with `ip6 saddr/daddr` matches,
ipv6_addr sets and maps and `dnat to [addr]:port`; kube-proxy names its
chains the same in both (an endpoint chain spells the address with "." for
":": endpoint-...__fd00.10.180..1/80).

The walk follows what kube-proxy's nftables proxier writes
(kubernetes/kubernetes pkg/proxy/nftables/proxier.go, v1.31 and later; read at
commit b0f823e6, with the v1.29 layout of commit 01d7de54 also accepted):

    chain services:  ip daddr . meta l4proto . th dport vmap @service-ips
                     fib daddr type local ... meta l4proto . th dport vmap @service-nodeports
    map service-ips:       IP . proto . port : goto service-<B>   (cluster IP)
                           IP . proto . port : goto external-<B>  (external / LB IP)
    map service-nodeports: proto . nodePort  : goto external-<B>
    chain external-<B>:  jump mark-for-masquerade; goto service-<B>   (Cluster policy)
                         fib saddr type local ...; goto local-<B>     (Local policy)
    chain service-<B> / local-<B>:
                         numgen random mod N vmap { 0 : goto endpoint-<E0>, ... }
    chain endpoint-<E>:  ip saddr IP jump mark-for-masquerade; meta l4proto P dnat to IP:PORT

With sessionAffinity ClientIP, service-<B>/local-<B> start with `ip saddr
@affinity-<E> goto endpoint-<E>` per endpoint, endpoint-<E> records the
client (`update @affinity-<E> { ip saddr }`), and set affinity-<E> has the
timeout (session_affinity; not part of the split).

B is "HASH-ns/name/proto/portname" (naming.nft_service_chain_base), so every
chain spells out the Service it belongs to. An endpoint's share of new
connections is the fraction of the numgen vmap's N slots that point at its
chain (kube-proxy gives each endpoint one slot: 1/N).

Like the iptables parser, only service ports the dispatch maps reach are
services: kube-proxy keeps a removed service's chains for a second (flushed)
before deleting them. A Service without endpoints has no chains at all, only
elements in the filter chains' verdict maps, each commented with its
ServicePortName:

    map no-endpoint-services:  IP . proto . port : goto reject-chain
    map no-endpoint-nodeports: proto . nodePort  : goto reject-chain

(an IP in set cluster-ips is the cluster IP, the others external or LB IPs).
Such ports come back with no endpoints, no_endpoints set and reject_in
naming the maps. Elements whose verdict is `drop` (externalTrafficPolicy
Local without a local endpoint) belong to ports that have endpoints.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tracer.kube.local_drops import nft_local_drops, with_local_drops
from tracer.kube.model import SessionAffinity
from tracer.kube.naming import (
    NFT_AFFINITY_SET_PREFIX,
    NFT_ENDPOINT_CHAIN_PREFIX,
    NFT_EXTERNAL_CHAIN_PREFIX,
    NFT_FIREWALL_CHAIN_PREFIX,
    NFT_LOCAL_CHAIN_PREFIX,
    NFT_SERVICE_CHAIN_PREFIX,
)
from tracer.kube.nftables_table import KUBE_PROXY_FAMILY, KUBE_PROXY_TABLE, NftTable, read_nft_json
from tracer.kube.nftables_text import read_nft_text
from tracer.kube.resolved import (
    PartialRulesError,
    PortDraft,
    ResolvedEndpoint,
    ResolvedService,
    ResolvedServicePort,
    group_services,
)

SERVICE_IPS_MAP = "service-ips"
SERVICE_NODEPORTS_MAP = "service-nodeports"
FIREWALL_IPS_MAP = "firewall-ips"
NO_ENDPOINT_SERVICES_MAP = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS_MAP = "no-endpoint-nodeports"
CLUSTER_IPS_SET = "cluster-ips"
REJECT_CHAIN = "reject-chain"
MARK_MASQ_CHAIN = "mark-for-masquerade"

_PORT_CHAIN_PREFIXES = (
    NFT_SERVICE_CHAIN_PREFIX,
    NFT_LOCAL_CHAIN_PREFIX,
    NFT_EXTERNAL_CHAIN_PREFIX,
    NFT_FIREWALL_CHAIN_PREFIX,
)
NFT_CHAIN_PREFIXES = (*_PORT_CHAIN_PREFIXES, NFT_ENDPOINT_CHAIN_PREFIX)

# servicePortChainNameBase: 8 base32 characters, "-", then ns/name/proto/port.
_CHAIN_BASE = re.compile(
    r"^[A-Z2-7]{8}-([a-z0-9][-a-z0-9.]*)/([a-z0-9][-a-z0-9.]*)/(tcp|udp|sctp)/([-a-z0-9]*)$"
)


def split_port_chain(chain: str | None) -> tuple[str, str] | None:
    """"service-ABCD1234-ns/name/tcp/http" -> ("service-", "ABCD1234-ns/name/tcp/http")."""
    if not chain:
        return None
    for prefix in _PORT_CHAIN_PREFIXES:
        if chain.startswith(prefix):
            return prefix, chain[len(prefix) :]
    return None


def parse_chain_base(base: str) -> tuple[str, str, str, str] | None:
    """"ABCD1234-ns/name/tcp/http" -> (ns, name, protocol, port name); None
    for a name kube-proxy had to truncate ("...") or that is not its."""
    match = _CHAIN_BASE.match(base)
    return match.groups() if match else None  # type: ignore[return-value]


@dataclass(kw_only=True)
class _PortDraft(PortDraft):
    base: str


def read_nft(text: str, family: str = KUBE_PROXY_FAMILY, table: str = KUBE_PROXY_TABLE) -> NftTable:
    """The table family/table from nft JSON or nft text (either kind)."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return read_nft_json(text, family, table)
    return read_nft_text(text, family, table)


def parse_kube_proxy_table(text: str, family: str = KUBE_PROXY_FAMILY) -> list[ResolvedService]:
    """nft JSON or text of table FAMILY kube-proxy ("ip", or "ip6" for the
    IPv6 proxier's) -> its Services (sorted by namespace and name; services
    named only by a chain last)."""
    return resolve_services(read_nft(text, family))


def resolve_services(table: NftTable) -> list[ResolvedService]:
    drafts: dict[str, _PortDraft] = {}

    def draft_for(chain: str | None) -> tuple[str, _PortDraft] | None:
        parts = split_port_chain(chain)
        if parts is None:
            return None
        prefix, base = parts
        if base not in drafts:
            drafts[base] = _PortDraft(base=base)
        return prefix, drafts[base]

    firewalled = {e.key: e.target for e in table.elements.get(FIREWALL_IPS_MAP, [])}
    for element in table.elements.get(SERVICE_IPS_MAP, []):
        found = draft_for(element.target)
        if found is None or len(element.key) != 3:
            continue
        _require_chain(table, SERVICE_IPS_MAP, element.target)
        prefix, draft = found
        ip, protocol, port = element.key
        draft.protocol = draft.protocol or protocol
        if port.isdigit() and draft.port is None:
            draft.port = int(port)
        if prefix in (NFT_SERVICE_CHAIN_PREFIX, NFT_LOCAL_CHAIN_PREFIX):
            bucket = draft.cluster_ips
            draft.cluster_ip_chain = draft.cluster_ip_chain or element.target
        elif element.key in firewalled:
            # Only load-balancer IPs with loadBalancerSourceRanges are in
            # firewall-ips; other LB IPs go to external-<B> exactly as
            # external IPs do, with nothing in the table to tell them
            # apart, so they are listed as external IPs.
            bucket = draft.load_balancer_ips
            _require_chain(table, FIREWALL_IPS_MAP, firewalled[element.key])
            draft.load_balancer_chain = draft.load_balancer_chain or firewalled[element.key]
        else:
            bucket = draft.external_ips
        if ip not in bucket:
            bucket.append(ip)
    for element in table.elements.get(SERVICE_NODEPORTS_MAP, []):
        found = draft_for(element.target)
        if found is None or len(element.key) != 2 or not element.key[1].isdigit():
            continue
        _, draft = found
        _require_chain(table, SERVICE_NODEPORTS_MAP, element.target)
        draft.protocol = draft.protocol or element.key[0]
        draft.node_port = int(element.key[1])

    ports = []
    for draft in drafts.values():  # in the order the maps list them
        port = _resolve_port(table, draft)
        parsed = parse_chain_base(draft.base)
        name = (parsed[0], parsed[1]) if parsed else None
        ports.append((name, next(iter(port.chains()), NFT_SERVICE_CHAIN_PREFIX + draft.base), port))
    ports = with_local_drops(ports, nft_local_drops(table))
    ports += _rejected_ports(table)
    return group_services(ports, name_source="chain-name")


# ServicePortName.String(): "ns/name" or "ns/name:port".
_SERVICE_PORT_NAME = re.compile(r"^([a-z0-9][-a-z0-9.]*)/([a-z0-9][-a-z0-9.]*)(?::([-a-z0-9]*))?$")


def _rejected_ports(table: NftTable) -> list[tuple[tuple[str, str], str, ResolvedServicePort]]:
    """The service ports whose traffic the no-endpoint-* maps send to
    reject-chain, named by the elements' comments, in map order."""
    cluster_ips = {e.key[0] for e in table.elements.get(CLUSTER_IPS_SET, []) if e.key}
    drafts: dict[str, PortDraft] = {}
    maps: dict[str, list[str]] = {}
    for map_name, width in ((NO_ENDPOINT_SERVICES_MAP, 3), (NO_ENDPOINT_NODEPORTS_MAP, 2)):
        for element in table.elements.get(map_name, []):
            spn = element.comment or ""
            rejects = element.verdict == "goto" and element.target == REJECT_CHAIN
            if not rejects or len(element.key) != width or not _SERVICE_PORT_NAME.match(spn):
                continue
            *ip, protocol, port = element.key
            if not port.isdigit():
                continue
            draft = drafts.setdefault(spn, PortDraft())
            draft.protocol = draft.protocol or protocol
            if not ip:
                draft.node_port = int(port)
            else:
                bucket = draft.cluster_ips if ip[0] in cluster_ips else draft.external_ips
                if ip[0] not in bucket:
                    bucket.append(ip[0])
                if draft.port is None or ip[0] in cluster_ips:
                    draft.port = int(port)
            if map_name not in maps.setdefault(spn, []):
                maps[spn].append(map_name)
    out = []
    for spn, draft in drafts.items():
        match = _SERVICE_PORT_NAME.match(spn)
        assert match is not None
        port_ = draft.resolved(port_name=match.group(3) or "", protocol=draft.protocol or "tcp",
                               no_endpoints=True, reject_in=tuple(maps[spn]))
        out.append(((match.group(1), match.group(2)), spn, port_))
    return out


def _require_chain(table: NftTable, jumper: str, chain: str | None) -> None:
    """A verdict naming a chain the text does not hold: a partial
    transaction (kube-proxy leaves unchanged services' chains out)."""
    if chain and not table.has_chain(chain):
        raise PartialRulesError(jumper, chain)


def _existing(table: NftTable, chain: str) -> str | None:
    return chain if table.has_chain(chain) else None


def _resolve_port(table: NftTable, draft: _PortDraft) -> ResolvedServicePort:
    svc_chain = _existing(table, NFT_SERVICE_CHAIN_PREFIX + draft.base)
    ext_chain = _existing(table, NFT_EXTERNAL_CHAIN_PREFIX + draft.base)
    local_chain = _existing(table, NFT_LOCAL_CHAIN_PREFIX + draft.base)
    fw_chain = _existing(table, NFT_FIREWALL_CHAIN_PREFIX + draft.base)
    parsed = parse_chain_base(draft.base)
    protocol = draft.protocol or (parsed[2] if parsed else "tcp")
    for chain in (svc_chain, ext_chain, local_chain, fw_chain):
        for rule in table.rules(chain):
            for target in (rule.target, *(t for _, t in rule.numgen_targets)):
                if target and target.startswith(NFT_CHAIN_PREFIXES):
                    _require_chain(table, str(chain), target)
    if draft.load_balancer_ips and draft.load_balancer_chain is None:
        draft.load_balancer_chain = ext_chain
    return draft.resolved(
        port_name=parsed[3] if parsed else None,
        protocol=protocol,
        service_chain=svc_chain,
        external_chain=ext_chain,
        local_chain=local_chain,
        firewall_chain=fw_chain,
        external_policy=_external_policy(table, ext_chain),
        endpoints=_load_balancing(table, svc_chain, protocol),
        local_endpoints=_load_balancing(table, local_chain, protocol),
        session_affinity=_session_affinity(table, svc_chain, local_chain),
        internal_policy=_policy_of(draft.cluster_ip_chain),
        load_balancer_source_ranges=_source_ranges(table, fw_chain, draft.load_balancer_ips),
        pod_cidrs=_pod_cidrs(table, ext_chain, svc_chain),
    )


def _policy_of(chain: str | None) -> str | None:
    """The policy a chain implements: service-<B> Cluster, local-<B> Local."""
    prefix = (split_port_chain(chain) or ("", ""))[0]
    return {NFT_SERVICE_CHAIN_PREFIX: "Cluster", NFT_LOCAL_CHAIN_PREFIX: "Local"}.get(prefix)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def _source_ranges(table: NftTable, fw_chain: str | None, lb_ips: list[str]) -> tuple[str, ...]:
    """loadBalancerSourceRanges from firewall-<B>'s `ip saddr != { ... } drop`,
    less the LB IPs themselves (admitted too when a range holds the node's IP)."""
    lb_hosts = {_cidr(ip) for ip in lb_ips}
    out: list[str] = []
    for rule in table.rules(fw_chain):
        if rule.verdict != "drop" or not rule.saddr_negated:
            continue
        for value in rule.saddr_set or ((rule.saddr,) if rule.saddr else ()):
            cidr = _cidr(value)
            if cidr not in lb_hosts and cidr not in out:
                out.append(cidr)
    return tuple(out)


def _pod_cidrs(table: NftTable, ext_chain: str | None, svc_chain: str | None) -> tuple[str, ...]:
    """The sources external-<B> short-circuits to service-<B> under external
    policy Local (kube-proxy's "short-circuit pod traffic": `ip saddr <clusterCIDR>`)."""
    return tuple(
        _cidr(rule.saddr)
        for rule in table.rules(ext_chain)
        if rule.saddr and not rule.saddr_negated and rule.target == svc_chain
    )


def _session_affinity(table: NftTable, *chains: str | None) -> SessionAffinity | None:
    """ClientIP affinity: kube-proxy heads service-*/local-* with one rule per
    endpoint, `ip saddr @affinity-E goto endpoint-E`; the set affinity-E
    (flags dynamic,timeout) holds the clients endpoint-E's `update
    @affinity-E { ip saddr }` recorded, each for the set's timeout."""
    for chain in chains:
        for rule in table.rules(chain):
            name = rule.saddr_in_set or ""
            if name.startswith(NFT_AFFINITY_SET_PREFIX) and rule.verdict in ("goto", "jump"):
                return SessionAffinity(table.set_timeouts.get(name))
    return None


def _external_policy(table: NftTable, ext_chain: str | None) -> str | None:
    """Cluster when external-* masquerades everything (an unconditional jump
    to mark-for-masquerade); Local when it masquerades only node-originated
    traffic (`fib saddr type local`)."""
    rules = table.rules(ext_chain)
    if not rules:
        return None
    for rule in rules:
        unconditional = not rule.fib_saddr_local and rule.saddr is None
        if rule.verdict == "jump" and rule.target == MARK_MASQ_CHAIN and unconditional:
            return "Cluster"
    return "Local"


def _load_balancing(
    table: NftTable, chain: str | None, protocol: str
) -> tuple[ResolvedEndpoint, ...]:
    """The endpoint choice of a service-*/local-* chain: the numgen vmap.

    Session-affinity rules (`ip saddr @affinity-... goto endpoint-...`) only
    send returning clients back and are not part of the split."""
    for rule in table.rules(chain):
        if rule.numgen_mod is None or rule.numgen_mod <= 0:
            continue
        slots: dict[str, int] = {}
        for _, target in sorted(rule.numgen_targets):
            slots[target] = slots.get(target, 0) + 1
        out = []
        for endpoint_chain, count in slots.items():
            destination = _dnat_destination(table, endpoint_chain)
            if destination is None:
                continue
            ip, port, ep_protocol = destination
            share = count / rule.numgen_mod
            out.append(
                ResolvedEndpoint(
                    ip=ip,
                    port=port,
                    protocol=ep_protocol or protocol,
                    probability=share,
                    share=share,
                    chain=endpoint_chain,
                )
            )
        return tuple(out)
    return ()


def _dnat_destination(table: NftTable, endpoint_chain: str) -> tuple[str, int, str | None] | None:
    for rule in table.rules(endpoint_chain):
        if rule.dnat_to is not None and rule.dnat_to[1] is not None:
            return rule.dnat_to[0], rule.dnat_to[1], rule.l4proto
    return None
