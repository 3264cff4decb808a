"""The kprobe and fentry capture backends, proven on Debian's 6.1 distro
kernel: one VM boot runs tests/kernel_vm/guest/capture_checks.py as a pytest
session inside (the lab comes up in the VM; `tracer doctor`; captures with the
automatic choice, forced kprobe and forced fentry, each checked against the
KUBE-SEP counters, nginx logs and conntrack; rx compared with the raw
tracepoint; nothing left attached). Each test here reads one guest result.

Fails, never skips, when the kernel cannot be had or the VM cannot boot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernel_vm.guest_session import passed, run_guest_session, shared_dir
from tracer.testing import VmResult

pytestmark = [pytest.mark.kernel_vm, pytest.mark.root]

GUEST = "tests/kernel_vm/guest/capture_checks.py"
# Measured: the whole boot takes ~6-8 min under TCG on 2 cores (five BCC
# compiles of the capture program, four of them side by side).
VM_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def guest() -> Iterator[tuple[VmResult, dict, dict]]:
    with shared_dir("tracer-vm-capture-") as directory:
        # Four captures compile side by side: each BCC/clang process wants a few
        # hundred MB.
        session = run_guest_session(GUEST, directory, memory="4G", timeout=VM_TIMEOUT_S)
        yield session.result, session.report, session.cases


def test_vm_runs_debian_6_1(guest):
    result, report, _ = guest
    assert result.kernel_release.startswith("6.1.") and report["kernel_release"] == result.kernel_release


def test_doctor_in_the_vm_reports_kprobes_fentry_and_no_netfilter_links(guest):
    _, report, cases = guest
    passed(cases, "test_doctor_reports_kprobes_and_fentry_and_no_netfilter_links")
    assert report["doctor"]["chosen"] == {"rx": "tp_btf", "nat": "fentry", "tx": "tp_btf", "drop": "tp_btf"}


def test_captures_in_the_vm_use_the_backends_asked_for(guest):
    _, _, cases = guest
    passed(cases, "test_every_capture_ran_cleanly_with_its_backends")


@pytest.mark.parametrize("name", ["auto", "kprobe", "fentry"])
def test_nat_events_in_the_vm_agree_with_every_witness(guest, name):
    _, _, cases = guest
    passed(cases, f"test_dnat_and_masquerade_agree_with_every_witness[{name}]")


@pytest.mark.parametrize("name", ["auto", "kprobe", "fentry"])
def test_rx_by_function_in_the_vm_equals_the_tracepoint(guest, name):
    _, _, cases = guest
    passed(cases, f"test_rx_by_function_sees_exactly_what_the_tracepoint_sees[{name}]")


def test_kprobe_and_fentry_nat_events_are_the_same(guest):
    _, _, cases = guest
    passed(cases, "test_kprobe_and_fentry_record_the_same_nat_rewrites")


def test_nothing_stays_attached_in_the_vm(guest):
    _, _, cases = guest
    passed(cases, "test_nothing_of_the_tracer_stays_in_the_kernel")
    passed(cases, "test_a_sigkilled_fentry_capture_leaves_nothing")


def test_the_vm_session_fits_its_budget(guest):
    result, _, cases = guest
    assert result.returncode == 0, "the guest pytest session failed (see the other tests)"
    assert len(cases) == 11
    # CI's budget for all VM tests is ~20 min; this boot must leave room for
    # the harness tests (tests/kernel_vm/test_vm_harness.py, ~3 min).
    assert result.wall_seconds < 15 * 60
