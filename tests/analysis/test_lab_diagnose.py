"""`tracer diagnose` on real captures of a broken lab (issue 13): each fault
is injected with `tracer lab fault add`, both nodes are captured while the
lab client sends real requests, and the diagnosis must match what the client
saw (its failed requests), name where the packets stopped, blame the
endpoint the kube-proxy counters say the failures went to and never the
healthy one; once the fault is cleared, the same run finds nothing wrong."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest

from tests.analysis.fault_runs import REQUESTS
from tests.analysis.fault_runs import capture_and_diagnose as _capture_and_diagnose
from tests.capture.lab_capture import nstat, sh
from tracer.lab import controller

pytestmark = [pytest.mark.root, pytest.mark.lab]

def _assert_blames_only(doc: dict, victim_ip: str, failed: int) -> None:
    assert sum(g["count"] for g in doc["failures"]) == failed
    assert {g["common"]["endpoint"] for g in doc["failures"]} == {f"{victim_ip}:80"}
    healthy = [e for e in doc["endpoints"] if e["endpoint"] != f"{victim_ip}:80"]
    assert healthy and all(e["failed"] == 0 for e in healthy)


def _assert_cleared(kind: str, tmp_path, capsys) -> None:
    controller.clear_faults(kind)
    traffic, _, doc = _capture_and_diagnose(tmp_path / "cleared", capsys)
    assert traffic.ok == REQUESTS and doc["verdict"] == "healthy" and doc["failures"] == []
    assert doc["connections"]["succeeded"] == REQUESTS


def test_diagnose_names_a_policy_drop(clean_lab, tmp_path, capsys):
    state = clean_lab
    victim = state.pods_on(state.nodes[-1].name)[0]
    controller.add_fault("policy-drop")
    traffic, dnat, doc = _capture_and_diagnose(tmp_path / "broken", capsys)
    assert traffic.failed == dnat[victim.ip] > 0, (traffic.errors, dnat)
    c = doc["connections"]
    # A SYN retried after a MASQUERADE port clash with a healthy pod's
    # TIME_WAIT is DNATed twice but is one client connection (stop 8's notes):
    # the counters may exceed the connections, never fall short.
    assert doc["verdict"] == "failing" and c["total"] == REQUESTS <= sum(dnat.values())
    assert c["succeeded"] == traffic.ok and c["no_answer"] == traffic.failed
    (group,) = doc["failures"]
    assert group["outcome"] == "no_answer"
    assert {k: group["stop"][k] for k in ("node", "kind", "drop_reason")} == {
        "node": "lab-node-b", "kind": "dropped", "drop_reason": "NETFILTER_DROP"}
    _assert_blames_only(doc, victim.ip, traffic.failed)
    _assert_cleared("policy-drop", tmp_path, capsys)


def test_diagnose_names_a_withdrawn_route(clean_lab, tmp_path, capsys):
    """Node B's block withdrawn: node A's default route sends the packets
    DNATed to node B's pod to the ToR, which has no route either. The ToR
    answers with ICMP net unreachable, as often as the kernel's ICMP rate
    limit lets it (the client then gives up: EHOSTUNREACH/ENETUNREACH); the
    connections whose SYNs all met the limit go unanswered. Witness: every
    SYN of a failed connection is one the ToR counted as having no route."""
    state = clean_lab
    victim = state.pods_on(state.nodes[-1].name)[0]
    no_route_before = nstat(state.tor.netns, "IpExtInNoRoutes")
    controller.add_fault("route-withdrawn")
    traffic, dnat, doc = _capture_and_diagnose(tmp_path / "broken", capsys)
    no_route = nstat(state.tor.netns, "IpExtInNoRoutes") - no_route_before
    assert traffic.failed == dnat[victim.ip] > 0, (traffic.errors, dnat)
    c = doc["connections"]
    assert c["succeeded"] == traffic.ok
    assert c["no_answer"] + c["unreachable"] == traffic.failed
    assert c["unreachable"] == traffic.errors.get("OSError", 0)
    _assert_blames_only(doc, victim.ip, traffic.failed)
    for g in doc["failures"]:
        if g["outcome"] == "unreachable":
            assert g["icmp"]["sender"] == state.tor.ip and g["icmp"]["sent_by"] == "router"
            assert (g["icmp"]["type"], g["icmp"]["code"]) == (3, 0)  # net unreachable
        else:
            assert g["outcome"] == "no_answer"
            assert {k: g["stop"][k] for k in ("node", "kind", "probe", "device")} == {
                "node": "lab-node-a", "kind": "last_seen", "probe": "tx", "device": "eth0"}
    syns = sum(g["count"] + g["syn_retransmits"] for g in doc["failures"])
    assert no_route == syns, (no_route, syns)
    _assert_cleared("route-withdrawn", tmp_path, capsys)


def test_diagnose_names_a_wrong_target_port(clean_lab, tmp_path, capsys):
    fault = controller.add_fault("wrong-target-port")
    traffic, dnat, doc = _capture_and_diagnose(tmp_path / "broken", capsys)
    assert traffic.ok == 0 and traffic.failed == REQUESTS == sum(dnat.values())
    assert doc["verdict"] == "failing" and doc["connections"]["reset"] == REQUESTS
    # Every pod resets: the groups are resets by the pod, per endpoint, and
    # their endpoints are the pods on the wrong port, as DNAT chose them.
    assert {(g["outcome"], g["reset_by"]) for g in doc["failures"]} == {("reset", "pod")}
    per_ip: dict[str, int] = {}
    for g in doc["failures"]:
        for endpoint, n in g["endpoints"].items():
            ip, port = endpoint.rsplit(":", 1)
            assert int(port) == fault.detail["target_port"]
            per_ip[ip] = per_ip.get(ip, 0) + n
    assert per_ip == dnat
    controller.clear_faults("wrong-target-port")
    traffic, _, doc = _capture_and_diagnose(tmp_path / "cleared", capsys)
    assert traffic.ok == REQUESTS and doc["verdict"] == "healthy"


def test_diagnose_names_strict_rp_filter(clean_lab, tmp_path, capsys):
    """Strict rp_filter on node B's eth0, its route back to node A by another
    NIC: every SYN that node A DNATs (and MASQUERADEs) to node B's pod is
    dropped on arrival. Witnesses: the kernel's own IPReversePathFilter
    counter on node B counts exactly the SYNs the capture saw dropped, and the
    client saw exactly those connections fail."""
    state = clean_lab
    victim = state.pods_on(state.nodes[-1].name)[0]
    # Node B's strict check also refuses node A's ARP (arp_process routes the
    # request back to its sender): once node A's entry for node B goes stale
    # and is probed, the connections fail on node A instead (neighbour
    # failed). A fresh entry stays reachable for at least 15 s
    # (base_reachable_time 30 s, randomised by half), far longer than this run.
    # An ARP exchange makes one: the old entry goes, the ping resolves anew.
    sh("lab-node-a", "ip", "neigh", "flush", "to", state.nodes[-1].ip)
    sh("lab-node-a", "ping", "-c", "1", "-W", "1", state.nodes[-1].ip)
    rp_before = nstat("lab-node-b", "TcpExtIPReversePathFilter")
    controller.add_fault("rp-filter")
    traffic, dnat, doc = _capture_and_diagnose(tmp_path / "broken", capsys)
    rp_dropped = nstat("lab-node-b", "TcpExtIPReversePathFilter") - rp_before
    assert traffic.failed == dnat[victim.ip] > 0, (traffic.errors, dnat)
    assert doc["connections"]["no_answer"] == traffic.failed
    (group,) = doc["failures"]
    assert group["stop"]["node"] == "lab-node-b" and group["stop"]["device"] == "eth0"
    assert group["stop"]["drop_reason"] == "IP_RPFILTER"
    assert group["common"]["endpoint"] == f"{victim.ip}:80"
    # Each failed connection's SYN and every retransmission of it.
    assert rp_dropped == group["count"] + group["syn_retransmits"], rp_dropped
    controller.clear_faults("rp-filter")
    traffic, _, doc = _capture_and_diagnose(tmp_path / "cleared", capsys)
    assert traffic.ok == REQUESTS and doc["verdict"] == "healthy"


@pytest.fixture
def vxlan_lab(lab):
    state = controller.up(encap="vxlan").state
    yield state
    controller.clear_faults()
    controller.up()


def _rx_dropped(netns: str, device: str) -> int:
    (link,) = json.loads(sh(netns, "ip", "-s", "-j", "link", "show", "dev", device))
    return int(link["stats64"]["rx"]["dropped"])


def _drops_on(capture, node: str, device: str) -> int:
    from tracer.analysis.events import load_events

    ev = load_events([str(capture)]).events
    return int(((ev["probe"] == "drop") & (ev["node"] == node) & (ev["ifname"] == device)).sum())


def test_diagnose_names_an_mtu_blackhole(vxlan_lab, tmp_path, capsys):
    """Node B's NIC set to jumbo frames on a LAN that carries 1500, with VXLAN:
    small requests to its pod work, the 64 KiB page from it stalls. The
    diagnosis blames node B's pod, says the loss is by size, and every frame
    the capture saw dropped on node B's uplink is one the LAN's switch port
    (the ToR bridge's port for node B) counted as dropped."""
    from tracer.lab.encap import mtu
    from tracer.lab.nginx import LARGE_PATH

    state = vxlan_lab
    victim = state.pods_on(state.nodes[-1].name)[0]
    controller.add_fault("mtu-blackhole")
    traffic, dnat, doc = _capture_and_diagnose(tmp_path / "small", capsys)
    assert traffic.ok == REQUESTS and doc["verdict"] == "healthy", traffic.errors

    port = state.node("b").lan_port
    port_before = _rx_dropped(state.tor.netns, port)
    at_stop: list[int] = []

    @contextlib.contextmanager
    def count_at_stop() -> Iterator[None]:
        yield
        at_stop.append(_rx_dropped(state.tor.netns, port) - port_before)

    traffic, dnat, doc = _capture_and_diagnose(tmp_path / "large", capsys, path=LARGE_PATH,
                                               during=count_at_stop)
    port_dropped = _rx_dropped(state.tor.netns, port) - port_before
    assert traffic.failed == dnat[victim.ip] > 0, (traffic.errors, dnat)
    assert doc["connections"]["stalled"] == traffic.failed
    (group,) = doc["failures"]
    assert group["outcome"] == "stalled" and group["common"]["endpoint"] == f"{victim.ip}:80"
    assert group["stop"]["node"] == "lab-node-b" and group["stop"]["device"] == "eth0"
    limit = group["size_limit"]
    # Lost: packets larger than the tunnel carries on a 1500 LAN (1450).
    assert limit and limit["smallest_lost"] > mtu("vxlan") >= limit["largest_delivered"], limit
    # The pod goes on retransmitting after the captures stop (its clients
    # gave up, their FINs cannot free data never delivered), so the port's
    # counter is read just before node B's capture stops and again after:
    # the drops the capture saw lie between the two.
    captured = _drops_on(tmp_path / "large" / "b", "lab-node-b", "eth0")
    assert 0 < at_stop[0] <= captured <= port_dropped, (at_stop, captured, port_dropped)

    controller.clear_faults("mtu-blackhole")
    traffic, _, doc = _capture_and_diagnose(tmp_path / "cleared", capsys, path=LARGE_PATH)
    assert traffic.ok == REQUESTS and doc["verdict"] == "healthy"
