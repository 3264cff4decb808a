"""The fields of kube-proxy's iptables rules, for the resolvers
(tracer.kube.iptables_parse, iptables_port_chains, iptables_no_endpoints):
the chain names kube-proxy writes and the hash that groups one service
port's chains, ServicePortName comments, addresses and protocols as
iptables-save prints them, and the draft that collects one service port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from tracer.kube.iptables_table import Rule
from tracer.kube.resolved import PortDraft

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
# ServicePortName.String(): "ns/name" or "ns/name:port" ("ns/name:" on old releases).
_SERVICE_PORT_NAME = re.compile(r"^([a-z0-9][-a-z0-9.]*)/([a-z0-9][-a-z0-9.]*)(?::([-a-z0-9]*))?$")


def port_chain_hash(chain: str | None) -> tuple[str, str] | None:
    """KUBE-EXT-ABC -> ("KUBE-EXT-", "ABC")."""
    if not chain:
        return None
    for prefix in _PORT_CHAIN_PREFIXES:
        if chain.startswith(prefix) and len(chain) > len(prefix):
            return prefix, chain[len(prefix) :]
    return None


def address(value: str | None) -> str | None:
    """"10.96.0.10/32" -> "10.96.0.10" (iptables-save adds the /32)."""
    if not value:
        return None
    host, _, length = value.partition("/")
    if length in ("", "32", "128"):
        return host
    return value


def split_host_port(value: str) -> tuple[str, int] | None:
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


def parse_service_port_name(text: str | None) -> tuple[str, str, str] | None:
    """"ns/name:port" -> (ns, name, port); "ns/name" -> (ns, name, "")."""
    if not text:
        return None
    match = _SERVICE_PORT_NAME.match(text.strip())
    if not match:
        return None
    return match.group(1), match.group(2), match.group(3) or ""


def protocol(rule: Rule) -> str | None:
    value = rule.get("-p")
    return value.lower() if value else None


@dataclass(kw_only=True)
class IptablesPortDraft(PortDraft):
    """One service port as its rules are read: the hash its chains share and
    the ServicePortName strings its comments offer."""

    hash: str
    names: list[str] = field(default_factory=list)  # candidate ServicePortName strings

    def name_candidate(self, text: str | None) -> None:
        if text and parse_service_port_name(text) and text not in self.names:
            self.names.append(text)
