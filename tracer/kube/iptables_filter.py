"""Services + Endpoints -> the filter-table half of kube-proxy's
`iptables-restore` input (iptables mode): where a Service without endpoints
is rejected.

Follows kubernetes/kubernetes pkg/proxy/iptables/proxier.go syncProxyRules()
(v1.30 and later): kube-proxy restores "*filter" then "*nat" in one
`iptables-restore --noflush`; tracer.kube.iptables_render writes the nat
half. Per service port, the filter rules are:

  - no ready endpoint at all: REJECT ("<spn> has no endpoints") for the
    cluster IP in KUBE-SERVICES, and for every external IP, load-balancer IP
    and the node port (`-m addrtype --dst-type LOCAL`) in
    KUBE-EXTERNAL-SERVICES; the port then has no nat rules at all;
  - externalTrafficPolicy Local with no endpoint on this node: DROP ("<spn>
    has no local endpoints") for its external destinations only;
  - internalTrafficPolicy Local with no endpoint on this node: the same DROP
    for the cluster IP (in KUBE-SERVICES);
  - loadBalancerSourceRanges: KUBE-PROXY-FIREWALL DROPs what KUBE-FW (nat)
    did not send on, per load-balancer IP.

The chains are entered from INPUT, FORWARD and OUTPUT by jump rules kube-proxy
makes with `iptables -I` (EnsureRule Prepend) outside the restore, all but
one for new connections only (`-m conntrack --ctstate NEW`). REJECT without
--reject-with answers ICMP port unreachable, which a TCP client in SYN_SENT
takes as ECONNREFUSED.

Not modelled, as in iptables_render: health check node ports (KUBE-NODEPORTS
ACCEPT), IPv6.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tracer.kube import naming
from tracer.kube.iptables_render import MASQUERADE_MARK
from tracer.kube.model import Endpoint, Service
from tracer.kube.proxy_plan import PortPlan, plan_service_port, port_endpoints

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
# kubelet's anti-martian chain, which kube-proxy also writes (localhost node ports).
KUBE_FIREWALL = "KUBE-FIREWALL"
# The "top-level" filter chains kube-proxy declares on every sync, in its order.
FILTER_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS,
                 KUBE_PROXY_FIREWALL)

NO_ENDPOINTS = "has no endpoints"
NO_LOCAL_ENDPOINTS = "has no local endpoints"

_NEW = ("-m", "conntrack", "--ctstate", "NEW")


@dataclass(frozen=True)
class JumpRule:
    """One of kube-proxy's filter jump rules (iptablesJumpChains)."""

    source: str  # INPUT, FORWARD or OUTPUT
    target: str
    comment: str | None  # None: kubelet's KUBE-FIREWALL jumps carry none
    match: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """The rule after `-I SOURCE`, as kube-proxy passes it to iptables."""
        comment = ["-m", "comment", "--comment", self.comment] if self.comment else []
        return [*self.match, *comment, "-j", self.target]


# In kube-proxy's order; each is prepended, so the last ends up first.
FILTER_JUMP_RULES = (
    JumpRule("INPUT", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    JumpRule("FORWARD", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals",
             _NEW),
    JumpRule("INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
)
KUBELET_JUMP_RULES = (
    JumpRule("INPUT", KUBE_FIREWALL, None),
    JumpRule("OUTPUT", KUBE_FIREWALL, None),
)


def render_filter_table(
    services: Iterable[Service],
    endpoints: Mapping[tuple[str, str], Sequence[Endpoint]],
    *,
    node_name: str | None = None,
    masquerade_mark: str = MASQUERADE_MARK,
    localhost_nodeports: bool = True,
    conntrack_tcp_liberal: bool = False,
    forwarding_rules: bool = True,
    jump_rules: bool = True,
    family: str = "ipv4",
) -> str:
    """The "*filter" section of kube-proxy's restore input (for
    `iptables-restore --noflush`: each declared chain is flushed, nothing
    else in the table is touched; `ip6tables-restore` with family "ipv6").

    services, endpoints, node_name, masquerade_mark, localhost_nodeports:
        as render_nat_table (tracer.kube.iptables_render).
    conntrack_tcp_liberal: the node's net.netfilter.nf_conntrack_tcp_be_liberal
        is set; kube-proxy then writes no INVALID drop in KUBE-FORWARD.
    forwarding_rules: write KUBE-FORWARD's rules (accept marked and
        established forwarded traffic, drop INVALID) and KUBE-FIREWALL's
        localnet drop. False leaves those chains empty: only the per-service
        REJECT/DROP rules then change what the kernel does.
    jump_rules: include the `-I INPUT/FORWARD/OUTPUT` jumps (kube-proxy makes
        them with separate `iptables -I` calls, once; leave them out when
        reloading into a namespace that already has them, as --noflush would
        add them again).
    family: "ipv4", or "ipv6" for the IPv6 proxier's (as render_nat_table):
        it has no KUBE-FIREWALL localnet drop, localhost node ports being
        IPv4 only.
    """
    localhost_nodeports = localhost_nodeports and family == "ipv4"
    chains = [f":{name} - [0:0]" for name in FILTER_CHAINS]
    rules: list[str] = []
    jumps = list(FILTER_JUMP_RULES)
    if localhost_nodeports:
        chains.append(f":{KUBE_FIREWALL} - [0:0]")
        jumps += KUBELET_JUMP_RULES
        if forwarding_rules:
            rules.append(
                f'-A {KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT "
                "-j DROP"
            )
    if jump_rules:
        rules[:0] = [_jump_line(j) for j in jumps]
    for service in services:
        if not service.cluster_ip_for(family):
            continue
        for port in service.ports:
            chosen = port_endpoints(service, port, endpoints.get(service.key, ()), family)
            plan = plan_service_port(service, port, chosen, node_name, family)
            rules += service_port_filter_rules(plan, port.port, port.node_port)
    if forwarding_rules:
        rules += _forward_rules(masquerade_mark, conntrack_tcp_liberal)
    return "\n".join(["*filter", *chains, *rules, "COMMIT", ""])


def _jump_line(jump: JumpRule) -> str:
    args = [f'"{a}"' if " " in a else a for a in jump.args()]
    return " ".join(["-I", jump.source, *args])


def service_port_filter_rules(plan: PortPlan, port: int, node_port: int | None) -> list[str]:
    """The port's filter rules in kube-proxy's order: REJECT (no endpoints)
    or DROP (no local endpoints: for the cluster IP under internal policy
    Local, for external destinations under external policy Local), and the
    KUBE-PROXY-FIREWALL DROP of each load-balancer IP with source ranges
    (what KUBE-FW let through was DNATed; the rest arrives here unchanged)."""
    internal = external = None
    if not plan.has_endpoints:
        internal = external = ("REJECT", f'"{plan.spn} {NO_ENDPOINTS}"')
    else:
        if not plan.has_internal_endpoints:
            internal = ("DROP", f'"{plan.spn} {NO_LOCAL_ENDPOINTS}"')
        if not plan.has_external_endpoints:
            external = ("DROP", f'"{plan.spn} {NO_LOCAL_ENDPOINTS}"')
    match = f"-m {plan.proto} -p {plan.proto}"
    out = []
    if internal:
        out.append(f"-A {KUBE_SERVICES} -m comment --comment {internal[1]} {match} "
                   f"-d {plan.cluster_ip} --dport {port} -j {internal[0]}")
    for ip in plan.external_ips if external else ():
        out.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external[1]} {match} "
                   f"-d {ip} --dport {port} -j {external[0]}")
    if plan.has_endpoints and plan.uses_firewall:
        fw_chain = naming.firewall_chain(plan.spn, plan.proto)
        for ip in plan.lb_ips:
            out.append(f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{plan.spn} traffic not '
                       f'accepted by {fw_chain}" {match} -d {ip} --dport {port} -j DROP')
    for ip in plan.lb_ips if external else ():
        out.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external[1]} {match} "
                   f"-d {ip} --dport {port} -j {external[0]}")
    if node_port and external:
        out.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external[1]} "
                   f"-m addrtype --dst-type LOCAL {match} --dport {node_port} -j {external[0]}")
    return out


def _forward_rules(mark: str, conntrack_tcp_liberal: bool) -> list[str]:
    """KUBE-FORWARD: drop INVALID (unless the node's conntrack is liberal),
    accept what kube-proxy marked for masquerade and what follows it."""
    out = []
    if not conntrack_tcp_liberal:
        out.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    out.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
               f"-m mark --mark {mark}/{mark} -j ACCEPT")
    out.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
               "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    return out
