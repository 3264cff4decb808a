"""Calico's IPIP mode, which needs CONFIG_NET_IPIP, proven on Debian's 6.1
distro kernel (its ipip module): one VM boot runs
tests/kernel_vm/guest/encap_checks.py as a pytest session inside (the lab up
in the VM, switched to `--encap ipip`, checked as Felix programs it; node A
and node B captured across the tunnel with the witnesses of
tests/capture/encap_capture.py; back to no encapsulation). Each test here
reads one guest result.

Fails, never skips, when the kernel cannot be had or the VM cannot boot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernel_vm.guest_session import passed, run_guest_session, shared_dir
from tracer.testing import VmResult

pytestmark = [pytest.mark.kernel_vm, pytest.mark.root]

GUEST = "tests/kernel_vm/guest/encap_checks.py"
# One lab up, two BCC compiles side by side and the analysis under TCG.
VM_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def guest() -> Iterator[tuple[VmResult, dict, dict]]:
    with shared_dir("tracer-vm-encap-") as directory:
        # Two BCC/clang compiles side by side.
        session = run_guest_session(GUEST, directory, memory="3G", timeout=VM_TIMEOUT_S)
        yield session.result, session.report, session.cases


def test_vm_kernel_has_ipip(guest):
    result, report, _ = guest
    assert result.kernel_release.startswith("6.1.") and report["kernel_release"] == result.kernel_release
    assert "ipip" in result.modules_loaded


def test_ipip_lab_is_programmed_as_calico_does(guest):
    passed(guest[2], "test_ipip_lab_is_programmed_as_calico_does")


def test_capture_follows_packets_through_the_ipip_tunnel(guest):
    _, report, cases = guest
    passed(cases, "test_capture_follows_packets_through_the_ipip_tunnel")
    assert sum(report["sep"].values()) >= 40


def test_ipip_switched_off_again(guest):
    passed(guest[2], "test_back_to_no_encapsulation")
