"""Where a node's kube-proxy rules come from, and finding one service in them.

A node's rules live in whichever iptables backend kube-proxy used: the
nf_tables one (`iptables-save`, Debian's default) or the legacy one
(`iptables-legacy-save`); kube-proxy's image picks the backend that already
holds rules. read_nat_rules asks both and keeps the one with KUBE-SERVICES.
"""

from __future__ import annotations

import os
import shutil

from tracer.errors import MissingPackageError, PrivilegeError, TracerError, UsageError
from tracer.kube.iptables_parse import ResolvedService
from tracer.system import PACKAGE_OF, run

SAVE_PROGRAMS = ("iptables-save", "iptables-legacy-save")


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")


def read_nat_rules() -> str:
    """`iptables-save -t nat` of the caller's network namespace (the calling
    thread's: enter another with tracer.netns.entered first).

    Returns the output of the backend that has kube-proxy's KUBE-SERVICES
    chain (the one with more KUBE- lines if both do). If neither has, returns
    the text anyway, so the caller can report "no services"."""
    available = [p for p in SAVE_PROGRAMS if _find(p)]
    if not available:
        raise MissingPackageError("iptables-save", PACKAGE_OF.get("iptables-save", "iptables"))
    outputs: list[str] = []
    failures: list[str] = []
    for program in available:
        proc = run([program, "-t", "nat"], check=False)
        if proc.returncode == 0:
            outputs.append(proc.stdout)
            continue
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        failures.append(f"{program}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    if not outputs:
        if os.geteuid() != 0:
            raise PrivilegeError("reading the nat table needs root (try: sudo tracer ...)")
        raise TracerError("cannot read the nat table: " + "; ".join(failures))
    with_kube = [text for text in outputs if ":KUBE-SERVICES" in text]
    if with_kube:
        return max(with_kube, key=lambda text: text.count("KUBE-"))
    return outputs[0]


def find_service(services: list[ResolvedService], query: str) -> ResolvedService:
    """The service a user means by NAME, NAMESPACE/NAME or a kube-proxy chain.

    NAME alone matches in any namespace but must be unique; a chain name
    (KUBE-SVC-..., KUBE-EXT-..., KUBE-SVL-..., KUBE-FW-..., KUBE-SEP-...)
    matches the service that owns it. Anything else is a UsageError whose one
    line lists the services there are."""
    query = query.strip()
    if query.startswith("KUBE-"):
        found = [
            s
            for s in services
            if query in s.chains()
            or any(e.chain == query for p in s.ports for e in (*p.endpoints, *p.local_endpoints))
        ]
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
    (ip:port with the share of new connections each gets), chain."""
    rows = []
    for service in services:
        for port in service.ports:
            label = f"{port.port}/{port.protocol}" if port.port is not None else port.protocol
            if port.port_name:
                label = f"{port.port_name}:{label}"
            # internalTrafficPolicy Local services have only a KUBE-SVL choice.
            choice = port.endpoints or port.local_endpoints
            endpoints = " ".join(f"{e.ip}:{e.port}({e.share:.0%})" for e in choice) or "-"
            rows.append(
                {
                    "service": service.full_name,
                    "port": label,
                    "cluster_ip": ",".join(port.cluster_ips) or "-",
                    "external_ips": ",".join((*port.external_ips, *port.load_balancer_ips))
                    or "-",
                    "node_port": str(port.node_port) if port.node_port is not None else "-",
                    "endpoints": endpoints,
                    "chain": port.service_chain or port.external_chain or "-",
                }
            )
    return rows


TABLE_HEADINGS = {
    "service": "SERVICE",
    "port": "PORT",
    "cluster_ip": "CLUSTER-IP",
    "external_ips": "EXTERNAL-IP",
    "node_port": "NODE-PORT",
    "endpoints": "ENDPOINTS (share)",
    "chain": "CHAIN",
}


def format_services_table(services: list[ResolvedService]) -> str:
    """services_table as aligned text columns (kubectl-style)."""
    rows = services_table(services)
    if not rows:
        return "no kube-proxy services in this network namespace's nat table"
    columns = list(TABLE_HEADINGS)
    widths = {c: max(len(TABLE_HEADINGS[c]), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(TABLE_HEADINGS[c].ljust(widths[c]) for c in columns).rstrip()]
    for row in rows:
        lines.append("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)
