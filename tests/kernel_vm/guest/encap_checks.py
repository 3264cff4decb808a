"""Calico's IPIP mode in the lab and `tracer capture` across it, INSIDE the
Debian 6.1 VM: a kernel built without CONFIG_NET_IPIP has no IPIP tunnels;
the distro kernel has them (the ipip module, loaded by run_in_vm).

Started by tests/kernel_vm/test_vm_encap.py through run_in_vm (one boot, one
pytest session); the name does not match test_*.py, so the host never
collects it. The lab comes up inside the VM (its own kernel and namespaces),
is switched to `--encap ipip`, checked as Felix would program it, and then
captured on both nodes with the same checks the host runs for VXLAN
(tests/capture/encap_capture.py): KUBE-SEP counters, nginx logs, tshark on
node A's wire, node B's path through tunl0, `tracer timeline` across the
tunnel. Facts and timings go to $TRACER_VM_REPORT_DIR/report.json.
"""

from __future__ import annotations

import time

import pytest

from tests.capture import encap_capture
from tests.kernel_vm.guest.vm_report import in_the_vm, record  # noqa: F401 (session fixture)
from tracer.lab import bird, controller, encap, netdev

pytestmark = [pytest.mark.root, pytest.mark.lab]

@pytest.fixture(scope="module")
def ipip_lab(lab):
    t0 = time.monotonic()
    result = controller.up(encap="ipip")
    record(ipip_up_seconds=round(time.monotonic() - t0, 1), ipip_up_changes=list(result.changes))
    return result.state


def test_ipip_lab_is_programmed_as_calico_does(ipip_lab):
    s = ipip_lab
    assert s.encap == "ipip" and encap.problem(s) is None
    vteps = {v.node: v for v in encap.vteps(s)}
    for n, peer in ((s.nodes[0], s.nodes[1]), (s.nodes[1], s.nodes[0])):
        me, other = vteps[n.name], vteps[peer.name]
        link = netdev.link_details(n.netns, "tunl0")
        assert link["linkinfo"]["info_kind"] == "ipip" and link["mtu"] == 1480
        assert "UP" in link["flags"]
        assert netdev.addresses(n.netns, "tunl0") == [f"{me.tunnel_ip}/32"]
        routes = {(r["dst"], r.get("gateway", ""), r.get("dev", ""), tuple(r.get("flags", [])))
                  for r in netdev.routes(n.netns, "proto", "80")}
        assert routes == {(other.block, peer.ip, "tunl0", ("onlink",)), (me.block, "", "", ())}
        assert bird.learned_routes(n.netns) == []
        assert all(p_mtu == 1480 for p_mtu in (netdev.links(n.netns)[p.veth]["mtu"]
                                               for p in s.pods_on(n.name)))
    record(ipip_routes={n.name: netdev.routes(n.netns, "proto", "80") for n in s.nodes})
    assert controller.up(encap="ipip").action == "unchanged"


def test_capture_follows_packets_through_the_ipip_tunnel(ipip_lab, tmp_path):
    t0 = time.monotonic()
    run = encap_capture.run(ipip_lab, "ipip", tmp_path, requests=40, ready_timeout=600)
    record(capture_seconds=round(time.monotonic() - t0, 1), served_by_pod=run.traffic.served_by_pod,
           sep=dict(run.sep))
    t1 = time.monotonic()
    encap_capture.check(run)
    record(check_seconds=round(time.monotonic() - t1, 1))


def test_back_to_no_encapsulation(ipip_lab):
    back = controller.up()
    assert back.state.encap == "none" and encap.problem(back.state) is None
    for n in back.state.nodes:
        assert "UP" not in netdev.links(n.netns)["tunl0"]["flags"]
        assert netdev.addresses(n.netns, "tunl0") == []
