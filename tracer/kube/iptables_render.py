"""Services + Endpoints -> the `iptables-restore` input for the nat table, as
kube-proxy's iptables mode writes it.

Follows kubernetes/kubernetes pkg/proxy/iptables/proxier.go, syncProxyRules()
and writeServiceToEndpointRules() (v1.30 and later; read at commits b0f823e6
and 531be812, whose nat output is identical), rule by rule and argument by
argument, so that a node in the lab shows what a real node shows in
`iptables-save -t nat` (after iptables' own normalisation).

What is rendered, per service port with at least one ready endpoint:
  - KUBE-SERVICES: cluster IP -> KUBE-SVC (KUBE-SVL under internalTrafficPolicy
    Local; no rule without a local endpoint, the filter table DROPs it),
    external IPs -> KUBE-EXT, load-balancer IPs -> KUBE-EXT (KUBE-FW with
    loadBalancerSourceRanges); the closing "kubernetes service nodeports" rule;
  - KUBE-NODEPORTS: node port -> KUBE-EXT;
  - KUBE-SVC: masquerade off-cluster sources, then one rule per endpoint with
    `-m statistic --mode random --probability 1/(n-i)` ("%0.10f"), the last
    one unconditional;
  - KUBE-SVL (either traffic policy Local, local endpoints only); KUBE-SVC
    is left out when only internalTrafficPolicy Local would use it;
  - KUBE-FW: each source range -> KUBE-EXT, the rest falls through to the
    filter table's KUBE-PROXY-FIREWALL DROP;
  - KUBE-EXT: masquerade (Cluster policy) or the Local short-circuit rules;
  - KUBE-SEP: hairpin masquerade and DNAT to ip:port;
  - sessionAffinity ClientIP: `-m recent --rcheck --seconds T --reap` rules
    heading KUBE-SVC/KUBE-SVL, `-m recent --set` in each KUBE-SEP's DNAT rule;
  - KUBE-POSTROUTING and KUBE-MARK-MASQ, and (optionally) the jump rules from
    PREROUTING, OUTPUT and POSTROUTING.

Not rendered, as kube-proxy writes them in the filter table, not nat: the
REJECT/DROP rules for services without (local) endpoints, so such a service
has no nat rules at all (kube-proxy does the same). Not modelled: topology
hints, masqueradeAll, terminating endpoints.

IPv6 (family="ipv6"): the `ip6tables-restore` input of kube-proxy's IPv6
proxier, the same chains and rules over the Services' IPv6 part (see
tracer.kube.proxy_plan), with what differs in kube-proxy for IPv6: the
nodeports jump never admits localhost (`! -d ::1/128`; localhostNodePorts
applies to IPv4 only), no nfacct localhost rule, no loopback node address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tracer.kube import naming
from tracer.kube.model import Endpoint, Service, ServicePort, SessionAffinity
from tracer.kube.proxy_plan import PortPlan, check_node_options, plan_service_port, port_endpoints

# The chains kube-proxy declares on every sync, in its order.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
TOP_LEVEL_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# 1 << --iptables-masquerade-bit (default 14). kube-proxy formats it with
# "%#08x" ("0x004000"); its tests and iptables-save both show "0x4000".
MASQUERADE_MARK = "0x4000"

# Above this many endpoints (summed over all service ports) kube-proxy enters
# "large cluster mode" and drops the per-endpoint comments.
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000

# nfacct counter kube-proxy counts localhost NodePort traffic with (metrics.go).
LOCALHOST_NODEPORT_NFACCT = "localhost_nps_accepted_pkts"

NODEPORTS_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'

# kube-proxy installs these with `iptables -I` (EnsureRule(Prepend)) outside the
# restore, in this order, each prepended: OUTPUT, PREROUTING, POSTROUTING
# (iptablesJumpChains, nat entries).
JUMP_RULES = (
    ("OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    ("PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    ("POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


@dataclass
class _Restore:
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    def chain(self, name: str) -> None:
        self.chains.append(f":{name} - [0:0]")

    def rule(self, *args: str) -> None:
        self.rules.append(" ".join(a for a in args if a))


@dataclass(frozen=True)
class _Options:
    cluster_cidr: str | None
    large_cluster_mode: bool
    node_name: str | None
    masquerade_mark: str
    localhost_nodeports: bool
    nfacct_localhost: bool
    node_ip: str | None = None  # the primary node IP (kube-proxy's nodeIP)
    family: str = "ipv4"


def probability(n: int) -> str:
    """computeProbability: 1/n formatted "%0.10f" (Go and Python round alike)."""
    return f"{1.0 / n:0.10f}"


def render_nat_table(
    services: Iterable[Service],
    endpoints: Mapping[tuple[str, str], Sequence[Endpoint]],
    *,
    node_ips: Sequence[str],
    cluster_cidr: str | None = "10.217.0.0/16",
    large_cluster_mode: bool | None = False,
    node_name: str | None = None,
    nodeport_addresses: str = "all",
    masquerade_mark: str = MASQUERADE_MARK,
    random_fully: bool = True,
    localhost_nodeports: bool = True,
    nfacct_localhost_nodeports: bool = False,
    jump_rules: bool = True,
    family: str = "ipv4",
) -> str:
    """The complete `iptables-restore --noflush` input for the nat table
    (`ip6tables-restore` input with family "ipv6").

    services: the Services to program; those without a cluster IP are skipped
        (kube-proxy does not proxy headless Services).
    endpoints: (namespace, name) -> the service's endpoints; Endpoint.port is
        the resolved targetPort. For a multi-port Service an endpoint belongs
        to the port whose targetPort equals its port. Endpoints that are not
        ready are left out, as kube-proxy leaves them out.
    node_ips: this node's addresses. With nodeport_addresses="all" (kube-proxy's
        default: an empty --nodeport-addresses) they do not appear in the nat
        table; with "node-ips" (as with --nodeport-addresses=primary) KUBE-SERVICES
        sends NodePort traffic to KUBE-NODEPORTS only for these destinations.
    cluster_cidr: the pod CIDR kube-proxy's detect-local-mode ClusterCIDR uses
        for `! -s <cidr> -j KUBE-MARK-MASQ` in KUBE-SVC; None renders no such
        rule (no local-traffic detector).
    large_cluster_mode: drop per-endpoint comments as kube-proxy does past
        1000 endpoints; None decides like kube-proxy (count > 1000).
    node_name: this node's name; endpoints whose `node` equals it are local
        (matters for externalTrafficPolicy Local only).
    random_fully: kube-proxy adds `--random-fully` to MASQUERADE when the
        iptables binary supports it (1.6.2 and later, i.e. any current node).
    localhost_nodeports: kube-proxy's --iptables-localhost-nodeports (default
        true); false adds `! -d 127.0.0.0/8` to the nodeports rule.
    nfacct_localhost_nodeports: render the extra 127.0.0.0/8 KUBE-NODEPORTS rule
        with `-m nfacct` kube-proxy writes when it could create its nfacct
        counter (needs xt_nfacct and the counter to load).
    jump_rules: include `-I PREROUTING/OUTPUT/POSTROUTING` jumps (kube-proxy
        makes them with separate `iptables -I` calls); leave them out when
        reloading into a namespace that already has them.
    family: "ipv4", or "ipv6" for the IPv6 proxier's rules: only Services
        with a cluster IP of the family, and their addresses and endpoints
        of it; node_ips and cluster_cidr must be of the family (an IPv6
        render passes its own cluster_cidr, or None).
    """
    node_addresses, cluster_cidr = check_node_options(
        node_ips, nodeport_addresses, cluster_cidr, family)
    ipv6 = family == "ipv6"

    plan = [
        (service, port, port_endpoints(service, port, endpoints.get(service.key, ()), family))
        for service in services
        if service.cluster_ip_for(family)
        for port in service.ports
    ]
    if large_cluster_mode is None:
        total = sum(len(eps) for _, _, eps in plan)
        large_cluster_mode = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    options = _Options(
        cluster_cidr=cluster_cidr,
        large_cluster_mode=large_cluster_mode,
        node_name=node_name,
        masquerade_mark=masquerade_mark,
        localhost_nodeports=localhost_nodeports,
        # Localhost node ports (and their nfacct counter) are IPv4 only.
        nfacct_localhost=nfacct_localhost_nodeports and localhost_nodeports and not ipv6,
        node_ip=str(node_addresses[0]) if node_addresses else None,
        family=family,
    )

    out = _Restore()
    for chain in TOP_LEVEL_CHAINS:
        out.chain(chain)
    if jump_rules:
        for source, target, comment in JUMP_RULES:
            out.rule("-I", source, "-m", "comment", "--comment", f'"{comment}"', "-j", target)

    _write_masquerading(out, masquerade_mark, random_fully)
    for service, port, chosen in plan:
        _render_service_port(out, service, port, chosen, options)
    # The tail call to KUBE-NODEPORTS must be the last rule of KUBE-SERVICES.
    _write_nodeports_jump(
        out, node_addresses if nodeport_addresses == "node-ips" else None,
        localhost_nodeports and not ipv6, ipv6,
    )
    return "\n".join(["*nat", *out.chains, *out.rules, "COMMIT", ""])


def _write_masquerading(out: _Restore, mark: str, random_fully: bool) -> None:
    """KUBE-POSTROUTING masquerades what KUBE-MARK-MASQ marked."""
    out.rule("-A", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    # Clear the mark so a packet that traverses the stack again is not re-masqueraded.
    out.rule("-A", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
    out.rule(
        "-A", KUBE_POSTROUTING,
        "-m", "comment", "--comment", '"kubernetes service traffic requiring SNAT"',
        "-j", "MASQUERADE", "--random-fully" if random_fully else "",
    )
    out.rule("-A", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)


def _write_nodeports_jump(
    out: _Restore,
    node_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None,
    localhost_nodeports: bool,
    ipv6: bool = False,
) -> None:
    """KUBE-SERVICES -> KUBE-NODEPORTS: for any local destination (node
    addresses None, nodeport_addresses "all"), else for each node address.
    IPv6 never admits localhost (kube-proxy: localhost node ports never
    work for IPv6)."""
    if node_addresses is None:
        if ipv6:
            not_localhost: tuple[str, ...] = ("!", "-d", "::1/128")
        else:
            not_localhost = () if localhost_nodeports else ("!", "-d", "127.0.0.0/8")
        out.rule(
            "-A", KUBE_SERVICES, "-m", "comment", "--comment", NODEPORTS_COMMENT,
            "-m", "addrtype", "--dst-type", "LOCAL", *not_localhost, "-j", KUBE_NODEPORTS,
        )
        return
    for address in node_addresses:
        if address.is_loopback and not localhost_nodeports:
            continue
        out.rule(
            "-A", KUBE_SERVICES, "-m", "comment", "--comment", NODEPORTS_COMMENT,
            "-d", str(address), "-j", KUBE_NODEPORTS,
        )


def _render_service_port(
    out: _Restore,
    service: Service,
    port: ServicePort,
    endpoints: list[Endpoint],
    options: _Options,
) -> None:
    plan = plan_service_port(service, port, endpoints, options.node_name, options.family)
    if not plan.has_endpoints:
        return  # kube-proxy writes only filter-table REJECT rules for it
    spn, proto = plan.spn, plan.proto
    svc_chain = naming.service_chain(spn, proto)
    svl_chain = naming.service_local_chain(spn, proto)
    ext_chain = naming.external_chain(spn, proto)
    internal_chain = svl_chain if plan.internal_policy_local else svc_chain

    _write_entry_rules(out, plan, port, internal_chain, ext_chain, options)
    # Internal traffic: masquerade what comes from outside the pod network
    # (a node routing the service range to itself, say), since the reply
    # might otherwise leave by another node.
    if options.cluster_cidr is not None and plan.has_internal_endpoints:
        out.rule(
            "-A", internal_chain, "-m", "comment", "--comment", f'"{spn} cluster IP"',
            *_match(proto), "-d", plan.cluster_ip, "--dport", str(port.port),
            "!", "-s", options.cluster_cidr, "-j", KUBE_MARK_MASQ,
        )
    if plan.externally_accessible:
        out.chain(ext_chain)
        _write_external_chain(out, plan, ext_chain, svc_chain, svl_chain, options)
    if plan.uses_firewall:
        _write_firewall_chain(out, plan, ext_chain, options)

    affinity = service.session_affinity
    if plan.uses_cluster_chain:
        out.chain(svc_chain)
        _write_load_balancing(out, spn, proto, svc_chain, plan.cluster_endpoints, options, affinity)
    if plan.uses_local_chain:
        out.chain(svl_chain)
        _write_load_balancing(out, spn, proto, svl_chain, plan.local_endpoints, options, affinity)

    for endpoint in plan.reachable_endpoints:
        ep = naming.endpoint_string(endpoint.ip, endpoint.port)
        sep_chain = naming.endpoint_chain(spn, proto, ep)
        out.chain(sep_chain)
        comment = _service_comment(spn, options)
        # Hairpin: a pod reaching itself through the service must be
        # masqueraded, or it would answer itself directly.
        out.rule("-A", sep_chain, *comment, "-s", endpoint.ip, "-j", KUBE_MARK_MASQ)
        # Session affinity: remember the client in this endpoint's recent list.
        remember = ("-m", "recent", "--name", sep_chain, "--set") if affinity else ()
        out.rule("-A", sep_chain, *comment, *remember, *_match(proto),
                 "-j", "DNAT", "--to-destination", ep)


def _write_firewall_chain(out: _Restore, plan: PortPlan, ext_chain: str, options: _Options) -> None:
    """KUBE-FW: loadBalancerSourceRanges. Sources in a range go on to
    KUBE-EXT; the rest fall off the end, un-DNATed, and the filter table's
    KUBE-PROXY-FIREWALL drops them (tracer.kube.iptables_filter)."""
    fw_chain = naming.firewall_chain(plan.spn, plan.proto)
    out.chain(fw_chain)
    args = ("-A", fw_chain, "-m", "comment", "--comment", f'"{plan.spn} loadbalancer IP"')
    for cidr in plan.source_ranges:
        out.rule(*args, "-s", cidr, "-j", ext_chain)
    if plan.firewall_admits_lb_ips(options.node_ip):
        for ip in plan.lb_ips:
            out.rule(*args, "-s", ip, "-j", ext_chain)
    out.rule(
        "-A", fw_chain, "-m", "comment", "--comment",
        f'"other traffic to {plan.spn} will be dropped by KUBE-PROXY-FIREWALL"',
    )


def _match(proto: str) -> tuple[str, ...]:
    return ("-m", proto, "-p", proto)


def _write_entry_rules(
    out: _Restore,
    plan: PortPlan,
    port: ServicePort,
    internal_chain: str,
    ext_chain: str,
    options: _Options,
) -> None:
    """The port's rules in KUBE-SERVICES (cluster IP -> KUBE-SVC, or KUBE-SVL
    under internal policy Local; external IPs -> KUBE-EXT; load-balancer IPs
    -> KUBE-EXT, or KUBE-FW with source ranges) and KUBE-NODEPORTS (node
    port -> KUBE-EXT)."""
    spn, match = plan.spn, _match(plan.proto)
    if plan.has_internal_endpoints:  # else the filter table DROPs it
        out.rule(
            "-A", KUBE_SERVICES, "-m", "comment", "--comment", f'"{spn} cluster IP"', *match,
            "-d", plan.cluster_ip, "--dport", str(port.port), "-j", internal_chain,
        )
    for ip in plan.external_ips:
        out.rule(
            "-A", KUBE_SERVICES, "-m", "comment", "--comment", f'"{spn} external IP"', *match,
            "-d", ip, "--dport", str(port.port), "-j", ext_chain,
        )
    lb_chain = naming.firewall_chain(spn, plan.proto) if plan.uses_firewall else ext_chain
    for ip in plan.lb_ips:
        out.rule(
            "-A", KUBE_SERVICES, "-m", "comment", "--comment", f'"{spn} loadbalancer IP"', *match,
            "-d", ip, "--dport", str(port.port), "-j", lb_chain,
        )
    if port.node_port:
        if options.nfacct_localhost:
            out.rule(
                "-A", KUBE_NODEPORTS, "-m", "comment", "--comment", spn, *match,
                "-d", "127.0.0.0/8", "--dport", str(port.node_port),
                "-m", "nfacct", "--nfacct-name", LOCALHOST_NODEPORT_NFACCT, "-j", ext_chain,
            )
        out.rule(
            "-A", KUBE_NODEPORTS, "-m", "comment", "--comment", spn, *match,
            "--dport", str(port.node_port), "-j", ext_chain,
        )


def _write_external_chain(
    out: _Restore,
    plan: PortPlan,
    ext_chain: str,
    svc_chain: str,
    svl_chain: str,
    options: _Options,
) -> None:
    """KUBE-EXT, where every external destination of the port goes."""
    spn = plan.spn
    if not plan.external_policy_local:
        # Endpoints may be on another node: masquerade so replies come back here.
        out.rule(
            "-A", ext_chain, "-m", "comment", "--comment",
            f'"masquerade traffic for {spn} external destinations"', "-j", KUBE_MARK_MASQ,
        )
    else:
        if options.cluster_cidr is not None:
            # Pods reaching an external IP are treated as if they went out
            # to a load balancer and came back: cluster policy.
            out.rule(
                "-A", ext_chain, "-m", "comment", "--comment",
                f'"pod traffic for {spn} external destinations"',
                "-s", options.cluster_cidr, "-j", svc_chain,
            )
        out.rule(
            "-A", ext_chain, "-m", "comment", "--comment",
            f'"masquerade LOCAL traffic for {spn} external destinations"',
            "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ,
        )
        out.rule(
            "-A", ext_chain, "-m", "comment", "--comment",
            f'"route LOCAL traffic for {spn} external destinations"',
            "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_chain,
        )
    if plan.has_external_endpoints:
        out.rule("-A", ext_chain, "-j", svl_chain if plan.external_policy_local else svc_chain)


def _service_comment(text: str, options: _Options) -> tuple[str, ...]:
    """appendServiceCommentLocked: the comment, unless in large cluster mode."""
    if options.large_cluster_mode:
        return ()
    return ("-m", "comment", "--comment", text)


def _write_load_balancing(
    out: _Restore,
    spn: str,
    proto: str,
    chain: str,
    endpoints: list[Endpoint],
    options: _Options,
    affinity: SessionAffinity | None = None,
) -> None:
    """writeServiceToEndpointRules: endpoint i of n matches with probability
    1/(n-i), the last unconditionally, which spreads new connections evenly.
    With ClientIP affinity, first one rule per endpoint sends a client its
    recent list has seen within the timeout straight to that endpoint."""
    n = len(endpoints)
    if affinity is not None:
        seconds = affinity.timeout_seconds
        timeout = ("--seconds", str(seconds)) if seconds is not None else ()
        for endpoint in endpoints:
            ep = naming.endpoint_string(endpoint.ip, endpoint.port)
            sep_chain = naming.endpoint_chain(spn, proto, ep)
            out.rule(
                "-A", chain, *_service_comment(f'"{spn} -> {ep}"', options),
                "-m", "recent", "--name", sep_chain, "--rcheck", *timeout, "--reap",
                "-j", sep_chain,
            )
    for i, endpoint in enumerate(endpoints):
        ep = naming.endpoint_string(endpoint.ip, endpoint.port)
        comment = _service_comment(f'"{spn} -> {ep}"', options)
        statistic: tuple[str, ...] = ()
        if i < n - 1:
            statistic = ("-m", "statistic", "--mode", "random", "--probability", probability(n - i))
        out.rule("-A", chain, *comment, *statistic, "-j", naming.endpoint_chain(spn, proto, ep))
