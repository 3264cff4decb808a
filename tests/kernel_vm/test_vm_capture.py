"""The kprobe and fentry capture backends, proven on Debian's 6.1 distro
kernel: one VM boot runs tests/kernel_vm/guest/capture_checks.py as a pytest
session inside (the lab comes up in the VM; `tracer doctor`; captures with the
automatic choice, forced kprobe and forced fentry, each checked against the
KUBE-SEP counters, nginx logs and conntrack; rx compared with the raw
tracepoint; nothing left attached). Each test here reads one guest result.

Fails, never skips, when the kernel cannot be had or the VM cannot boot.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracer.testing import KernelImage, VmResult, ensure_kernel, run_in_vm

pytestmark = [pytest.mark.kernel_vm, pytest.mark.root]

GUEST = "tests/kernel_vm/guest/capture_checks.py"
# Measured: the whole boot takes ~6-8 min under TCG on 2 cores (five BCC
# compiles of the capture program, four of them side by side).
VM_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    # Not tmp_path: pytest prunes old /tmp/pytest-of-root/pytest-N dirs when
    # other sessions start, which could pull an rwdir from under a running VM.
    with tempfile.TemporaryDirectory(prefix="tracer-vm-capture-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def guest(shared_dir: Path) -> tuple[VmResult, dict, dict[str, ET.Element]]:
    assert os.geteuid() == 0, "kernel_vm tests need root (qemu, BPF in the guest)"
    kernel: KernelImage = ensure_kernel()
    started = time.monotonic()
    result = run_in_vm(
        [".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "--durations=0",
         f"--junitxml={shared_dir / 'junit.xml'}", GUEST],
        rwdirs=[shared_dir],
        env={"TRACER_VM_REPORT_DIR": str(shared_dir)},
        kernel=kernel,
        # Four captures compile side by side: each BCC/clang process wants
        # a few hundred MB.
        memory="4G",
        timeout=VM_TIMEOUT_S,
    )
    junit_file, report_file = shared_dir / "junit.xml", shared_dir / "report.json"
    assert junit_file.is_file(), (
        f"no JUnit XML came back (exit {result.returncode}); guest output:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["vm"] = {"boot_s": result.boot_seconds, "guest_setup_s": result.setup_seconds,
                    "wall_s": result.wall_seconds, "host_wall_s": round(time.monotonic() - started, 1),
                    "kernel": result.kernel_release}
    (shared_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    print(f"\nVM capture session: boot {result.boot_seconds}s, guest setup {result.setup_seconds}s, "
          f"wall {result.wall_seconds}s, exit {result.returncode}")
    print(json.dumps({k: v for k, v in report.items() if k != "doctor"}, indent=1, sort_keys=True))
    print(result.stdout[-4000:])
    cases = {c.get("name", ""): c for c in ET.parse(junit_file).getroot().iter("testcase")}
    return result, report, cases


def _passed(cases: dict[str, ET.Element], name: str) -> None:
    assert name in cases, f"{name} did not run in the VM (ran: {sorted(cases)})"
    problems = [e for e in cases[name] if e.tag in ("failure", "error", "skipped")]
    assert not problems, f"{name} in the VM: " + "\n".join(
        (p.get("message") or "") + "\n" + (p.text or "") for p in problems)


def test_vm_runs_debian_6_1(guest):
    result, report, _ = guest
    assert result.kernel_release.startswith("6.1.") and report["kernel_release"] == result.kernel_release


def test_doctor_in_the_vm_reports_kprobes_fentry_and_no_netfilter_links(guest):
    _, report, cases = guest
    _passed(cases, "test_doctor_reports_kprobes_and_fentry_and_no_netfilter_links")
    assert report["doctor"]["chosen"] == {"rx": "fentry", "nat": "fentry", "tx": "raw_tracepoint",
                                          "drop": "raw_tracepoint"}


def test_captures_in_the_vm_use_the_backends_asked_for(guest):
    _, _, cases = guest
    _passed(cases, "test_every_capture_ran_cleanly_with_its_backends")


@pytest.mark.parametrize("name", ["auto", "kprobe", "fentry"])
def test_nat_events_in_the_vm_agree_with_every_witness(guest, name):
    _, _, cases = guest
    _passed(cases, f"test_dnat_and_masquerade_agree_with_every_witness[{name}]")


@pytest.mark.parametrize("name", ["auto", "kprobe", "fentry"])
def test_rx_by_function_in_the_vm_equals_the_tracepoint(guest, name):
    _, _, cases = guest
    _passed(cases, f"test_rx_by_function_sees_exactly_what_the_tracepoint_sees[{name}]")


def test_kprobe_and_fentry_nat_events_are_the_same(guest):
    _, _, cases = guest
    _passed(cases, "test_kprobe_and_fentry_record_the_same_nat_rewrites")


def test_nothing_stays_attached_in_the_vm(guest):
    _, _, cases = guest
    _passed(cases, "test_nothing_of_the_tracer_stays_in_the_kernel")
    _passed(cases, "test_a_sigkilled_fentry_capture_leaves_nothing")


def test_the_vm_session_fits_its_budget(guest):
    result, _, cases = guest
    assert result.returncode == 0, "the guest pytest session failed (see the other tests)"
    assert len(cases) == 11
    # CI's budget for all VM tests is ~20 min; this boot must leave room for
    # the harness tests (tests/kernel_vm/test_vm_harness.py, ~3 min).
    assert result.wall_seconds < 15 * 60
