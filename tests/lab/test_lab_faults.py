"""Faults injected into the lab (tracer/lab/faults.py, fault_kinds.py) are
real: the client sees the failures, and the kernel's own counters say where
the packets went. Each test clears what it added, and checks that clearing
brings the Service back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.analysis.fault_runs import CLIENT_TIMEOUT_S
from tests.capture.lab_capture import nstat, sep_counters, sh
from tests.lab.fault_witness import drop_counter, reject_packets
from tracer.cli import main
from tracer.lab import bird, controller, faults
from tracer.lab.fault_kinds import KINDS
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

REQUESTS = 24


@pytest.fixture
def faulty_lab(lab_state) -> Iterator:
    """The lab, with every fault cleared afterwards, however the test ended."""
    yield lab_state
    controller.clear_faults()
    assert faults.active(lab_state) == []


def _dnat_to(netns: str, pod_ip: str, before: dict[str, int]) -> int:
    """New connections DNATed to pod_ip on netns since `before` (KUBE-SEP counters)."""
    after = sep_counters(netns)
    chains = {line.split()[1] for line in sh(netns, "iptables-save", "-t", "nat").splitlines()
              if line.startswith("-A KUBE-SEP-") and f"--to-destination {pod_ip}:" in line}
    return sum(after[c] - before.get(c, 0) for c in chains if c in after)


def _traffic():
    # An entry left from an earlier run with the same client port would
    # carry its connection past the fault's new rules (conntrack routes an
    # established flow by its NAT binding): start from an empty table.
    for netns in ("lab-node-a", "lab-node-b"):
        sh(netns, "conntrack", "-F")
    return run_traffic(requests=REQUESTS, concurrency=4, target="external-ip",
                       timeout=CLIENT_TIMEOUT_S)


def test_policy_drop_silences_one_endpoint_until_cleared(faulty_lab, capsys):
    state = faulty_lab
    victim = state.pods_on(state.nodes[-1].name)[0]
    before = sep_counters("lab-node-a")
    assert main_exit(["lab", "fault", "add", "policy-drop"]) == 0
    fault = faults.active(state)[0]
    assert (fault.kind, fault.node, fault.pod) == ("policy-drop", victim.node, victim.name)
    result = _traffic()
    to_victim = _dnat_to("lab-node-a", victim.ip, before)
    # Every connection DNATed to the victim failed, and only those.
    assert result.failed == to_victim > 0 and result.ok == REQUESTS - to_victim
    assert victim.name not in result.served_by_pod or result.served_by_pod[victim.name] == 0
    # The Felix-shaped DROP rule on the victim's node counted their SYNs.
    assert drop_counter(state.node(victim.node).netns, fault.detail["chain"]) >= to_victim
    capsys.readouterr()
    assert main_exit(["lab", "status", "--json"]) in (0, 1)
    status = json.loads(capsys.readouterr().out)
    assert status["faults"] == [{"kind": "policy-drop", "node": victim.node, "pod": victim.name,
                                 "in_effect": True}]
    assert main_exit(["lab", "fault", "clear", "policy-drop"]) == 0
    assert "cali-FORWARD" not in sh(state.node(victim.node).netns, "iptables-save", "-t", "filter")
    healthy = _traffic()
    assert healthy.ok == REQUESTS and healthy.failed == 0


def test_route_withdrawn_takes_a_pod_block_away_until_cleared(faulty_lab):
    state = faulty_lab
    node_b = state.nodes[-1]
    remote = state.pods_on(node_b.name)[0]
    assert any(dst == node_b.pod_cidr for dst, _ in bird.installed("lab-node-a"))
    before = sep_counters("lab-node-a")
    fault = controller.add_fault("route-withdrawn")
    assert (fault.kind, fault.node) == ("route-withdrawn", node_b.name)
    # node A learnt node B's block from the ToR; now it is gone (BIRD's own table).
    assert not any(dst == node_b.pod_cidr for dst, _ in bird.installed("lab-node-a"))
    result = _traffic()
    to_remote = _dnat_to("lab-node-a", remote.ip, before)
    assert result.failed == to_remote > 0 and result.ok == REQUESTS - to_remote
    assert [live for _, live in faults.status(state, KINDS)] == [True]
    controller.clear_faults("route-withdrawn")
    assert any(dst == node_b.pod_cidr for dst, _ in bird.installed("lab-node-a"))
    healthy = _traffic()
    assert healthy.ok == REQUESTS and healthy.failed == 0


def test_fault_errors_are_one_line(faulty_lab, capsys):
    for argv, code, text in [
        (["lab", "fault", "add", "no-such-fault"], 2, "no fault 'no-such-fault'"),
        (["lab", "fault", "add", "policy-drop", "--pod", "nope"], 2, "no lab pod 'nope'"),
        (["lab", "fault", "add", "policy-drop", "--node", "z"], 2, "no lab node 'z'"),
        (["lab", "fault", "clear", "no-such-fault"], 2, "no fault 'no-such-fault'"),
    ]:
        capsys.readouterr()
        assert main_exit(argv) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
    assert faults.active(faulty_lab) == []


def main_exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_no_endpoints_refuses_every_connection_until_cleared(faulty_lab, capsys):
    state = faulty_lab
    node_a = state.nodes[0].netns
    assert main_exit(["lab", "fault", "add", "no-endpoints"]) == 0
    # The rules were just loaded (a new REJECT rule, or a new table): 0 in
    # either mode, read rather than assumed.
    before = reject_packets(state, node_a)
    fault = faults.active(state)[0]
    assert (fault.kind, fault.node) == ("no-endpoints", faults.CLUSTER)
    assert "default/nginx-demo-1" in fault.detail["services"]
    assert [live for _, live in faults.status(state, KINDS)] == [True]
    icmp = ("IcmpOutDestUnreachs", "IcmpOutRateLimitHost", "IcmpOutRateLimitGlobal")
    icmp_before = {c: nstat(node_a, c) for c in icmp}
    result = _traffic()
    assert (result.ok, result.failed) == (0, REQUESTS) and result.served == 0
    # The REJECT answers each SYN with an ICMP port unreachable, which the
    # client takes as ECONNREFUSED; but the kernel rate-limits ICMP errors per
    # destination (icmp_ratelimit: a burst of 6, then one a second), so a
    # connection whose SYNs all met the limit times out instead, as it does
    # in a real cluster.
    refused = result.errors.get("ConnectionRefusedError", 0)
    assert set(result.errors) <= {"ConnectionRefusedError", "timeout"} and refused > 0
    sent = {c: nstat(node_a, c) - icmp_before[c] for c in icmp}
    # The kernel's own counts: every refused SYN (retransmissions too) was
    # answered or counted as rate-limited; each refused connection had one.
    rejected = reject_packets(state, node_a) - before
    assert rejected == sum(sent.values()) >= REQUESTS, (rejected, sent)
    assert sent["IcmpOutDestUnreachs"] >= refused
    capsys.readouterr()
    assert main_exit(["services", "--netns", node_a, "--json"]) == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    (port,) = listed["nginx-demo-1"]["ports"]
    assert port["no_endpoints"] and port["endpoints"] == []
    assert port["cluster_ips"] == ["10.96.88.88"]
    assert main_exit(["services", "--netns", node_a]) == 0
    assert "no endpoints (REJECT)" in capsys.readouterr().out
    assert main_exit(["lab", "fault", "clear", "no-endpoints"]) == 0
    assert "has no endpoints" not in sh(node_a, "iptables-save", "-t", "filter")
    healthy = _traffic()
    assert healthy.ok == REQUESTS and healthy.failed == 0
