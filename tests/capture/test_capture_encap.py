"""Capture across Calico's VXLAN tunnel, on the real lab (`--encap vxlan`):
node A and node B captured side by side while the client talks to the
external IP; the uplinks' events carry the inner packet (and encap=vxlan,
the nodes as outer addresses), node B's path continues on vxlan.calico and
into the pod, and `tracer timeline` joins the two nodes across the tunnel.
Witnesses: KUBE-SEP counters, nginx logs, tshark on node A's wire
(tests/capture/encap_capture.py). IPIP, which this kernel lacks, runs the
same checks inside Debian's 6.1 (tests/kernel_vm/test_vm_encap.py).

The lab goes back to its default mode (no encapsulation) afterwards."""

from __future__ import annotations

import pytest

from tests.capture import encap_capture
from tracer.lab import controller

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture
def vxlan_lab(lab):
    state = controller.up(encap="vxlan").state
    yield state
    controller.up()


def test_capture_follows_packets_through_the_vxlan_tunnel(vxlan_lab, tmp_path):
    run = encap_capture.run(vxlan_lab, "vxlan", tmp_path, requests=60)
    encap_capture.check(run)
