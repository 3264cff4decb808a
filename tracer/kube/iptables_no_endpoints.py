"""Services without endpoints, from the filter table of `iptables-save`
text, for tracer.kube.iptables_parse: kube-proxy writes them no nat rules,
only REJECTs (tracer.kube.iptables_filter renders them), one rule per
destination with the comment "ns/name:port has no endpoints":

    filter KUBE-SERVICES           -d VIP --dport P             -j REJECT
    filter KUBE-EXTERNAL-SERVICES  -d EXT-IP --dport P          -j REJECT
                                   --dst-type LOCAL --dport N   -j REJECT  (node port)
"""

from __future__ import annotations

from tracer.kube import iptables_fields as fields
from tracer.kube.iptables_fields import KUBE_EXTERNAL_SERVICES, KUBE_SERVICES, NO_ENDPOINTS_SUFFIX
from tracer.kube.iptables_table import NatTable
from tracer.kube.resolved import ResolvedServicePort


def rejected_ports(
    table: NatTable,
) -> list[tuple[tuple[str, str], str, ResolvedServicePort]]:
    """The service ports kube-proxy REJECTs in the filter table for want of
    endpoints, named by their comments, in the order the rules list them."""
    drafts: dict[str, fields.IptablesPortDraft] = {}
    chains: dict[str, list[str]] = {}
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES):
        for rule in table.rules(chain):
            comment = rule.comment or ""
            spn = comment.removesuffix(NO_ENDPOINTS_SUFFIX)
            if rule.target != "REJECT" or spn == comment or not fields.parse_service_port_name(spn):
                continue
            draft = drafts.setdefault(spn, fields.IptablesPortDraft(hash="", names=[spn]))
            draft.protocol = draft.protocol or fields.protocol(rule)
            dport = rule.get("--dport")
            ip = fields.address(rule.get("-d"))
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
        ns, name, port_name = fields.parse_service_port_name(spn) or ("", "", "")
        port = draft.resolved(port_name=port_name, protocol=draft.protocol or "tcp",
                              no_endpoints=True, reject_in=tuple(chains[spn]))
        out.append(((ns, name), spn, port))
    return out
