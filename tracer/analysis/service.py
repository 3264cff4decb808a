"""What kube-proxy promised: endpoints and their shares, from capture metadata.

``meta["service"]`` is ``tracer.kube.iptables_parse.ResolvedService.to_dict()``:
``{"namespace", "name", "ports": [{"protocol", "port", "cluster_ips",
"external_ips", "load_balancer_ips", "node_port", "external_policy",
"endpoints": [{"ip", "port", "probability", "share", "chain"}],
"local_endpoints": [...], "session_affinity", "internal_policy", "pod_cidrs"}]}``.
Each port has its own KUBE-SVC chain, so a
connection's promise depends on how it reached the Service and from where:
through a cluster IP it is ``endpoints``, or ``local_endpoints`` when
``internal_policy`` is "Local"; through an external IP, load-balancer IP or
node port it is ``local_endpoints`` when ``external_policy`` is "Local" and
the client is external, but ``endpoints`` for a pod (a source in
``pod_cidrs``) or the node itself (kube-proxy short-circuits both), and
``endpoints`` under "Cluster". The node is the one whose metadata it is:
local endpoints are that node's. Rules are tried in order, so when only probabilities are known,
share_i = p_i * prod_{j<i} (1 - p_j) (the last rule takes what is left).

``meta["service_history"]`` (``[{"ts_ns", "service"}]``, ts_ns on the
capturing node's CLOCK_MONOTONIC) starts with the Service at capture start and
adds an entry for every change; ``meta["service"]`` is the latest. Each entry
applies from its ts_ns on (the first also before it).

A dual-stack Service has a port per family; the IPv6 one says ``"family":
"ipv6"``. Each is its own promise (separate iptables and ip6tables rules),
and a connection matches only its own family's ports: an IPv6 node port
shares its number with the IPv4 one but never claims IPv4 connections.

Field names are read leniently (a flat ``endpoints`` list, ``address`` for
``ip``, ``target_port`` for ``port``) so older or hand-written metadata works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracer.analysis.addresses import IPV6_BASE, Networks, endpoint, int_to_ip, ip_to_int
from tracer.capfile import PROTO_NUMBERS


@dataclass(frozen=True)
class PromisedEndpoint:
    ip: str
    port: int | None
    share: float
    probability: float | None = None
    chain: str | None = None

    @property
    def key(self) -> str:
        """'10.0.0.1:80', '[2001:db8::1]:80' (tracer.analysis.addresses.endpoint)."""
        return endpoint(self.ip, self.port) if self.port is not None else self.ip


# A connection's source as kube-proxy's external chain tells them apart
# under externalTrafficPolicy Local.
SOURCE_EXTERNAL, SOURCE_POD, SOURCE_NODE = "external", "pod", "node"


@dataclass(frozen=True)
class PortPromise:
    """One service port: where clients reach it and which endpoints it promises."""

    protocol: int | None
    port: int | None
    node_port: int | None
    cluster_ips: frozenset[int]
    external_ips: frozenset[int]  # external and load-balancer IPs
    external_policy: str | None
    endpoints: tuple[PromisedEndpoint, ...]
    local_endpoints: tuple[PromisedEndpoint, ...] = ()
    # ClientIP session affinity: a client's later connections within this
    # many seconds of its previous one keep its endpoint (inf: no timeout);
    # None without affinity.
    affinity_timeout_s: float | None = None
    internal_policy: str | None = None
    # The sources kube-proxy short-circuits as pods.
    pod_cidrs: Networks = field(default_factory=Networks)
    # 4 or 6: a dual-stack Service has a port per family, each its own
    # promise (kube-proxy's iptables and ip6tables rules are separate).
    family: int = 4

    def entry(self, dst: int, dport: int, proto: int) -> str | None:
        """How a connection to dst:dport/proto reached this port: "cluster"
        (a cluster IP), "external" (an external or LB IP, a node port),
        "unknown" (the metadata lists no addresses), None (not this port)."""
        if self.protocol is not None and proto != self.protocol:
            return None
        # Addresses are one family's; a node port or an address-less port
        # would claim another family's connections for this family's
        # endpoints, so those check the family (after the cheap tests).
        if self.port is not None and dport == self.port:
            if dst in self.cluster_ips:
                return "cluster"
            if dst in self.external_ips:
                return "external"
            if not self.cluster_ips and not self.external_ips and self._same_family(dst):
                return "unknown"
        if self.node_port is not None and dport == self.node_port and self._same_family(dst):
            return "external"
        return None

    def _same_family(self, dst: int) -> bool:
        return (int(dst) >= IPV6_BASE) == (self.family == 6)

    def promise_for(
        self, dst: int, dport: int, proto: int, src: int | None = None, from_node: bool = False
    ) -> tuple[PromisedEndpoint, ...] | None:
        """The endpoints a connection from src (a pod, the node itself when
        from_node, else an external client) to dst:dport/proto was promised,
        None if it did not come through this port."""
        entry = self.entry(dst, dport, proto)
        if entry == "cluster":
            return self._internal()
        if entry == "external":
            return self._external(src, from_node)
        return self.endpoints if entry == "unknown" else None

    def source_kind(self, src: int | None, from_node: bool) -> str:
        if from_node:
            return SOURCE_NODE
        if src is not None and self.pod_cidrs.contains(src):
            return SOURCE_POD
        return SOURCE_EXTERNAL

    def preserves_source(
        self, dst: int, dport: int, proto: int, src: int | None, from_node: bool = False
    ) -> bool:
        """kube-proxy leaves this connection's source address alone: an
        external client through an external address under external policy
        Local (pods are short-circuited, the node masqueraded)."""
        return (
            self.entry(dst, dport, proto) == "external"
            and self.external_policy == "Local"
            and self.source_kind(src, from_node) == SOURCE_EXTERNAL
        )

    def _internal(self) -> tuple[PromisedEndpoint, ...]:
        """internalTrafficPolicy Local: only this node's endpoints (KUBE-SVL /
        local-). Metadata without internal_policy that has only a local
        choice is read the same way."""
        local = self.internal_policy == "Local" or (
            self.internal_policy is None and not self.endpoints
        )
        return self.local_endpoints if local else self.endpoints

    def _external(self, src: int | None, from_node: bool) -> tuple[PromisedEndpoint, ...]:
        """externalTrafficPolicy Local: external clients get this node's
        endpoints; pods and the node are short-circuited to every endpoint."""
        if self.external_policy != "Local":
            return self.endpoints
        if self.source_kind(src, from_node) != SOURCE_EXTERNAL:
            return self.endpoints
        return self.local_endpoints


def _first(d: dict[str, Any], *names: str) -> Any:
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return None


def shares_from_probabilities(probabilities: Sequence[float | None]) -> list[float]:
    """kube-proxy's cascade of statistic rules -> the share each endpoint gets."""
    shares, left = [], 1.0
    for i, p in enumerate(probabilities):
        p = 1.0 if p is None or i == len(probabilities) - 1 else float(p)
        shares.append(left * p)
        left *= 1.0 - p
    return shares


def parse_endpoints(raw: Sequence[Any] | None) -> tuple[PromisedEndpoint, ...]:
    parsed = []
    for e in raw or []:
        if isinstance(e, str):
            e = {"endpoint": e}
        ip = _first(e, "ip", "address", "addr", "pod_ip")
        port = _first(e, "port", "target_port", "targetPort")
        if ip is None and e.get("endpoint"):
            ip, port = _split_endpoint(str(e["endpoint"]))
        parsed.append((_canonical(str(ip)), None if port is None else int(port), e))
    if not parsed:
        return ()
    shares = [_first(e, "share") for _, _, e in parsed]
    probs = [_first(e, "probability", "p") for _, _, e in parsed]
    if any(s is None for s in shares):
        shares = shares_from_probabilities(probs)
    total = float(sum(shares)) or 1.0
    return tuple(
        PromisedEndpoint(
            ip=ip,
            port=port,
            share=float(s) / total,
            probability=None if p is None else float(p),
            chain=_first(e, "chain", "sep_chain"),
        )
        for (ip, port, e), s, p in zip(parsed, shares, probs, strict=True)
    )


def _split_endpoint(text: str) -> tuple[str, int | None]:
    """'10.0.0.1:80', '[2001:db8::1]:80', a bare address of either family."""
    if text.startswith("["):
        ip, _, rest = text[1:].partition("]")
        return ip, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") > 1:
        return text, None
    ip, _, port_text = text.rpartition(":")
    return (ip, int(port_text)) if ip else (port_text, None)


def _canonical(ip: str) -> str:
    """The address as int_to_ip writes it (RFC 5952 for IPv6), so endpoint
    keys compare equal to the packets'; left alone when it is no address."""
    try:
        return int_to_ip(ip_to_int(ip)) or ip
    except ValueError:
        return ip


def _family(p: dict[str, Any], cluster_ips: frozenset[int], endpoints: Sequence[Any]) -> int:
    """A port's family: as the resolved Service says ("family": "ipv6"; IPv4
    ports say nothing), else as its addresses say (hand-written metadata)."""
    if p.get("family") in ("ipv6", "IPv6", 6):
        return 6
    if p.get("family") in ("ipv4", "IPv4", 4):
        return 4
    keys = [*cluster_ips, *(ip_to_int(e.ip) for e in endpoints if _is_address(e.ip))]
    return 6 if keys and all(k >= IPV6_BASE for k in keys) else 4


def _is_address(text: str) -> bool:
    try:
        return bool(ip_to_int(text))
    except ValueError:
        return False


def _ips(values: Any) -> frozenset[int]:
    out = set()
    for v in [values] if isinstance(values, str) else (values or []):
        try:
            out.add(ip_to_int(str(v)))
        except ValueError:
            continue
    return frozenset(out)


def _proto(value: Any) -> int | None:
    """A protocol name or number -> its number; None when none is given. An
    unknown name is -1, which no packet carries: a port of a protocol the
    tracer does not know must not match every protocol."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return PROTO_NUMBERS.get(str(value).lower(), -1)


def _affinity_timeout(affinity: Any) -> float | None:
    """session_affinity ({"type": "ClientIP", "timeout_seconds": N}) -> N s;
    inf when it has no timeout; None without affinity."""
    if not isinstance(affinity, dict) or affinity.get("type", "ClientIP") != "ClientIP":
        return None
    timeout = affinity.get("timeout_seconds")
    return float("inf") if timeout is None else float(timeout)


def parse_service(service: dict[str, Any] | None) -> list[PortPromise]:
    if not service:
        return []
    ports = []
    for p in service.get("ports") or []:
        if not isinstance(p, dict):
            continue
        cluster_ips = _ips(p.get("cluster_ips") or p.get("cluster_ip"))
        endpoints = parse_endpoints(p.get("endpoints"))
        ports.append(
            PortPromise(
                protocol=_proto(p.get("protocol")),
                port=p.get("port"),
                node_port=p.get("node_port"),
                cluster_ips=cluster_ips,
                external_ips=_ips(
                    [*(p.get("external_ips") or []), *(p.get("load_balancer_ips") or [])]
                ),
                external_policy=p.get("external_policy"),
                endpoints=endpoints,
                local_endpoints=parse_endpoints(p.get("local_endpoints")),
                affinity_timeout_s=_affinity_timeout(p.get("session_affinity")),
                internal_policy=p.get("internal_policy"),
                pod_cidrs=Networks(p.get("pod_cidrs") or ()),
                family=_family(p, cluster_ips, endpoints),
            )
        )
    if service.get("endpoints"):  # flat form: one promise for everything
        ports.append(
            PortPromise(
                None,
                None,
                None,
                frozenset(),
                frozenset(),
                None,
                parse_endpoints(service["endpoints"]),
            )
        )
    return ports


def service_name(service: dict[str, Any] | None) -> str:
    if not service:
        return "(unknown service)"
    ns = service.get("namespace")
    return f"{ns}/{service.get('name')}" if ns else str(service.get("name"))


@dataclass
class Era:
    """A period during which one version of the Service was in force on one node."""

    start_ts_ns: int  # node monotonic; the first era also covers everything before
    ports: list[PortPromise]

    def promise_for(
        self, dst: int, dport: int, proto: int, dnat_to: str, src: int | None = None,
        from_node: bool = False,
    ) -> tuple[PromisedEndpoint, ...] | None:
        for port in self.ports:
            found = port.promise_for(dst, dport, proto, src, from_node)
            if found is not None:
                return found
        # Reached the Service some way the metadata does not list (e.g. a node
        # address for a node port): the port whose endpoints include the target.
        for port in self.ports:
            if any(e.key == dnat_to for e in port.endpoints):
                return port.endpoints
        return None

    def port_for(self, dst: int, dport: int, proto: int, dnat_to: str) -> PortPromise | None:
        """The service port whose promise promise_for gives (None: not this Service's)."""
        for port in self.ports:
            if port.promise_for(dst, dport, proto) is not None:
                return port
        return next((p for p in self.ports if any(e.key == dnat_to for e in p.endpoints)), None)

    def keys(self) -> list[str]:
        return [e.key for p in self.ports for e in (*p.endpoints, *p.local_endpoints)]


def eras(meta: dict[str, Any]) -> list[Era]:
    history = sorted(meta.get("service_history") or [], key=lambda c: c.get("ts_ns", 0))
    if not history:
        return [Era(-(2**62), parse_service(meta.get("service")))]
    out = [Era(int(h.get("ts_ns", 0)), parse_service(h.get("service"))) for h in history]
    out[0].start_ts_ns = -(2**62)
    return out


def era_index(era_list: list[Era], ts_ns: np.ndarray) -> np.ndarray:
    starts = np.array([e.start_ts_ns for e in era_list], dtype=np.int64)
    return np.maximum(np.searchsorted(starts, ts_ns, side="right") - 1, 0)
