"""The Service API beyond the seed's two Services, in the lab with real
traffic (tracer/lab/manifests/service-api.yaml: three nginx replicas, two on
node A and one on node B): session affinity, traffic policies and
load-balancer source ranges, each healthy and broken, each against a witness
the tracer does not compute (kube-proxy's recent lists or affinity sets, the
nginx access logs' client addresses, the client's own per-address answers,
the firewall chain's counters)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.analysis.service_api_witness import (
    affinity_pins_iptables,
    affinity_pins_nftables,
    captured_traffic,
    flush_recent_lists,
    sep_endpoints,
)
from tests.capture.lab_capture import sep_counters, sh
from tracer.cli import main
from tracer.lab import controller, plan

pytestmark = [pytest.mark.root, pytest.mark.lab]

MANIFEST = Path(plan.__file__).parent / "manifests" / "service-api.yaml"
NODES = ["lab-node-a", "lab-node-b"]
CLIENTS = 12
PER_CLIENT = 6


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def api_lab(lab, request):
    """The lab on service-api.yaml, once per kube-proxy mode."""
    yield controller.up(MANIFEST, proxy_mode=request.param).state
    controller.up()


def _tracer_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None), out
    return json.loads(out)


def _fairness(capsys, tmp_path: Path) -> dict:
    return _tracer_json(capsys, "fairness", str(tmp_path / "a"), str(tmp_path / "b"))


def _pods_on(state, node: str) -> set[str]:
    return {p.name for p in state.pods if p.node == node}


def _flush_affinity(mode: str) -> None:
    for netns in NODES:
        if mode == "iptables":
            flush_recent_lists(netns)
            continue
        doc = json.loads(sh(netns, "nft", "-j", "list", "sets", "ip"))
        for item in doc["nftables"]:
            s = item.get("set")
            if s and s["table"] == "kube-proxy" and s["name"].startswith("affinity-"):
                sh(netns, "nft", "flush", "set", "ip", "kube-proxy", s["name"])


# --- session affinity -----------------------------------------------------------------------


def test_affinity_pins_every_client_and_the_tracer_agrees(api_lab, tmp_path, capsys):
    state = api_lab
    mode = state.proxy_mode
    _flush_affinity(mode)
    # One connection at a time: a client's next connection starts after
    # its previous one was pinned, as kube-proxy's rules assume.
    (r,), _ = captured_traffic(tmp_path, "web-affinity", [dict(
        requests=CLIENTS * PER_CLIENT, concurrency=1, target="load-balancer",
        clients=CLIENTS)], state=state)
    pins = (affinity_pins_iptables if mode == "iptables" else affinity_pins_nftables)(NODES)
    assert (r.ok, r.failed) == (CLIENTS * PER_CLIENT, 0), r
    # The client: every address got all its answers from one pod.
    assert len(r.by_source) == CLIENTS
    assert all(len(pods) == 1 for pods in r.by_source.values()), r.by_source
    # The kernel: each address is pinned to that pod's endpoint, and only to it.
    pod_ip = {p.name: p.ip for p in state.pods}
    assert pins == {src: {pod_ip[next(iter(pods))]} for src, pods in r.by_source.items()}

    doc = _fairness(capsys, tmp_path)
    aff = doc["affinity"]
    assert aff["type"] == "ClientIP" and aff["timeout_seconds"] == 10800
    assert (aff["clients"], aff["first_connections"], aff["returning_connections"],
            aff["violation_count"]) == (CLIENTS, CLIENTS, CLIENTS * (PER_CLIENT - 1), 0)
    # The spread judged is the clients' first connections: per endpoint, the
    # number of clients the kernel pinned to it.
    drawn = {e["endpoint"].split(":")[0]: e["connections"]
             for e in doc["overall"]["endpoints"] if e["connections"]}
    assert drawn == dict(Counter(next(iter(v)) for v in pins.values()))


def test_lost_affinity_is_listed_client_by_client(api_lab, tmp_path, capsys):
    """Broken: kube-proxy's rules promise ClientIP affinity, but the nodes
    forget their clients halfway (the recent lists or affinity sets
    emptied, as when a list overflows xt_recent's ip_list_tot or a set is
    flushed): a client's next
    connection is a fresh draw and may land on another endpoint."""
    half = dict(requests=CLIENTS * PER_CLIENT // 2, concurrency=1, target="load-balancer",
                clients=CLIENTS)
    _flush_affinity(api_lab.proxy_mode)
    results, _ = captured_traffic(tmp_path, "web-affinity", [half, half], state=api_lab,
                                  between=lambda: _flush_affinity(api_lab.proxy_mode))
    pods_of: dict[str, set[str]] = {}
    for r in results:
        assert r.ok == CLIENTS * PER_CLIENT // 2, r
        for src, pods in r.by_source.items():
            pods_of.setdefault(src, set()).update(pods)
    wandered = {src for src, pods in pods_of.items() if len(pods) > 1}
    # Twelve fresh draws over three endpoints: all twelve landing where they
    # were has probability (1/3)^12.
    assert wandered
    doc = _fairness(capsys, tmp_path)
    aff = doc["affinity"]
    # A client wandered exactly when one of its connections left the
    # endpoint of its previous one: the tracer lists those clients, and
    # each wanderer moved once (one flush).
    assert {v["client"].rsplit(":", 1)[0] for v in aff["violations"]} == wandered
    assert aff["violation_count"] == len(wandered)
    assert aff["clients"] == CLIENTS


# --- traffic policies ---------------------------------------------------------------------


def _logged_sources(logged: dict[str, set[str]], pods: set[str]) -> set[str]:
    return set().union(*(logged.get(p, set()) for p in pods))


def test_external_policy_local_by_source(api_lab, tmp_path, capsys):
    """web-local (NodePort, externalTrafficPolicy Local): outside clients
    reach only the endpoints of the node they connect to, with their address
    kept; pods and the node itself are sent to every endpoint."""
    state = api_lab
    on_a, on_b = _pods_on(state, "node-a"), _pods_on(state, "node-b")
    pod_b = next(p for p in state.pods if p.node == "node-b")
    runs = [dict(requests=24, target="node-port", node="a", clients=4),
            dict(requests=24, target="node-port", node="b", clients=4),
            dict(requests=24, target="node-port", node="a", source=pod_b.name),
            dict(requests=24, target="node-port", node="a", source="node-a")]
    (to_a, to_b, from_pod, from_node), logged = captured_traffic(
        tmp_path, "web-local", runs, state=state)
    runs = (to_a, to_b, from_pod, from_node)
    assert all(r.ok == 24 for r in runs), [(r.ok, r.errors) for r in runs]
    assert set(to_a.by_pod) <= on_a and set(to_b.by_pod) <= on_b, (to_a.by_pod, to_b.by_pod)
    # nginx saw the clients' own addresses on both nodes' pods (not masqueraded).
    clients = set(state.client.ips[:4])
    assert clients <= _logged_sources(logged, on_a), logged
    assert clients <= _logged_sources(logged, on_b), logged

    doc = _fairness(capsys, tmp_path)
    # No connection reached an endpoint its source was not promised, and
    # none of the kept addresses was rewritten.
    overall = {k: v for k, v in doc["overall"].items() if k != "endpoints"}
    assert doc["overall"]["connections"] == 96, (overall, doc["notes"])
    assert doc["overall"]["chi_square"]["impossible_observations"] == 0, (overall, doc["notes"])
    assert doc["source_rewrites"] == [], doc["source_rewrites"][:3]


def test_stray_masquerade_breaks_the_kept_source_and_is_listed(api_lab, tmp_path, capsys):
    """Broken: a MASQUERADE ahead of kube-proxy's (a CNI's or a hand-made
    rule) on node A rewrites outside clients that externalTrafficPolicy
    Local promises to keep."""
    state = api_lab
    rule = ["POSTROUTING", "-d", state.cluster_cidr, "-p", "tcp", "-j", "MASQUERADE"]
    sh("lab-node-a", "iptables", "-t", "nat", "-I", *rule[:1], "1", *rule[1:])
    try:
        (r,), logged = captured_traffic(tmp_path, "web-local", [
            dict(requests=20, target="node-port", node="a", clients=2)], state=state)
    finally:
        sh("lab-node-a", "iptables", "-t", "nat", "-D", *rule)
    assert r.ok == 20
    on_a = _pods_on(state, "node-a")
    # The witness: the pods logged node A's address, never the clients'.
    assert _logged_sources(logged, on_a) == {state.node("a").ip}
    doc = _fairness(capsys, tmp_path)
    rewrites = doc["source_rewrites"]
    assert len(rewrites) == 20
    assert {w["client"].rsplit(":", 1)[0] for w in rewrites} == set(state.client.ips[:2])
    assert {w["seen_as"].rsplit(":", 1)[0] for w in rewrites} == {state.node("a").ip}
    assert any("masqueraded" in n for n in doc["notes"])


def test_internal_policy_local_keeps_pods_on_their_node(api_lab, tmp_path, capsys):
    state = api_lab
    on_a, on_b = _pods_on(state, "node-a"), _pods_on(state, "node-b")
    pod_a = next(p for p in state.pods if p.node == "node-a")
    pod_b = next(p for p in state.pods if p.node == "node-b")
    runs = [dict(requests=24, target="cluster-ip", source=pod_a.name),
            dict(requests=24, target="cluster-ip", source=pod_b.name),
            dict(requests=24, target="cluster-ip", source="node-b")]
    (from_a, from_b, from_node_b), logged = captured_traffic(tmp_path, "web-internal", runs,
                                                             state=state)
    assert from_a.ok == from_b.ok == from_node_b.ok == 24
    assert set(from_a.by_pod) <= on_a and set(from_b.by_pod) == {pod_b.name}
    # The node's own connections keep to its endpoints too.
    assert set(from_node_b.by_pod) == {pod_b.name}
    # Pod to cluster IP: no masquerade, but for a pod reaching itself
    # (KUBE-SEP's hairpin rule masquerades it to its node's address).
    assert _logged_sources(logged, on_a - {pod_a.name}) <= {pod_a.ip}
    assert _logged_sources(logged, {pod_a.name}) <= {state.node("a").ip}
    assert _logged_sources(logged, on_b) == {state.node("b").ip}
    doc = _fairness(capsys, tmp_path)
    assert doc["overall"]["connections"] == 72
    assert doc["overall"]["chi_square"]["impossible_observations"] == 0


# --- load-balancer source ranges ----------------------------------------------------------


def _firewall_drops(state) -> int:
    """Packets kube-proxy's KUBE-PROXY-FIREWALL DROP rules dropped, all nodes."""
    total = 0
    for n in state.nodes:
        for line in sh(n.netns, "iptables-save", "-c", "-t", "filter").splitlines():
            if line.startswith("[") and "-A KUBE-PROXY-FIREWALL" in line and "-j DROP" in line:
                total += int(line[1:].split(":")[0])
    return total


def test_source_ranges_admit_one_client_and_deny_the_other(api_lab, tmp_path, capsys):
    """web-ranges admits 192.168.64.11/32 only: the client's first address
    (.10) is dropped, its second (.11) served."""
    state = api_lab
    denied, admitted = state.client.ips[:2]
    # kube-proxy's nftables rules count nothing: the counter witness is iptables'.
    counted = state.proxy_mode == "iptables"
    before = _firewall_drops(state) if counted else 0
    # A client timeout under TCP's first SYN retransmission (1 s): one SYN
    # per denied connection, so the drop counter counts connections.
    (r,), _ = captured_traffic(tmp_path, "web-ranges", [dict(
        requests=20, target="load-balancer", clients=2, timeout=0.5)], state=state)
    assert r.failed_by_source == {denied: 10} and r.by_source.keys() == {admitted}
    assert sum(r.by_source[admitted].values()) == 10
    if counted:
        assert _firewall_drops(state) - before == 10
    doc = _tracer_json(capsys, "diagnose", str(tmp_path / "a"), str(tmp_path / "b"))
    assert doc["connections"]["succeeded"] == 10
    denials = [g for g in doc["failures"] if g.get("denied_by")]
    assert sum(g["count"] for g in denials) == 10
    assert all(g["denied_by"]["kind"] == "loadBalancerSourceRanges" for g in denials)
    assert {s for g in denials for s in g["denied_by"]["sources"]} == {denied}


# --- a UDP Service ---------------------------------------------------------------------------

_UDP_CT = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def _udp_conntrack(netns: str, port: int) -> list[tuple[tuple, tuple, bool]]:
    """(original, reply, answered) of the node's UDP entries to port."""
    out = []
    for line in sh(netns, "conntrack", "-L", "-p", "udp", "--dport", str(port)).splitlines():
        found = _UDP_CT.findall(line)
        if len(found) >= 2:
            out.append((found[0], found[1], "[UNREPLIED]" not in line))
    return out


def test_udp_service_dns_traced_flow_by_flow(api_lab, tmp_path, capsys):
    """web-dns: DNS queries from the client to node A's NodePort 30053/udp,
    each from a new source port: one conntrack flow, one DNAT decision, no
    handshake. The tracer's flows per endpoint against the pods' dnsmasq
    query logs, node A's KUBE-SEP counters and its conntrack table."""
    state = api_lab
    queries = 1000
    for netns in NODES:
        sh(netns, "conntrack", "-F")
    counted = state.proxy_mode == "iptables"  # KUBE-SEP counters; nftables counts nothing
    seps = sep_endpoints("lab-node-a", "default/web-dns") if counted else {}
    before = sep_counters("lab-node-a") if counted else {}
    (r,), _ = captured_traffic(tmp_path, "web-dns", [dict(
        requests=queries, concurrency=4, target="node-port", node="a")], state=state)
    counters = sep_counters("lab-node-a") if counted else {}
    entries = _udp_conntrack("lab-node-a", 30053)
    assert (r.ok, r.failed, r.flows) == (queries, 0, queries), r
    pod_ip = {p.name: p.ip for p in state.pods}
    logged = {pod_ip[p]: n for p, n in r.served_by_pod.items()}
    assert sum(logged.values()) == queries and len(logged) == 3
    # The kernel's own count: KUBE-SEP rule hits per endpoint, and one
    # answered conntrack entry per query, replied from its endpoint.
    if counted:
        assert {ip: counters[c] - before.get(c, 0) for c, ip in seps.items()} == logged
    assert len(entries) == queries and all(answered for _, _, answered in entries)
    assert Counter(reply[0] for _, reply, _ in entries) == Counter(logged)

    doc = _fairness(capsys, tmp_path)
    assert doc["overall"]["connections"] == queries
    flows = {e["endpoint"]: e["connections"] for e in doc["overall"]["endpoints"]}
    assert flows == {f"{ip}:53": n for ip, n in logged.items()}
    assert doc["overall"]["chi_square"]["impossible_observations"] == 0
