"""Which address families kube-proxy programs each of the lab's Services in:
the lab's --ip-family against the Service's ipFamilies and ipFamilyPolicy
(as tracer.kube.manifest settles them for a dual-stack cluster).

  - a dual lab is a dual-stack cluster: every family the Service has;
  - an IPv4 lab is a single-stack IPv4 cluster: IPv4 only. A Service that
    cannot be IPv4 alone (RequireDualStack, or IPv6 first in ipFamilies) is
    refused in one line, as the apiserver of such a cluster refuses it; a
    PreferDualStack Service is IPv4 there, its IPv6 cluster IP, external and
    load-balancer IPs left unused. (A real single-stack apiserver would also
    refuse a PreferDualStack Service that names IPv6 in ipFamilies or
    clusterIPs; the lab narrows it instead, so that one manifest, such as
    manifests/dual-stack.yaml, runs in both lab families.)
"""

from __future__ import annotations

from tracer.errors import UsageError
from tracer.kube.model import FAMILY_OF_API
from tracer.kube.model import Service as KubeService


def lab_families(service: KubeService, ip_family: str) -> tuple[str, ...]:
    """The families ("ipv4", "ipv6", primary first) kube-proxy programs
    service in, in a lab of ip_family ("ipv4" or "dual"); UsageError when
    the Service needs IPv6 and the lab has none."""
    families = service.ip_families or ("IPv4",)
    if ip_family == "dual":
        return tuple(FAMILY_OF_API[f] for f in families)
    if service.ip_family_policy == "RequireDualStack":
        why = "its ipFamilyPolicy is RequireDualStack"
    elif families[0] == "IPv6":
        why = f"its ipFamilies are [{', '.join(families)}]"
    else:
        return ("ipv4",)
    raise UsageError(f"Service {service.full_name} needs IPv6 ({why}) but the lab is IPv4 only: "
                     "start it with --ip-family dual")
