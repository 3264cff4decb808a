"""Where a node's kube-proxy rules come from, and finding one service in them.

kube-proxy runs in one of two modes, and the node's rules are where that
mode writes them:
  - iptables mode: the nat table (and the filter table, where a Service
    without endpoints is rejected), in whichever iptables backend kube-proxy
    used: the nf_tables one (`iptables-save`, Debian's default) or the legacy
    one (`iptables-legacy-save`); kube-proxy's image picks the backend that
    already holds rules;
  - nftables mode (GA in v1.33): its own table `ip kube-proxy`, read with
    `nft -j list table ip kube-proxy`.
It runs one proxier per IP family, so on an IPv6 or dual-stack node the IPv6
rules are in the same places of the other family: `ip6tables-save` (or
`ip6tables-legacy-save`) and `table ip6 kube-proxy`.
read_kube_proxy_rules asks them all and returns the services of the ones
that hold kube-proxy's (with which they were and their text), a Service of
both families merged into one (tracer.kube.resolved.merge_families);
parse_kube_proxy_rules tells the two kinds of text apart, so a capture
resolves --svc on a node of either mode without being told which.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from tracer import netns as netns_lib
from tracer.errors import MissingPackageError, PrivilegeError, TracerError, UsageError
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.nftables_parse import NFT_CHAIN_PREFIXES, parse_kube_proxy_table
from tracer.kube.nftables_table import (
    KUBE_PROXY_FAMILY,
    KUBE_PROXY_FAMILY6,
    KUBE_PROXY_TABLE,
    looks_like_nft,
)
from tracer.kube.resolved import ResolvedService, ResolvedServicePort, merge_families
from tracer.system import PACKAGE_OF, require_root, run

SAVE_PROGRAMS = ("iptables-save", "iptables-legacy-save")
SAVE6_PROGRAMS = ("ip6tables-save", "ip6tables-legacy-save")
NFT = "nft"
NFT_LIST = (NFT, "-j", "list", "table", KUBE_PROXY_FAMILY, KUBE_PROXY_TABLE)
NFT6_LIST = (NFT, "-j", "list", "table", KUBE_PROXY_FAMILY6, KUBE_PROXY_TABLE)


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")


@dataclass(frozen=True)
class KubeProxyRules:
    """kube-proxy's rules as read from one network namespace, parsed once.

    services: what they resolve to (empty when kube-proxy programmed none),
        both families' (a dual-stack Service is one, with ports of each);
    source: the program whose output they are ("iptables-save",
    "iptables-legacy-save" or "nft"), the IPv4 rules' (the IPv6 rules' when
    no IPv4 rules could be read);
    text: that output as read (iptables-save text, or nft's JSON);
    ipv6_source, ipv6_text: the same of the IPv6 rules ("ip6tables-save",
    "ip6tables-legacy-save" or "nft"), None where none could be read."""

    services: list[ResolvedService]
    source: str
    text: str
    ipv6_source: str | None = None
    ipv6_text: str | None = None


@dataclass(frozen=True)
class _Family:
    """One IP family's programs: its iptables-save backends and its nft table."""

    save_programs: tuple[str, ...]
    nft_list: tuple[str, ...]


_IPV4 = _Family(SAVE_PROGRAMS, NFT_LIST)
_IPV6 = _Family(SAVE6_PROGRAMS, NFT6_LIST)


def read_kube_proxy_rules() -> KubeProxyRules:
    """kube-proxy's rules in the caller's network namespace (the calling
    thread's: enter another with tracer.netns.entered first), from
    `iptables-save -t nat` and `-t filter` in iptables mode or `nft -j list table ip
    kube-proxy` in nftables mode, parsed; and the same of the IPv6 family
    (`ip6tables-save`, `table ip6 kube-proxy`), merged with them.

    In each family, when both modes' rules are there (a node switching
    modes, before kube-proxy has cleaned up after the other), the one that
    resolves to more services wins, iptables on a tie. When neither resolves
    to any service, the iptables text is returned (with no services) if
    there was one. A family with nothing to read (no ip6tables, no table ip6
    kube-proxy) is not an error; only when neither family can be read are
    the failures of both reported."""
    ipv4, ipv4_failures = _read_family(_IPV4)
    ipv6, ipv6_failures = _read_family(_IPV6)
    if ipv4 is None and ipv6 is None:
        failures = [*ipv4_failures, *ipv6_failures]
        if not failures:
            raise MissingPackageError("iptables-save", PACKAGE_OF.get("iptables-save", "iptables"))
        if os.geteuid() != 0:
            raise PrivilegeError("reading kube-proxy's rules needs root (try: sudo tracer ...)")
        raise TracerError("cannot read kube-proxy's rules: " + "; ".join(failures))
    first = ipv4 if ipv4 is not None else ipv6
    assert first is not None
    if ipv6 is None:
        return first
    services = merge_families(ipv4.services if ipv4 is not None else [], ipv6.services)
    return KubeProxyRules(services, first.source, first.text, ipv6.source, ipv6.text)


def _read_family(family: _Family) -> tuple[KubeProxyRules | None, list[str]]:
    """One family's rules (services, the program and its text) in the mode
    that holds them, or None; the failures met on the way."""
    iptables, iptables_failures = _read_iptables(family.save_programs)
    nft_text, nft_failure = _read_nft(family.nft_list)
    candidates = [iptables] if iptables is not None else []
    if nft_text is not None:
        candidates.append((NFT, nft_text))
    parsed = [
        KubeProxyRules(parse_kube_proxy_rules(text), source, text) for source, text in candidates
    ]
    failures = [*iptables_failures, *([nft_failure] if nft_failure else [])]
    if not parsed:
        return None, failures
    # max keeps the first of equals: iptables on a tie, and when no
    # candidate resolves to any service.
    return max(parsed, key=lambda rules: len(rules.services)), failures


def parse_kube_proxy_rules(text: str) -> list[ResolvedService]:
    """Services from either mode's rules: iptables-save or ip6tables-save
    (or their restore input) text, or nft's JSON or text of table ip
    kube-proxy, of table ip6 kube-proxy, or of both (`nft list ruleset`:
    a dual-stack Service comes back as one). Callers that only hold the
    text need not know which mode the node runs.

    Sorted by namespace and name (chain-named services last, by chain)."""
    if looks_like_nft(text):
        return merge_families(parse_kube_proxy_table(text, KUBE_PROXY_FAMILY),
                              parse_kube_proxy_table(text, KUBE_PROXY_FAMILY6))
    return parse_iptables_nat_rules(text)


def services_in_netns(netns: str | None = None) -> list[ResolvedService]:
    """The Services kube-proxy programmed in network namespace NETNS (a name
    under /run/netns, or a path; entering one needs root), or in the caller's
    own when None. What `tracer services` lists."""
    if netns is None:
        return read_kube_proxy_rules().services
    path = netns_lib.resolve(netns)  # '' is refused there, not taken for the host
    require_root("tracer services --netns")
    with netns_lib.entered(path):
        return read_kube_proxy_rules().services


def _read_nft(command: tuple[str, ...] = NFT_LIST) -> tuple[str | None, str | None]:
    """(JSON of the table COMMAND lists, table ip kube-proxy or ip6
    kube-proxy, or None; why not). No nft, or no such table, is not a
    failure: the node (or this family) is then not in nftables mode."""
    nft = _find(NFT)
    if not nft:
        return None, None
    # Run what was found: _find also looks in /usr/sbin, which a user's PATH may lack.
    proc = run([nft, *command[1:]], check=False)
    family = command[-2]
    if proc.returncode == 0:
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            return None, f"{_nft_label(family)}: output is not JSON"
        has_table = any(
            isinstance(item, dict) and isinstance(item.get("table"), dict)
            and item["table"].get("family", family) == family
            for item in doc.get("nftables", [])
        )
        return (proc.stdout, None) if has_table else (None, None)
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    message = detail[-1] if detail else f"exit {proc.returncode}"
    if "No such file or directory" in message or "does not exist" in message:
        return None, None  # no table ip (ip6) kube-proxy here
    return None, f"{_nft_label(family)}: {message}"


def _nft_label(family: str) -> str:
    """How a failure names nft: "nft" for the ip table (as always), "nft
    (ip6)" for the IPv6 one."""
    return NFT if family == KUBE_PROXY_FAMILY else f"{NFT} ({family})"


def _read_iptables(
    programs: tuple[str, ...] = SAVE_PROGRAMS,
) -> tuple[tuple[str, str] | None, list[str]]:
    """((program, its `-t nat` output followed by its `-t filter` output) of
    the backend with kube-proxy's rules, or None; failures). Prefers the
    backend with KUBE-SERVICES (more KUBE- lines if both have it), else the
    first that answered. The filter table only adds the Services without
    endpoints: a backend whose filter table cannot be read still counts."""
    available = [(p, path) for p in programs if (path := _find(p))]
    outputs: list[tuple[str, str]] = []
    failures: list[str] = []
    for program, path in available:
        proc = run([path, "-t", "nat"], check=False)
        if proc.returncode == 0:
            filter_proc = run([path, "-t", "filter"], check=False)
            extra = filter_proc.stdout if filter_proc.returncode == 0 else ""
            outputs.append((program, proc.stdout + extra))
            continue
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        failures.append(f"{program}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    if not outputs:
        return None, failures
    with_kube = [output for output in outputs if ":KUBE-SERVICES" in output[1]]
    if with_kube:
        return max(with_kube, key=lambda output: output[1].count("KUBE-")), failures
    return outputs[0], failures


def find_service(services: list[ResolvedService], query: str) -> ResolvedService:
    """The service a user means by NAME, NAMESPACE/NAME or a kube-proxy chain.

    NAME alone matches in any namespace but must be unique; a chain name
    (KUBE-SVC-..., KUBE-EXT-..., KUBE-SVL-..., KUBE-FW-..., KUBE-SEP-...; in
    nftables mode service-..., external-..., local-..., endpoint-...)
    matches the service that owns it. Anything else is a UsageError whose one
    line lists the services there are."""
    query = query.strip()
    by_chain = [
        s
        for s in services
        if query in s.chains()
        or any(e.chain == query for p in s.ports for e in (*p.endpoints, *p.local_endpoints))
    ]
    if query.startswith("KUBE-") or (by_chain and query.startswith(NFT_CHAIN_PREFIXES)):
        found = by_chain
    elif "/" in query:
        found = [s for s in services if s.full_name == query]
    else:
        found = [s for s in services if s.name == query]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(s.full_name for s in found)
        raise UsageError(f"service {query!r} is ambiguous ({names}); use NAMESPACE/NAME")
    raise UsageError(f"no service {query!r} in the kube-proxy rules ({_known(services)})")


def _known(services: list[ResolvedService]) -> str:
    if not services:
        return "no kube-proxy services found"
    return "services: " + ", ".join(s.full_name for s in services)


def services_table(services: list[ResolvedService]) -> list[dict[str, str]]:
    """One row per service port, every value a string, for `tracer services`.

    Columns: service, port, cluster_ip, external_ips, node_port, endpoints
    (ip:port with the share of new connections each gets; "no endpoints
    (REJECT)" for a port kube-proxy rejects; "no local endpoints (DROP
    internal, external)" added for traffic a policy Local drops here), affinity ("ClientIP 10800s" for
    ClientIP session affinity with its timeout, "-" without), chain (the one
    the cluster IP enters; for a rejected or dropped port where the REJECT
    or DROP is, a filter chain or a verdict map), policy (internal and external traffic policy, LB
    source ranges). When any port is IPv6, every row also has family
    ("ipv4" or "ipv6": a dual-stack Service has a row per family and port);
    rows of IPv4-only rules are as they always were."""
    dual = any(p.family == "ipv6" for s in services for p in s.ports)
    rows = []
    for service in services:
        for port in service.ports:
            label = f"{port.port}/{port.protocol}" if port.port is not None else port.protocol
            if port.port_name:
                label = f"{port.port_name}:{label}"
            # internalTrafficPolicy Local services have only a KUBE-SVL choice.
            choice = port.endpoints or port.local_endpoints
            endpoints = " ".join(f"{_hostport(e.ip, e.port)}({e.share:.0%})" for e in choice) or "-"
            if port.no_endpoints:
                endpoints = "no endpoints (REJECT)"
            elif port.no_local_endpoints:
                dropped = "no local endpoints (DROP " + ", ".join(port.no_local_endpoints) + ")"
                endpoints = dropped if endpoints == "-" else f"{endpoints}; {dropped}"
            family = {"family": port.family} if dual else {}
            rows.append(
                {
                    "service": service.full_name,
                    "port": label,
                    **family,
                    "cluster_ip": ",".join(port.cluster_ips) or "-",
                    "external_ips": ",".join((*port.external_ips, *port.load_balancer_ips))
                    or "-",
                    "node_port": str(port.node_port) if port.node_port is not None else "-",
                    "endpoints": endpoints,
                    "affinity": _affinity_label(port),
                    "chain": port.cluster_ip_chain or port.service_chain or port.external_chain
                    or ",".join(port.reject_in) or ",".join(port.drop_in) or "-",
                    "policy": _policy_text(port),
                }
            )
    return rows


def _affinity_label(port: ResolvedServicePort) -> str:
    affinity = port.session_affinity
    if affinity is None:
        return "-"
    timeout = affinity.timeout_seconds
    return f"{affinity.type} {timeout}s" if timeout is not None else f"{affinity.type} (no timeout)"


def _policy_text(port: ResolvedServicePort) -> str:
    """"internal Local, external Cluster; source ranges A, B" (what is known)."""
    parts = []
    if port.internal_policy:
        parts.append(f"internal {port.internal_policy}")
    if port.external_policy:
        parts.append(f"external {port.external_policy}")
    text = ", ".join(parts) or "-"
    if port.load_balancer_source_ranges:
        text += "; source ranges " + ", ".join(port.load_balancer_source_ranges)
    return text


TABLE_HEADINGS = {
    "service": "SERVICE",
    "port": "PORT",
    "family": "FAMILY",
    "cluster_ip": "CLUSTER-IP",
    "external_ips": "EXTERNAL-IP",
    "node_port": "NODE-PORT",
    "endpoints": "ENDPOINTS (share)",
    "affinity": "AFFINITY",
    "chain": "CHAIN",
    "policy": "POLICY",
}


def format_services_table(services: list[ResolvedService]) -> str:
    """services_table as aligned text columns (kubectl-style)."""
    rows = services_table(services)
    if not rows:
        return "no kube-proxy services in this network namespace's rules (iptables nat or nftables)"
    columns = [c for c in TABLE_HEADINGS if c in rows[0]]  # FAMILY only with IPv6
    widths = {c: max(len(TABLE_HEADINGS[c]), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(TABLE_HEADINGS[c].ljust(widths[c]) for c in columns).rstrip()]
    for row in rows:
        lines.append("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def _hostport(ip: str, port: int) -> str:
    """ip:port, with an IPv6 address in brackets ([fd00::1]:80)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
