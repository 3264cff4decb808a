"""Calico's IPIP mode, which this project's kernel lacks, proven on Debian's
6.1 distro kernel: one VM boot runs tests/kernel_vm/guest/encap_checks.py as
a pytest session inside (the lab up in the VM, switched to `--encap ipip`,
checked as Felix programs it; node A and node B captured across the tunnel
with the witnesses of tests/capture/encap_capture.py; back to no
encapsulation). Each test here reads one guest result.

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

from tracer.testing import VmResult, ensure_kernel, run_in_vm

pytestmark = [pytest.mark.kernel_vm, pytest.mark.root]

GUEST = "tests/kernel_vm/guest/encap_checks.py"
# One lab up, two BCC compiles side by side and the analysis under TCG.
VM_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    # Not tmp_path: pytest prunes old /tmp/pytest-of-root/pytest-N dirs when
    # other sessions start, which could pull an rwdir from under a running VM.
    with tempfile.TemporaryDirectory(prefix="tracer-vm-encap-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def guest(shared_dir: Path) -> tuple[VmResult, dict, dict[str, ET.Element]]:
    assert os.geteuid() == 0, "kernel_vm tests need root (qemu, BPF in the guest)"
    kernel = ensure_kernel()
    started = time.monotonic()
    result = run_in_vm(
        [".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "--durations=0",
         f"--junitxml={shared_dir / 'junit.xml'}", GUEST],
        rwdirs=[shared_dir],
        env={"TRACER_VM_REPORT_DIR": str(shared_dir)},
        kernel=kernel,
        memory="3G",  # two BCC/clang compiles side by side
        timeout=VM_TIMEOUT_S,
    )
    junit_file, report_file = shared_dir / "junit.xml", shared_dir / "report.json"
    assert junit_file.is_file(), (
        f"no JUnit XML came back (exit {result.returncode}); guest output:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["vm"] = {"boot_s": result.boot_seconds, "guest_setup_s": result.setup_seconds,
                    "wall_s": result.wall_seconds, "host_wall_s": round(time.monotonic() - started, 1),
                    "kernel": result.kernel_release, "modules": list(result.modules_loaded)}
    print(json.dumps(report, indent=1, sort_keys=True, default=str))
    print(result.stdout[-4000:])
    cases = {c.get("name", ""): c for c in ET.parse(junit_file).getroot().iter("testcase")}
    return result, report, cases


def _passed(cases: dict[str, ET.Element], name: str) -> None:
    assert name in cases, f"{name} did not run in the VM (ran: {sorted(cases)})"
    problems = [e for e in cases[name] if e.tag in ("failure", "error", "skipped")]
    assert not problems, f"{name} in the VM: " + "\n".join(
        (p.get("message") or "") + "\n" + (p.text or "") for p in problems)


def test_vm_kernel_has_ipip(guest):
    result, report, _ = guest
    assert result.kernel_release.startswith("6.1.") and report["kernel_release"] == result.kernel_release
    assert "ipip" in result.modules_loaded


def test_ipip_lab_is_programmed_as_calico_does(guest):
    _passed(guest[2], "test_ipip_lab_is_programmed_as_calico_does")


def test_capture_follows_packets_through_the_ipip_tunnel(guest):
    _, report, cases = guest
    _passed(cases, "test_capture_follows_packets_through_the_ipip_tunnel")
    assert sum(report["sep"].values()) >= 40


def test_ipip_switched_off_again(guest):
    _passed(guest[2], "test_back_to_no_encapsulation")
