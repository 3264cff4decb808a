"""The DROPs kube-proxy writes for a Service port that has endpoints, but none
on this node where a traffic policy Local asks for one, found in the rules
and recorded on the parsed ports.

kube-proxy (pkg/proxy/iptables/proxier.go, pkg/proxy/nftables/proxier.go)
writes no DNAT for such traffic but drops it in the filter path, with the
ServicePortName as the comment:

    iptables, filter table ("<spn> has no local endpoints", -j DROP):
        KUBE-SERVICES           -d CLUSTER-IP --dport P       internalTrafficPolicy Local
        KUBE-EXTERNAL-SERVICES  -d EXT-OR-LB-IP --dport P     externalTrafficPolicy Local
                                --dst-type LOCAL --dport N    (the node port)
    nftables, table ip kube-proxy (element comment "<spn>", verdict drop):
        map no-endpoint-services   CLUSTER-IP . proto . P     internal (the IP is in set cluster-ips)
                                   EXT-OR-LB-IP . proto . P   external
        map no-endpoint-nodeports  proto . N                  external

Under internalTrafficPolicy Local the cluster IP then has no nat rule at
all, so such a port may be known from these DROPs alone (it then has no
endpoints listed, but no_endpoints stays False: the Service has endpoints,
on other nodes). Under externalTrafficPolicy Local the external chain is
still there (pods and the node itself are short-circuited to the
cluster-wide endpoints); only external clients meet the DROP.

The port records it as no_local_endpoints ("internal", "external": whose
traffic is dropped) and drop_in (the chains or maps holding the DROPs).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.kube.iptables_table import NatTable
from tracer.kube.nftables_table import NftTable
from tracer.kube.resolved import PortDraft, ResolvedServicePort

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
NO_LOCAL_ENDPOINTS_SUFFIX = " has no local endpoints"
NO_ENDPOINT_SERVICES_MAP = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS_MAP = "no-endpoint-nodeports"
CLUSTER_IPS_SET = "cluster-ips"
INTERNAL = "internal"
EXTERNAL = "external"

# ServicePortName.String(): "ns/name" or "ns/name:port".
_SPN = re.compile(r"^([a-z0-9][-a-z0-9.]*)/([a-z0-9][-a-z0-9.]*)(?::([-a-z0-9]*))?$")

Named = tuple[tuple[str, str] | None, str, ResolvedServicePort]


@dataclass
class LocalDrops:
    """What the DROPs of one ServicePortName say."""

    spn: str
    draft: PortDraft = field(default_factory=PortDraft)
    kinds: list[str] = field(default_factory=list)  # INTERNAL, EXTERNAL
    where: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str) -> None:
        if kind not in self.kinds:
            self.kinds.append(kind)
        if where not in self.where:
            self.where.append(where)


def iptables_local_drops(filter_table: NatTable) -> dict[str, LocalDrops]:
    """The "has no local endpoints" DROPs of an iptables filter table, by ServicePortName."""
    found: dict[str, LocalDrops] = {}
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES):
        for rule in filter_table.rules(chain):
            comment = rule.comment or ""
            spn = comment.removesuffix(NO_LOCAL_ENDPOINTS_SUFFIX)
            dport = rule.get("--dport")
            if (rule.target != "DROP" or spn == comment or not _SPN.match(spn)
                    or dport is None or not dport.isdigit()):
                continue
            drops = found.setdefault(spn, LocalDrops(spn))
            protocol = rule.get("-p")
            drops.draft.protocol = drops.draft.protocol or (protocol.lower() if protocol else None)
            ip = _host(rule.get("-d"))
            if chain == KUBE_SERVICES:
                _append(drops.draft.cluster_ips, ip)
                drops.draft.port = int(dport)
                drops.add(INTERNAL, chain)
            else:
                if ip is None:  # `-m addrtype --dst-type LOCAL`: the node port
                    drops.draft.node_port = int(dport)
                else:
                    _append(drops.draft.external_ips, ip)
                    drops.draft.port = drops.draft.port or int(dport)
                drops.add(EXTERNAL, chain)
    return found


def nft_local_drops(table: NftTable) -> dict[str, LocalDrops]:
    """The `drop` elements of the no-endpoint-* verdict maps, by ServicePortName."""
    cluster_ips = {e.key[0] for e in table.elements.get(CLUSTER_IPS_SET, []) if e.key}
    found: dict[str, LocalDrops] = {}
    for map_name, width in ((NO_ENDPOINT_SERVICES_MAP, 3), (NO_ENDPOINT_NODEPORTS_MAP, 2)):
        for element in table.elements.get(map_name, []):
            spn = element.comment or ""
            if element.verdict != "drop" or len(element.key) != width or not _SPN.match(spn):
                continue
            *ip, protocol, port = element.key
            if not port.isdigit():
                continue
            drops = found.setdefault(spn, LocalDrops(spn))
            drops.draft.protocol = drops.draft.protocol or protocol
            if not ip:
                drops.draft.node_port = int(port)
                drops.add(EXTERNAL, map_name)
            elif ip[0] in cluster_ips:
                _append(drops.draft.cluster_ips, ip[0])
                drops.draft.port = int(port)
                drops.add(INTERNAL, map_name)
            else:
                _append(drops.draft.external_ips, ip[0])
                drops.draft.port = drops.draft.port or int(port)
                drops.add(EXTERNAL, map_name)
    return found


def with_local_drops(ports: Iterable[Named], drops: dict[str, LocalDrops]) -> list[Named]:
    """The parsed ports (name, naming chain, port), each with the DROPs that
    name it recorded; DROPs of a port the nat rules do not show (the cluster
    IP of an internalTrafficPolicy Local Service without a local endpoint)
    become ports of their own, after the others."""
    out: list[Named] = []
    left = dict(drops)
    for name, chain, port in ports:
        spn = next((s for s, d in left.items() if _same_port(name, port, s, d)), None)
        if spn is not None:
            port = _merged(port, left.pop(spn))
        out.append((name, chain, port))
    for spn, found in left.items():
        match = _SPN.match(spn)
        assert match is not None
        port = found.draft.resolved(port_name=match.group(3) or "",
                                    protocol=found.draft.protocol or "tcp")
        out.append(((match.group(1), match.group(2)), spn, _merged(port, found)))
    return out


def _same_port(name: tuple[str, str] | None, port: ResolvedServicePort, spn: str,
               drops: LocalDrops) -> bool:
    """The DROPs' comment names this port, or (a port nothing names) they
    drop one of its addresses."""
    match = _SPN.match(spn)
    if name is not None and port.port_name is not None and match:
        return (match.group(1), match.group(2)) == name and (match.group(3) or "") == port.port_name
    draft = drops.draft
    if draft.protocol and draft.protocol != port.protocol:
        return False
    if draft.node_port is not None and draft.node_port == port.node_port:
        return True
    mine = {ip for ip, _, _ in port.service_addresses() if ip}
    return port.port == draft.port and bool(mine & {*draft.cluster_ips, *draft.external_ips})


def _merged(port: ResolvedServicePort, drops: LocalDrops) -> ResolvedServicePort:
    """port, with the dropped addresses it lacks and the DROPs recorded; a
    dropped kind of traffic has policy Local (that is why it is dropped)."""
    draft = drops.draft
    known = {*port.external_ips, *port.load_balancer_ips}
    changes: dict[str, object] = {
        "no_local_endpoints": tuple(k for k in (INTERNAL, EXTERNAL) if k in drops.kinds),
        "drop_in": tuple(drops.where),
        "cluster_ips": (*port.cluster_ips,
                        *(ip for ip in draft.cluster_ips if ip not in port.cluster_ips)),
        "external_ips": (*port.external_ips,
                         *(ip for ip in draft.external_ips if ip not in known)),
    }
    if port.port is None:
        changes["port"] = draft.port
    if port.node_port is None and draft.node_port is not None:
        changes["node_port"] = draft.node_port
    if INTERNAL in drops.kinds:
        changes["internal_policy"] = "Local"
    if EXTERNAL in drops.kinds:
        changes["external_policy"] = "Local"
    return dataclasses.replace(port, **changes)


def _host(value: str | None) -> str | None:
    """"10.96.0.10/32" -> "10.96.0.10" (iptables-save adds the /32)."""
    if not value:
        return None
    host, _, length = value.partition("/")
    return host if length in ("", "32", "128") else value


def _append(bucket: list[str], ip: str | None) -> None:
    if ip and ip not in bucket:
        bucket.append(ip)
