"""spec.clusterIP, spec.clusterIPs, spec.ipFamilies and spec.ipFamilyPolicy
of a Service document, for tracer.kube.manifest_service: validated and
defaulted as the API server of a dual-stack cluster does it, one
manifest_fields.Problem (one line) for anything it would refuse.

The lab's cluster is dual-stack with IPv4 primary, as kubeadm with
--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112 (tracer.kube.manifest
SERVICE_CIDR, SERVICE_CIDR6); the apiserver's defaults there
(pkg/registry/core/service/storage/alloc.go, initIPFamilyFields):
  - clusterIPs: [clusterIP] when only clusterIP is given;
  - ipFamilyPolicy: RequireDualStack when two ipFamilies or two clusterIPs are
    given, otherwise SingleStack;
  - ipFamilies: the family of each clusterIPs entry beyond those given, then
    [IPv4] (the primary family) when still empty; a policy other than
    SingleStack with one family gains the other (PreferDualStack is dual on
    a dual-stack cluster; the lab's plan narrows it on an IPv4 lab).
Validation (pkg/apis/core/validation, ValidateServiceClusterIPsRelatedFields,
and initIPFamilyFields): clusterIPs[0] equals clusterIP, at most two entries,
one per family, each of the family ipFamilies names at its index; families
IPv4/IPv6 and distinct; SingleStack holds one of each; every cluster IP lies
in its family's service CIDR (neither the network address nor, in IPv4, the
broadcast address or default/kubernetes' first address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tracer.kube import manifest_fields as fields
from tracer.kube.model import IP_FAMILIES, IP_FAMILY_POLICIES

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The cluster's primary family: what a Service gets when it names none.
PRIMARY_FAMILY = "IPv4"


@dataclass(frozen=True)
class Families:
    """A Service's families as the API server settles them: families in
    ipFamilies' order (the first is the primary one, clusterIP's), one
    cluster IP per family (None: to be allocated)."""

    families: tuple[str, ...]
    policy: str
    cluster_ips: tuple[str | None, ...]

    @property
    def ipv4_single_stack(self) -> bool:
        """The only kind of Service a manifest could give before dual stack
        (its model keeps cluster_ips / ip_families empty, as then)."""
        return self.families == ("IPv4",)


def family_of(address: IPAddress) -> str:
    return "IPv6" if address.version == 6 else "IPv4"


def other_family(family: str) -> str:
    return "IPv6" if family == "IPv4" else "IPv4"


def read_families(spec: Mapping[str, Any], cidrs: Mapping[str, IPNetwork]) -> Families:
    """The Service's Families; cidrs: the service CIDR of each family."""
    cluster_ip = spec.get("clusterIP")
    if cluster_ip in (None, ""):
        cluster_ip = None
    given_ips = [str(v) for v in fields.sequence(spec.get("clusterIPs"), "spec.clusterIPs")]
    if cluster_ip == "None" or "None" in given_ips:
        raise fields.Problem("headless Services (clusterIP: None) are not proxied by kube-proxy")
    if given_ips and cluster_ip is None:
        raise fields.Problem("spec.clusterIPs must be empty when spec.clusterIP is not specified")
    if given_ips and given_ips[0] != str(cluster_ip):
        raise fields.Problem(
            f"spec.clusterIPs[0] {given_ips[0]} must match spec.clusterIP {cluster_ip}")
    if len(given_ips) > 2:
        raise fields.Problem("spec.clusterIPs may hold up to 2 values")
    families = _given_families(spec)
    raw_ips = given_ips or ([str(cluster_ip)] if cluster_ip is not None else [])
    addresses = [_address(raw, i, families) for i, raw in enumerate(raw_ips)]
    if len(addresses) == 2 and addresses[0].version == addresses[1].version:
        raise fields.Problem("spec.clusterIPs may specify no more than one IP for each IP family")

    policy = spec.get("ipFamilyPolicy")
    if policy is None:
        policy = "RequireDualStack" if 2 in (len(families), len(addresses)) else "SingleStack"
    elif policy not in IP_FAMILY_POLICIES:
        raise fields.Problem(
            f"spec.ipFamilyPolicy {policy!r} is not one of {', '.join(IP_FAMILY_POLICIES)}")
    if policy == "SingleStack" and 2 in (len(addresses), len(families)):
        what = "cluster IPs" if len(addresses) == 2 else "IP families"
        raise fields.Problem(f"spec.ipFamilyPolicy SingleStack must be RequireDualStack or "
                             f"PreferDualStack when multiple {what} are specified")
    families += [family_of(a) for a in addresses[len(families):]]
    if not families:
        families = [PRIMARY_FAMILY]
    if policy != "SingleStack" and len(families) == 1:
        families.append(other_family(families[0]))

    for i, address in enumerate(addresses):
        _check_allocatable(address, "spec.clusterIP" if i == 0 else f"spec.clusterIPs[{i}]",
                           cidrs[family_of(address)])
    ips = [str(a) for a in addresses] + [None] * (len(families) - len(addresses))
    return Families(families=tuple(families), policy=policy, cluster_ips=tuple(ips))


def _given_families(spec: Mapping[str, Any]) -> list[str]:
    families: list[str] = []
    for i, family in enumerate(fields.sequence(spec.get("ipFamilies"), "spec.ipFamilies")):
        if family not in IP_FAMILIES:
            raise fields.Problem(
                f"spec.ipFamilies[{i}] {family!r} is not one of {', '.join(IP_FAMILIES)}")
        if family in families:
            raise fields.Problem(f"spec.ipFamilies[{i}] {family} is a duplicate")
        families.append(family)
    return families


def _address(raw: str, index: int, families: Sequence[str]) -> IPAddress:
    """clusterIPs[index] as an address of the family ipFamilies[index] names
    (any family where ipFamilies names none)."""
    what = "spec.clusterIP" if index == 0 else f"spec.clusterIPs[{index}]"
    expected = families[index] if index < len(families) else None
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        kind = expected or (PRIMARY_FAMILY if index == 0 else "IP")
        raise fields.Problem(f"{what} {raw!r} is not an {kind} address") from None
    if expected is not None and family_of(address) != expected:
        raise fields.Problem(f"{what} {address} is not an {expected} address, "
                             f"as spec.ipFamilies[{index}] says it must be")
    return address


def _check_allocatable(address: IPAddress, what: str, cidr: IPNetwork) -> None:
    if address not in cidr:
        raise fields.Problem(f"{what} {address} is outside the service CIDR {cidr}")
    # The apiserver's allocator never hands out the network address, nor
    # IPv4's broadcast address; IPv4's first address is default/kubernetes'
    # (IPv4 is the primary family, so that Service has no IPv6 address).
    if address == cidr.network_address or (
            cidr.version == 4 and address == cidr.broadcast_address):
        raise fields.Problem(f"{what} {address} is not allocatable in {cidr}")
    if cidr.version == 4 and address == cidr.network_address + 1:
        raise fields.Problem(f"{what} {address} belongs to the default/kubernetes Service")
