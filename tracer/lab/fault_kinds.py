"""The fault kinds the lab can inject (tracer/lab/faults.py), one small
definition each. Another fault of these families (filtering, routing, NAT,
conntrack, neighbour) is one more FaultKind here."""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import replace
from typing import Any

from tracer.errors import LabError, UsageError
from tracer.lab import bird
from tracer.lab.faults import CLUSTER, Fault, FaultKind, last_node
from tracer.lab.link_faults import MTU_BLACKHOLE, RP_FILTER
from tracer.lab.state import LabState, Pod
from tracer.system import run

# --- policy-drop: a NetworkPolicy deny, as Calico's Felix programs it ---------
#
# Felix hooks the filter table's FORWARD chain with one rule jumping to
# cali-FORWARD, dispatches traffic towards a workload by its cali* interface
# (cali-to-wl-dispatch) to a per-workload chain cali-tw-<iface>, and ends that
# chain with a DROP when no policy accepted the packet. Every rule carries a
# "cali:<hash>" comment. Only the chains on the path to the one pod exist here.
FELIX_FORWARD = "cali-FORWARD"
FELIX_DISPATCH = "cali-to-wl-dispatch"


def _cali_comment(*parts: str) -> str:
    """A Felix-style rule id: 16 characters of a hash of what the rule is."""
    digest = hashlib.sha224("\0".join(parts).encode()).digest()
    return "cali:" + base64.urlsafe_b64encode(digest).decode()[:16]


def _workload_chain(pod: Pod) -> str:
    return f"cali-tw-{pod.veth}"


def _forward_jump(node_netns: str) -> list[str]:
    return ["-m", "comment", "--comment", _cali_comment(node_netns, "FORWARD"), "-j", FELIX_FORWARD]


def _policy_drop_apply(state: LabState, node: str, pod: Pod | None) -> dict[str, Any]:
    assert pod is not None
    netns = state.node(node).netns
    tw = _workload_chain(pod)
    rules = "\n".join([
        "*filter",
        f":{FELIX_FORWARD} - [0:0]",
        f":{FELIX_DISPATCH} - [0:0]",
        f":{tw} - [0:0]",
        f"-A {FELIX_FORWARD} -o cali+ -m comment --comment "
        f"\"{_cali_comment(tw, 'to-wl')}\" -j {FELIX_DISPATCH}",
        f"-A {FELIX_DISPATCH} -o {pod.veth} -m comment --comment "
        f"\"{_cali_comment(tw, 'dispatch')}\" -g {tw}",
        f"-A {tw} -m comment --comment \"{_cali_comment(tw, 'drop')}\" "
        "-m comment --comment \"Drop if no policies passed packet\" -j DROP",
        f"-I FORWARD 1 {' '.join(_forward_jump(netns))}",
        "COMMIT", "",
    ])
    run(["iptables-restore", "--noflush"], netns=netns, input=rules)
    return {"chain": tw, "pod_ip": pod.ip, "veth": pod.veth}


def _policy_drop_remove(state: LabState, fault: Fault) -> None:
    netns = state.node(fault.node).netns
    tw = fault.detail["chain"]
    run(["iptables", "-t", "filter", "-D", "FORWARD", *_forward_jump(netns)], netns=netns, check=False)
    for chain in (FELIX_FORWARD, FELIX_DISPATCH, tw):
        run(["iptables", "-t", "filter", "-F", chain], netns=netns, check=False)
    for chain in (FELIX_FORWARD, FELIX_DISPATCH, tw):
        run(["iptables", "-t", "filter", "-X", chain], netns=netns, check=False)
    if _policy_drop_in_effect(state, fault):
        raise LabError(f"policy-drop on {fault.node}: {tw} could not be removed")


def _policy_drop_in_effect(state: LabState, fault: Fault) -> bool:
    netns = state.node(fault.node).netns
    text = run(["iptables-save", "-t", "filter"], netns=netns).stdout
    return f"-A {fault.detail['chain']} " in text and f"-j {FELIX_FORWARD}" in text


def _on_node_b_pod(state: LabState) -> tuple[str, str | None]:
    """One endpoint of two never answers: the first pod of the last node."""
    for n in reversed(state.nodes):
        pods = state.pods_on(n.name)
        if pods:
            return n.name, pods[0].name
    raise LabError("the lab runs no pods")


POLICY_DROP = FaultKind(
    name="policy-drop", family="filtering",
    summary="a NetworkPolicy deny towards one pod (filter FORWARD -> cali-FORWARD -> "
            "cali-tw-<veth> -> DROP): its connections time out",
    default_target=_on_node_b_pod, apply=_policy_drop_apply, remove=_policy_drop_remove,
    in_effect=_policy_drop_in_effect, needs_pod=True)


# --- route-withdrawn: a node's BGP session to the ToR goes down ---------------
#
# BIRD on the node disables its session to the route reflector: the ToR
# withdraws the node's pod block from every other node, so a packet DNATed
# on another node to one of its pods has no route.
TOR_SESSION = "tor"  # the node's BGP protocol towards the ToR (tracer/lab/bird.py)
CONVERGE_S = 10.0


def _birdc(state: LabState, node: str, *args: str) -> str:
    files = state.node(node).bird
    proc = run(["birdc", "-s", files.socket, *args], check=False, timeout=10)
    if proc.returncode != 0:
        raise LabError(f"birdc on {node}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _block_routes_elsewhere(state: LabState, node: str) -> bool:
    """Whether every other node has a route to `node`'s pod block."""
    block = state.node(node).pod_cidr
    return all(any(dst == block for dst, _ in bird.installed(n.netns))
               for n in state.nodes if n.name != node)


def _wait_routes(state: LabState, node: str, present: bool) -> None:
    deadline = time.monotonic() + CONVERGE_S
    while _block_routes_elsewhere(state, node) != present:
        if time.monotonic() > deadline:
            what = "learnt again" if present else "withdrawn"
            raise LabError(f"{node}'s pod block was not {what} within {CONVERGE_S:.0f} s")
        time.sleep(0.1)


def _route_withdrawn_apply(state: LabState, node: str, pod: Pod | None) -> dict[str, Any]:
    if state.encap != "none":
        # With VXLAN or IPIP, Felix programs the routes to other blocks, not BIRD.
        raise UsageError(f"route-withdrawn needs the lab without encapsulation (it runs {state.encap})")
    _birdc(state, node, "disable", TOR_SESSION)
    _wait_routes(state, node, present=False)
    return {"session": TOR_SESSION, "pod_cidr": state.node(node).pod_cidr}


def _route_withdrawn_remove(state: LabState, fault: Fault) -> None:
    _birdc(state, fault.node, "enable", TOR_SESSION)
    _wait_routes(state, fault.node, present=True)


def _route_withdrawn_in_effect(state: LabState, fault: Fault) -> bool:
    sessions = {p.name: p for p in bird.bgp_sessions(state.node(fault.node).bird)}
    return TOR_SESSION in sessions and not sessions[TOR_SESSION].established


ROUTE_WITHDRAWN = FaultKind(
    name="route-withdrawn", family="routing",
    summary="a node's BGP session to the ToR is down: its pod block is withdrawn, and "
            "packets DNATed to its pods elsewhere have no route",
    default_target=last_node, apply=_route_withdrawn_apply, remove=_route_withdrawn_remove,
    in_effect=_route_withdrawn_in_effect)


# --- wrong-target-port: the Service's targetPort names a port no pod serves ----
#
# kube-proxy on every node DNATs to endpoint IP:targetPort; with a targetPort
# the pods do not listen on, each pod's kernel answers the SYN with a RST.
# The rules are rendered by the same renderer as the healthy lab's, from the
# lab's state with the Service's endpoint port changed, and loaded on every
# node. `tracer lab up` puts the healthy rules back (their digest changed).


def _every_node(state: LabState) -> tuple[str, str | None]:
    return CLUSTER, None


def _unused_port(state: LabState) -> int:
    """A port none of the Service's pods listens on (nginx listens on the
    ports the manifest's Services and containers name)."""
    used = {sp.target_port for s in state.services for sp in s.ports}
    used |= {e.port for s in state.services for sp in s.ports for e in sp.endpoints}
    return next(p for p in range(8081, 9000) if p not in used)


def _with_endpoint_port(state: LabState, service: str, port: int | None) -> LabState:
    """The state with `service`'s endpoints on `port` (None: as they are)."""
    if port is None:
        return state
    services = tuple(
        replace(s, ports=tuple(replace(sp, endpoints=tuple(replace(e, port=port) for e in sp.endpoints))
                               for sp in s.ports)) if s.name == service else s
        for s in state.services)
    return replace(state, services=services)


def _load_rules_everywhere(state: LabState, service: str, port: int | None) -> None:
    from tracer.kube.manifest import load_manifest
    from tracer.lab import kubeproxy

    manifest = load_manifest(state.manifest)
    rendered = _with_endpoint_port(state, service, port)
    for node in state.nodes:
        kubeproxy.load(state, node, kubeproxy.render_all(manifest, rendered, node))


def _wrong_target_port_apply(state: LabState, node: str, pod: Pod | None) -> dict[str, Any]:
    service = state.services[0].name
    wrong = _unused_port(state)
    _load_rules_everywhere(state, service, wrong)
    return {"service": service, "target_port": wrong}


def _wrong_target_port_remove(state: LabState, fault: Fault) -> None:
    _load_rules_everywhere(state, fault.detail["service"], None)


def _wrong_target_port_in_effect(state: LabState, fault: Fault) -> bool:
    from tracer.lab import kubeproxy

    port = fault.detail["target_port"]
    ips = {e.ip for s in state.services if s.name == fault.detail["service"]
           for sp in s.ports for e in sp.endpoints}
    node = state.nodes[0]
    text = (kubeproxy.nft_table(node.netns) if state.proxy_mode == "nftables"
            else kubeproxy.save(node.netns)) or ""
    return any(f"{ip}:{port}" in text for ip in ips)


WRONG_TARGET_PORT = FaultKind(
    name="wrong-target-port", family="nat",
    summary="the Service's targetPort is a port its pods do not listen on: every "
            "connection is reset by the pod",
    default_target=_every_node, apply=_wrong_target_port_apply,
    remove=_wrong_target_port_remove, in_effect=_wrong_target_port_in_effect,
    cluster_wide=True)


# --- no-endpoints: the Deployment behind a Service has no ready pod ------------
#
# kube-proxy then writes no NAT for the Services that select it, only filter
# rules that REJECT their traffic (KUBE-SERVICES / KUBE-EXTERNAL-SERVICES,
# "<ns/name> has no endpoints"; in nftables mode no-endpoint-* map elements
# that goto reject-chain): the client gets ICMP port unreachable, i.e.
# connection refused. The lab has no readiness probes to fail, so the pods
# keep running; the rules are rendered, on every node, as if none were ready.


def _selecting_services(state: LabState) -> list[str]:
    """The first Service and every other one selecting the same pods (its
    Deployment's): with no ready pod, all of them lose their endpoints."""
    first = state.services[0]
    pods = {e.pod for sp in first.ports for e in sp.endpoints}
    return [f"{s.namespace}/{s.name}" for s in state.services if s is first
            or (pods and pods == {e.pod for sp in s.ports for e in sp.endpoints})]


def _without_endpoints(state: LabState, services: list[str]) -> LabState:
    """The state with the Services (namespace/name) left without endpoints."""
    return replace(state, services=tuple(
        replace(s, ports=tuple(replace(sp, endpoints=()) for sp in s.ports))
        if f"{s.namespace}/{s.name}" in services else s for s in state.services))


def _load_rendered_everywhere(state: LabState, rendered: LabState) -> None:
    from tracer.kube.manifest import load_manifest
    from tracer.lab import kubeproxy

    manifest = load_manifest(state.manifest)
    for node in state.nodes:
        kubeproxy.load(state, node, kubeproxy.render_all(manifest, rendered, node))


def _no_endpoints_apply(state: LabState, node: str, pod: Pod | None) -> dict[str, Any]:
    services = _selecting_services(state)
    _load_rendered_everywhere(state, _without_endpoints(state, services))
    return {"services": services}


def _no_endpoints_remove(state: LabState, fault: Fault) -> None:
    _load_rendered_everywhere(state, state)


def _no_endpoints_in_effect(state: LabState, fault: Fault) -> bool:
    """Every node rejects the Services: their REJECT rule (iptables) or
    no-endpoint-services element (nftables) is loaded."""
    from tracer.lab import kubeproxy

    nft = state.proxy_mode == "nftables"
    for node in state.nodes:
        lines = ((kubeproxy.nft_table(node.netns) or "") if nft
                 else kubeproxy.save(node.netns, table="filter")).splitlines()
        for full in fault.detail["services"]:
            # kube-proxy's comment is the ServicePortName: "ns/name" or "ns/name:port".
            named = [line for line in lines
                     if f'"{full}"' in line or f'"{full}:' in line or f'"{full} ' in line]
            verdict = "goto reject-chain" if nft else "has no endpoints"
            if not any(verdict in line and ("REJECT" in line or nft) for line in named):
                return False
    return True


NO_ENDPOINTS = FaultKind(
    name="no-endpoints", family="nat",
    summary="the Deployment has no ready pod: kube-proxy REJECTs its Services' traffic "
            "(connection refused). The lab models no readiness: its pods keep running, "
            "only kube-proxy's rules change",
    default_target=_every_node, apply=_no_endpoints_apply, remove=_no_endpoints_remove,
    in_effect=_no_endpoints_in_effect, cluster_wide=True)


KINDS: dict[str, FaultKind] = {k.name: k for k in (
    POLICY_DROP, ROUTE_WITHDRAWN, WRONG_TARGET_PORT, NO_ENDPOINTS, MTU_BLACKHOLE, RP_FILTER)}
