"""Reading Kubernetes manifest YAML for tracer.kube.manifest: the documents of
a multi-document stream, and typed fields of one document, each check
raising Problem with a one-line message; Where turns it into the
ManifestError that says which document it was in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tracer.errors import ManifestError
from tracer.kube.model import Labels, labels_from_mapping

# Kubernetes name rules, as far as the lab depends on them: DNS-1123 labels for
# port names, IANA service names (<= 15 chars, at least one letter) for
# containerPort names and named targetPorts.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


class Problem(Exception):
    """Raised inside one document; turned into ManifestError with the location."""


@dataclass(frozen=True)
class Where:
    source: str
    document: int
    kind: str | None = None
    name: str | None = None

    def error(self, problem: str) -> ManifestError:
        what = " ".join(p for p in (self.kind, self.name) if p)
        where = f"document {self.document}" + (f" ({what})" if what else "")
        return ManifestError(f"{self.source}: {where}: {problem}")


# --- YAML documents ------------------------------------------------------------


def yaml_documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """(1-based document number, parsed document); YAML errors name the line."""
    number = 0
    loader = yaml.safe_load_all(text)
    while True:
        try:
            doc = next(loader)
        except StopIteration:
            return
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ManifestError(
                f"{source}: document {number + 1}: invalid YAML{line}: {problem}"
            ) from None
        number += 1
        yield number, doc


def yaml_type(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


# --- field helpers -----------------------------------------------------------------


def mapping(value: Any, what: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        if value is None:
            raise Problem(f"{what} is missing")
        raise Problem(f"{what} must be a mapping, not {yaml_type(value)}")
    return value


def sequence(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Problem(f"{what} must be a list, not {yaml_type(value)}")
    return value


def number(value: Any, what: str, low: int, high: int) -> int:
    # bool is an int in Python; YAML's `true` is not a port.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(f"{what} must be a number, not {value!r}")
    if not low <= value <= high:
        raise Problem(f"{what} {value} is out of range ({low}-{high})")
    return value


def labels(value: Any, what: str) -> Labels:
    given = mapping(value, what)
    for key, val in given.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise Problem(f"{what} must map strings to strings ({key!r}: {val!r})")
    return labels_from_mapping(given)


def name_and_namespace(doc: Mapping[str, Any]) -> tuple[str, str]:
    metadata = mapping(doc.get("metadata"), "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise Problem("metadata.name is missing")
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str) or not DNS_LABEL.match(namespace):
        raise Problem(f"metadata.namespace {namespace!r} is not a valid namespace name")
    return namespace, name


def require_api_version(doc: Mapping[str, Any], expected: str) -> None:
    version = doc.get("apiVersion")
    if version != expected:
        raise Problem(f"apiVersion {version!r} is not supported (expected {expected})")


# --- Service fields the lab renders (and refuses) --------------------------------

# spec fields kube-proxy's rules depend on and the renderers write. Others
# change what kube-proxy does in ways the lab does not render, and are
# refused rather than silently ignored (check_service_spec). Some are
# accepted only with their default value.
SERVICE_SPEC_FIELDS = frozenset({
    "type", "clusterIP", "externalIPs", "selector", "ports", "externalTrafficPolicy",
    "internalTrafficPolicy", "loadBalancerSourceRanges", "sessionAffinity", "sessionAffinityConfig",
    "clusterIPs", "ipFamilies", "ipFamilyPolicy",  # tracer.kube.manifest_families
})
SERVICE_SPEC_DEFAULTS: dict[str, Any] = {"allocateLoadBalancerNodePorts": True}
SERVICE_PORT_FIELDS = frozenset({"name", "protocol", "port", "targetPort", "nodePort",
                                 "appProtocol"})  # appProtocol: a hint kube-proxy ignores


def check_service_spec(spec: Mapping[str, Any]) -> None:
    """Problem for a spec field the lab cannot render."""
    for key, value in spec.items():
        if key in SERVICE_SPEC_FIELDS:
            continue
        if key in SERVICE_SPEC_DEFAULTS and value == SERVICE_SPEC_DEFAULTS[key]:
            continue
        shown = f"{key}: {value!r}" if key in SERVICE_SPEC_DEFAULTS else f"{key}"
        raise Problem(f"spec.{shown} is not rendered by the lab (it would be ignored)")


def check_service_port(port: Mapping[str, Any], where: str) -> None:
    for key in port:
        if key not in SERVICE_PORT_FIELDS:
            raise Problem(f"{where}.{key} is not rendered by the lab (it would be ignored)")


def source_ranges(
    spec: Mapping[str, Any], service_type: str, families: Sequence[str] = ("IPv4",)
) -> tuple[str, ...]:
    """spec.loadBalancerSourceRanges as networks (the API server's
    validation: CIDRs, and only on a LoadBalancer), each of one of the
    Service's families."""
    given = sequence(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges")
    if given and service_type != "LoadBalancer":
        raise Problem("spec.loadBalancerSourceRanges applies to type LoadBalancer only")
    return tuple(parse_network(v, "spec.loadBalancerSourceRanges entry", families) for v in given)


def load_balancer_ips(
    doc: Mapping[str, Any], service_type: str, families: Sequence[str] = ("IPv4",)
) -> tuple[str, ...]:
    """status.loadBalancer.ingress[].ip: with no cloud controller in the lab,
    the manifest's status says which LB IPs kube-proxy programs."""
    status = mapping(doc.get("status"), "status", required=False)
    for key in status:
        if key != "loadBalancer":
            raise Problem(f"status.{key} is not rendered by the lab (it would be ignored)")
    balancer = mapping(status.get("loadBalancer"), "status.loadBalancer", required=False)
    ingress = sequence(balancer.get("ingress"), "status.loadBalancer.ingress")
    if ingress and service_type != "LoadBalancer":
        raise Problem("status.loadBalancer.ingress applies to type LoadBalancer only")
    out = []
    for i, raw in enumerate(ingress):
        entry = mapping(raw, f"status.loadBalancer.ingress[{i}]")
        extra = sorted(set(entry) - {"ip", "ipMode"})
        if extra or entry.get("ipMode", "VIP") != "VIP" or "ip" not in entry:
            what = extra[0] if extra else ("ipMode" if "ip" in entry else "ip (missing)")
            raise Problem(f"status.loadBalancer.ingress[{i}].{what} is not rendered by the lab")
        out.append(parse_address(entry["ip"], f"status.loadBalancer.ingress[{i}].ip", families))
    return tuple(out)


# --- addresses of a Service's families (tracer.kube.manifest_families) -----------


def check_address_families(values: Sequence[str], what: str, families: Sequence[str]) -> None:
    """Problem for an address (or CIDR) of a family the Service does not
    have: kube-proxy's proxier of that family would skip it, so the lab
    would silently render nothing for it."""
    for value in values:
        family = "IPv6" if ipaddress.ip_network(value, strict=False).version == 6 else "IPv4"
        if family not in families:
            raise Problem(
                f"{what} {value} is {family} but the Service's ipFamilies are "
                f"[{', '.join(families)}] (kube-proxy would ignore it)")


def parse_address(value: Any, what: str, families: Sequence[str]) -> str:
    """An IP address of one of families, as text; Problem naming the
    families for anything else."""
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        raise Problem(f"{what} {value!r} is not an {' or '.join(families)} address") from None
    check_address_families([str(address)], what, families)
    return str(address)


def parse_network(value: Any, what: str, families: Sequence[str]) -> str:
    """A CIDR (host bits allowed, as the API server allows them) of one of
    families, as text."""
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise Problem(f"{what} {value!r} is not an {' or '.join(families)} CIDR") from None
    check_address_families([str(network)], what, families)
    return str(network)
