"""Services + Endpoints -> the nftables transaction kube-proxy's nftables mode
hands to `nft -f -` on its first full sync, for table `ip kube-proxy`.

Follows kubernetes/kubernetes pkg/proxy/nftables/proxier.go at commit b0f823e6
(v1.31+ layout: setupNFTables(), syncProxyRules(),
writeServiceToEndpointRules()), and the text knftables (sigs.k8s.io/knftables,
objects.go writeOperation) produces for each object, operation by operation:

    add table ip kube-proxy { comment "rules for kube-proxy" ; }
    add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
    add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
    add element ip kube-proxy service-ips { 10.96.88.88 . tcp . 8088 : goto service-... }
    add rule ip kube-proxy service-... numgen random mod 2 vmap { 0 : goto endpoint-... , ... }
    add rule ip kube-proxy endpoint-... meta l4proto tcp dnat to 10.217.120.72:80

Per service port (sorted by ServicePortName; kube-proxy walks a Go map, so
its order differs from run to run, the resulting table does not):
cluster-ips set, service-ips / service-nodeports elements (or the
no-endpoint-* elements when the service has no endpoints), the service-,
external-, local-, firewall- and endpoint- chains: internalTrafficPolicy Local
(the cluster IP enters local-, or is dropped without a local endpoint),
externalTrafficPolicy Local, loadBalancerSourceRanges (firewall-ips elements
and a firewall- chain that drops other sources), and with sessionAffinity
ClientIP each endpoint's affinity- set (`ip saddr @affinity-... goto
endpoint-...` heading the service-/local- chain, `update @affinity-... { ip
saddr }` in the endpoint chain). Not modelled, as in iptables_render:
topology, masqueradeAll, terminating endpoints.

IPv6 (family="ipv6"): the transaction of kube-proxy's IPv6 proxier, for table
`ip6 kube-proxy`: the same objects over the Services' IPv6 part (see
tracer.kube.proxy_plan) with `ip6 saddr/daddr`, ipv6_addr sets and maps and
`dnat to [addr]:port`; node ports on any local address exclude `ip6 daddr
!= ::1` (kube-proxy's IPv6 spelling of the localhost exclusion, which no
kube-proxy fixture here covers; the node-ips form is checked against one).

One deliberate, opt-in difference: endpoint_counters=True puts a `counter` in
each endpoint chain's DNAT rule and in reject-chain's reject (what Services
without endpoints are refused by). kube-proxy writes no counters at all; the
lab adds them so tests can compare the tracer's DNAT choices and refusals
with the kernel's own count (see tracer.lab.kubeproxy).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from tracer.errors import UsageError
from tracer.kube import naming
from tracer.kube.model import Endpoint, Service, ServicePort, SessionAffinity
from tracer.kube.nftables_table import KUBE_PROXY_FAMILY, KUBE_PROXY_FAMILY6, KUBE_PROXY_TABLE
from tracer.kube.proxy_plan import PortPlan, check_node_options, plan_service_port, port_endpoints

# fmt.Sprintf("%#08x", 1 << 14): kube-proxy's default --masquerade-bit.
MASQUERADE_MARK = "0x004000"
# kubeadm's default service CIDR, for the "unallocated ClusterIPs" drop rule
# kube-proxy writes once it has read the cluster's ServiceCIDR objects.
SERVICE_CIDRS = ("10.96.0.0/12",)

# knftables.ParsePriority for the ip family: dstnat = -100, srcnat = 100.
_BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# nftablesJumpChains: (destination, source, extra match), in kube-proxy's order.
_JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)
MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"


class _Transaction:
    """knftables.Transaction for one table: each call is one line of `nft -f`."""

    def __init__(self, family: str = "ipv4") -> None:
        self.lines: list[str] = []
        self.created: set[str] = set()
        self.family = family
        # The nft family of the table and of address matches ("ip daddr",
        # "ip6 saddr"), and the sets' address type.
        self.ip = KUBE_PROXY_FAMILY6 if family == "ipv6" else KUBE_PROXY_FAMILY
        self.addr_type = "ipv6_addr" if family == "ipv6" else "ipv4_addr"
        self.where = f"{self.ip} {KUBE_PROXY_TABLE}"

    def op(self, verb: str, kind: str, rest: str) -> None:
        self.lines.append(f"{verb} {kind} {self.where} {rest}".rstrip())

    def ensure_chain(self, chain: str) -> None:
        """ensureChain: add and flush a regular chain once per transaction."""
        if chain in self.created:
            return
        self.created.add(chain)
        self.op("add", "chain", chain)
        self.op("flush", "chain", chain)

    def rule(self, chain: str, *words: str | int, comment: str | None = None) -> None:
        text = " ".join(str(w) for w in words if w != "")
        self.op("add", "rule", f"{chain} {text}" + (f' comment "{comment}"' if comment else ""))

    def element(self, name: str, key: Sequence[str | int], value: str | None = None,
                comment: str | None = None) -> None:
        body = " . ".join(str(k) for k in key)
        if comment:
            body += f' comment "{comment}"'
        if value is not None:
            body += f" : {value}"
        self.op("add", "element", f"{name} {{ {body} }}")


def render_kube_proxy_table(
    services: Iterable[Service],
    endpoints: Mapping[tuple[str, str], Sequence[Endpoint]],
    *,
    node_ips: Sequence[str],
    cluster_cidr: str | None = "10.217.0.0/16",
    node_name: str | None = None,
    nodeport_addresses: str = "all",
    masquerade_mark: str = MASQUERADE_MARK,
    service_cidrs: Sequence[str] = SERVICE_CIDRS,
    endpoint_counters: bool = False,
    replace_table: bool = False,
    family: str = "ipv4",
) -> str:
    """The `nft -f` input of kube-proxy's first full sync on this node.

    Arguments as render_nat_table (tracer.kube.iptables_render), plus:
    service_cidrs: kube-proxy's drop rule for unallocated cluster IPs
        (empty: no such rule, as before kube-proxy has seen ServiceCIDRs).
    endpoint_counters: add `counter` to each endpoint's DNAT rule and to
        reject-chain's rule (not kube-proxy's output; see the module docstring).
    replace_table: start with "add table; delete table" so loading the text
        replaces whatever table ip kube-proxy held (kube-proxy instead flushes
        stale chains and deletes them a second later; the lab reloads whole).
    family: "ipv4", or "ipv6" for the IPv6 proxier's table ip6 kube-proxy
        (node_ips, cluster_cidr and service_cidrs then of IPv6; see
        render_nat_table).
    """
    node_addresses, cluster_cidr = check_node_options(
        node_ips, nodeport_addresses, cluster_cidr, family)
    network = ipaddress.IPv6Network if family == "ipv6" else ipaddress.IPv4Network
    cidrs = []
    for cidr in service_cidrs:
        try:
            cidrs.append(str(network(cidr)))
        except ValueError as exc:
            raise UsageError(f"service CIDR {cidr!r}: {exc}") from None

    # kube-proxy's nodeIP: the primary node address (source ranges holding
    # it also admit the LB IPs).
    node_ip = str(node_addresses[0]) if node_addresses else None
    tx = _Transaction(family)
    if replace_table:
        tx.lines += [f"add table {tx.where}", f"delete table {tx.where}"]
    _setup(tx, node_addresses if nodeport_addresses == "node-ips" else None,
           masquerade_mark, cidrs, reject_counter=endpoint_counters)

    plan = sorted(
        (
            (naming.service_port_name(s.namespace, s.name, p.name), s, p)
            for s in services
            if s.cluster_ip_for(family)
            for p in s.ports
        ),
        key=lambda item: item[0],
    )
    for _, service, port in plan:
        chosen = port_endpoints(service, port, endpoints.get(service.key, ()), family)
        _render_service_port(tx, service, port, chosen, cluster_cidr, node_name,
                             endpoint_counters, node_ip)
    return "\n".join(tx.lines) + "\n"


def _setup(
    tx: _Transaction,
    nodeport_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None,
    mark: str,
    service_cidrs: list[str],
    *,
    reject_counter: bool = False,
) -> None:
    """setupNFTables: the table, base chains, jump chains and fixed rules."""
    ip, addr_type = tx.ip, tx.addr_type
    no_localhost = "ip6 daddr != ::1" if tx.family == "ipv6" else "ip daddr != 127.0.0.0/8"
    tx.lines.append(f'add table {tx.where} {{ comment "rules for kube-proxy" ; }}')
    # First sync only (proxier.flushed false): add+delete every base chain so
    # that changed properties (priority) can be set.
    for name, _, _, _ in _BASE_CHAINS:
        tx.op("add", "chain", name)
        tx.op("delete", "chain", name)
    for name, kind, hook, priority in _BASE_CHAINS:
        tx.op("add", "chain", f"{name} {{ type {kind} hook {hook} priority {priority} ; }}")
        tx.op("flush", "chain", name)
    for destination, source, extra in _JUMP_CHAINS:
        tx.ensure_chain(destination)
        tx.rule(source, extra, "jump", destination)
    for chain in ("services", "cluster-ips-check", "masquerading", MARK_MASQ):
        tx.ensure_chain(chain)

    tx.rule(MARK_MASQ, "mark set mark or", mark)
    tx.rule("masquerading", "mark and", mark, "==", 0, "return")
    tx.rule("masquerading", "mark set mark xor", mark)
    tx.rule("masquerading", "masquerade fully-random")

    tx.op("add", "set", f'cluster-ips {{ type {addr_type} ; comment "Active ClusterIPs" ; }}')
    tx.rule("cluster-ips-check", f"{ip} daddr @cluster-ips reject",
            comment="Reject traffic to invalid ports of ClusterIPs")
    if service_cidrs:
        tx.rule("cluster-ips-check", f"{ip} daddr {{", ", ".join(service_cidrs), "} drop",
                comment="Drop traffic to unallocated ClusterIPs")

    tx.op("add", "set", f'nodeport-ips {{ type {addr_type} ; '
          'comment "IPs that accept NodePort traffic" ; }')
    if nodeport_ips is None:
        tx.op("delete", "set", "nodeport-ips")
    else:
        tx.op("flush", "set", "nodeport-ips")
        for node_address in nodeport_ips:
            if not node_address.is_loopback:  # kube-proxy: localhost NodePorts are not supported
                tx.element("nodeport-ips", [str(node_address)])

    tx.op("add", "map", f"no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : verdict ; "
          'comment "vmap to drop or reject packets to services with no endpoints" ; }')
    tx.op("add", "map", "no-endpoint-nodeports { type inet_proto . inet_service : verdict ; "
          'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }')
    tx.op("add", "chain", f'{REJECT_CHAIN} {{ comment "helper for @no-endpoint-services / '
          '@no-endpoint-nodeports" ; }')
    tx.op("flush", "chain", REJECT_CHAIN)
    tx.rule(REJECT_CHAIN, "counter" if reject_counter else "", "reject")
    tx.rule("service-endpoints-check", f"{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services")
    nodeport_match = no_localhost if nodeport_ips is None else f"{ip} daddr @nodeport-ips"
    tx.rule("nodeport-endpoints-check", nodeport_match,
            "meta l4proto . th dport vmap @no-endpoint-nodeports")

    tx.op("add", "map", f"firewall-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; "
          'comment "destinations that are subject to LoadBalancerSourceRanges" ; }')
    tx.ensure_chain("firewall-check")
    tx.rule("firewall-check", f"{ip} daddr . meta l4proto . th dport vmap @firewall-ips")

    tx.op("add", "map", f"service-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; "
          'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }')
    tx.op("add", "map", 'service-nodeports { type inet_proto . inet_service : verdict ; '
          'comment "NodePort traffic" ; }')
    tx.rule("services", f"{ip} daddr . meta l4proto . th dport vmap @service-ips")
    if nodeport_ips is None:
        tx.rule("services", "fib daddr type local", no_localhost,
                "meta l4proto . th dport vmap @service-nodeports")
    else:
        tx.rule("services", f"{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")

    # nftElementStorage.reset: every sync starts these from empty.
    tx.op("flush", "set", "cluster-ips")
    for name in ("service-ips", "firewall-ips", "no-endpoint-services",
                 "no-endpoint-nodeports", "service-nodeports"):
        tx.op("flush", "map", name)


def _render_service_port(
    tx: _Transaction,
    service: Service,
    port: ServicePort,
    endpoints: list[Endpoint],
    cluster_cidr: str | None,
    node_name: str | None,
    endpoint_counters: bool,
    node_ip: str | None = None,
) -> None:
    plan = plan_service_port(service, port, endpoints, node_name, tx.family)
    proto, ip = plan.proto, tx.ip
    ns, name, pname = service.namespace, service.name, port.name
    cluster_chain = naming.nft_service_chain(ns, name, proto, pname)
    local_chain = naming.nft_local_chain(ns, name, proto, pname)
    external_chain = naming.nft_external_chain(ns, name, proto, pname)
    firewall_chain = naming.nft_firewall_chain(ns, name, proto, pname)
    internal_chain = local_chain if plan.internal_policy_local else cluster_chain
    uses_external_chain = plan.has_endpoints and plan.externally_accessible

    def endpoint_chain(e: Endpoint) -> str:
        return naming.nft_endpoint_chain(ns, name, proto, pname, e.ip, e.port)

    def affinity_set(e: Endpoint) -> str:
        return naming.nft_affinity_set(ns, name, proto, pname, e.ip, e.port)

    affinity = service.session_affinity

    for endpoint in plan.reachable_endpoints:
        tx.ensure_chain(endpoint_chain(endpoint))
    if plan.uses_cluster_chain:
        tx.ensure_chain(cluster_chain)
    if plan.uses_local_chain:
        tx.ensure_chain(local_chain)
    if uses_external_chain:
        tx.ensure_chain(external_chain)

    _write_map_elements(tx, plan, port, internal_chain, external_chain, firewall_chain)

    # Internal traffic: masquerade what does not come from the pod network.
    if plan.has_internal_endpoints and cluster_cidr is not None:
        tx.rule(internal_chain, f"{ip} daddr", plan.cluster_ip, proto, "dport", port.port,
                f"{ip} saddr !=", cluster_cidr, "jump", MARK_MASQ)
    if uses_external_chain:
        _write_external_chain(tx, plan, cluster_cidr, external_chain, cluster_chain, local_chain)
    if plan.uses_firewall:
        _write_firewall_chain(tx, plan, firewall_chain, node_ip)

    if affinity is not None:
        for endpoint in plan.reachable_endpoints:
            _add_affinity_set(tx, affinity_set(endpoint), affinity)
    for chain, chosen in ((cluster_chain, plan.cluster_endpoints if plan.uses_cluster_chain else []),
                          (local_chain, plan.local_endpoints if plan.uses_local_chain else [])):
        if not chosen:
            continue
        if affinity is not None:  # returning clients first, to the endpoint they had
            for endpoint in chosen:
                tx.rule(chain, f"{ip} saddr @" + affinity_set(endpoint), "goto", endpoint_chain(endpoint))
        _write_load_balancing(tx, chain, [endpoint_chain(e) for e in chosen])

    for endpoint in plan.reachable_endpoints:
        chain = endpoint_chain(endpoint)
        # Hairpin: a pod reaching itself through the service is masqueraded.
        tx.rule(chain, f"{ip} saddr", endpoint.ip, "jump", MARK_MASQ)
        if affinity is not None:  # remember this client for this endpoint
            tx.rule(chain, "update @" + affinity_set(endpoint), f"{{ {ip} saddr }}")
        counter = "counter" if endpoint_counters else ""
        tx.rule(chain, "meta l4proto", proto, counter, "dnat to",
                naming.endpoint_string(endpoint.ip, endpoint.port))


def _write_firewall_chain(
    tx: _Transaction, plan: PortPlan, firewall_chain: str, node_ip: str | None
) -> None:
    """firewall-<B>: loadBalancerSourceRanges. firewall-check (filter
    prerouting/output) sends the LB IP's new connections here; sources
    outside the ranges are dropped before any DNAT."""
    sources = list(plan.source_ranges)
    if plan.firewall_admits_lb_ips(node_ip):
        sources += plan.lb_ips
    # knftables.Concat joins every word with a space: "{ a , b }".
    tx.rule(firewall_chain, f"{tx.ip} saddr != {{", " , ".join(sources), "} drop")


def _write_map_elements(
    tx: _Transaction,
    plan: PortPlan,
    port: ServicePort,
    internal_chain: str,
    external_chain: str,
    firewall_chain: str,
) -> None:
    """The port's elements in the dispatch maps (cluster-ips, service-ips,
    firewall-ips, service-nodeports), or in the no-endpoint-* maps for what
    has no endpoint (reject) or no local one (drop)."""
    proto, spn, cluster_ip = plan.proto, plan.spn, plan.cluster_ip
    reject = f"goto {REJECT_CHAIN}"
    external_filter = reject if not plan.has_endpoints else "drop"
    tx.element("cluster-ips", [cluster_ip])
    if plan.has_internal_endpoints:
        tx.element("service-ips", [cluster_ip, proto, port.port], f"goto {internal_chain}")
    else:
        internal_filter = reject if not plan.has_endpoints else "drop"
        tx.element("no-endpoint-services", [cluster_ip, proto, port.port], internal_filter,
                   comment=spn)
    for ip in plan.external_ips:
        if plan.has_endpoints:
            tx.element("service-ips", [ip, proto, port.port], f"goto {external_chain}")
        if not plan.has_external_endpoints:
            tx.element("no-endpoint-services", [ip, proto, port.port], external_filter, comment=spn)
    if plan.uses_firewall:
        tx.ensure_chain(firewall_chain)
    for ip in plan.lb_ips:
        if plan.has_endpoints:
            tx.element("service-ips", [ip, proto, port.port], f"goto {external_chain}")
        if plan.uses_firewall:
            tx.element("firewall-ips", [ip, proto, port.port], f"goto {firewall_chain}")
    if not plan.has_external_endpoints:
        for ip in plan.lb_ips:
            tx.element("no-endpoint-services", [ip, proto, port.port], external_filter, comment=spn)
    if port.node_port:
        if plan.has_endpoints:
            tx.element("service-nodeports", [proto, port.node_port], f"goto {external_chain}")
        if not plan.has_external_endpoints:
            tx.element("no-endpoint-nodeports", [proto, port.node_port], external_filter,
                       comment=spn)


def _write_external_chain(
    tx: _Transaction,
    plan: PortPlan,
    cluster_cidr: str | None,
    external_chain: str,
    cluster_chain: str,
    local_chain: str,
) -> None:
    """external-<B>, where every external destination of the port goes."""
    if not plan.external_policy_local:
        tx.rule(external_chain, "jump", MARK_MASQ)
    else:
        if cluster_cidr is not None:
            tx.rule(external_chain, f"{tx.ip} saddr", cluster_cidr, "goto", cluster_chain,
                    comment="short-circuit pod traffic")
        tx.rule(external_chain, "fib saddr type local jump", MARK_MASQ,
                comment="masquerade local traffic")
        tx.rule(external_chain, "fib saddr type local goto", cluster_chain,
                comment="short-circuit local traffic")
    if plan.has_external_endpoints:
        tx.rule(external_chain, "goto", local_chain if plan.external_policy_local else cluster_chain)


def _add_affinity_set(tx: _Transaction, name: str, affinity: SessionAffinity) -> None:
    """The per-endpoint set of clients with affinity to it; knftables writes
    the timeout in whole seconds ("10800s")."""
    timeout = affinity.timeout_seconds
    props = f"type {tx.addr_type} ; flags dynamic,timeout ; " + (
        f"timeout {timeout}s ; " if timeout is not None else "")
    tx.op("add", "set", f"{name} {{ {props}}}")


def _write_load_balancing(tx: _Transaction, chain: str, endpoint_chains: list[str]) -> None:
    """writeServiceToEndpointRules: one `numgen random mod N` vmap, slot i -> endpoint i.
    knftables.Concat joins every word with a space, the "," between
    elements too: "{ 0 : goto A , 1 : goto B }" (kube-proxy's expected
    rules with two endpoints, IPv4 and IPv6 alike)."""
    elements = " , ".join(f"{i} : goto {c}" for i, c in enumerate(endpoint_chains))
    tx.rule(chain, "numgen random mod", len(endpoint_chains), "vmap {", elements, "}")
