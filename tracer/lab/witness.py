"""What the lab counts by itself, independently of the tracer: packets through
each KUBE-SEP DNAT rule (the nat table sees only a connection's first packet,
so one per new NAT binding) and the requests each pod's nginx logged.

Take a mark before a run and read the differences after it: that run's truth,
to hold a capture's analysis against (the demo prints both; tests compare)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tracer.lab import access_log, kubeproxy
from tracer.lab.state import LabState


@dataclass(frozen=True)
class Mark:
    dnat: dict[str, dict[str, int]]  # node netns -> endpoint "ip:port" -> packets
    logs: dict[str, int]  # pod -> access log size


@dataclass(frozen=True)
class Witnessed:
    dnat: dict[str, int]  # endpoint "ip:port" -> new NAT bindings, summed over nodes
    served: dict[str, int]  # endpoint "ip:port" -> requests its pod logged
    served_by_pod: dict[str, int]


def _dnat(state: LabState, service: str) -> dict[str, dict[str, int]]:
    return {n.netns: kubeproxy.dnat_counters(n.netns, service) for n in state.nodes}


def mark(state: LabState, service: str) -> Mark:
    return Mark(dnat=_dnat(state, service), logs=access_log.offsets(state))


def endpoint_of_pod(state: LabState, service: str) -> dict[str, str]:
    """pod name -> "ip:port" of its endpoint in the service's first port."""
    port = state.service(service).ports[0]
    return {e.pod: f"{e.ip}:{e.port}" for e in port.endpoints}


def since(state: LabState, service: str, before: Mark) -> Witnessed:
    after = _dnat(state, service)
    dnat: Counter[str] = Counter()
    for node, counts in after.items():
        for endpoint, n in counts.items():
            dnat[endpoint] += n - before.dnat.get(node, {}).get(endpoint, 0)
    by_pod = access_log.count_by_pod(access_log.read_since(before.logs, state))
    where = endpoint_of_pod(state, service)
    served: Counter[str] = Counter()
    for pod, n in by_pod.items():
        served[where.get(pod, pod)] += n
    return Witnessed(dnat=dict(sorted((+dnat).items())), served=dict(sorted(served.items())),
                     served_by_pod=dict(sorted(by_pod.items())))
