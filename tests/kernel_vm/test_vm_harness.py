"""Proof that the VM harness works: Debian's 6.1 kernel boots under qemu (TCG)
with the host's root filesystem, and BCC kprobes and fentry attach there.

Two boots in all: one runs the whole in-VM pytest session
(tests/kernel_vm/guest/in_vm_checks.py) and every check below reads its
report; one checks that a failing command's status and output come back.
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

GUEST_CHECKS = "tests/kernel_vm/guest/in_vm_checks.py"


@pytest.fixture(scope="module")
def kernel() -> KernelImage:
    assert os.geteuid() == 0, "kernel_vm tests need root (qemu, BPF in the guest)"
    return ensure_kernel()


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    # Not tmp_path: pytest prunes old /tmp/pytest-of-root/pytest-N dirs when
    # other sessions start, which could pull an rwdir from under a running VM.
    with tempfile.TemporaryDirectory(prefix="tracer-vm-shared-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def guest_session(kernel: KernelImage, shared_dir: Path) -> tuple[VmResult, dict, ET.Element]:
    """One boot: the in-VM pytest session; its report and JUnit XML come back
    through a shared directory."""
    shared = shared_dir / "session"
    shared.mkdir()
    started = time.monotonic()
    result = run_in_vm(
        [
            ".venv/bin/python",
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-v",
            "--durations=0",
            f"--junitxml={shared / 'junit.xml'}",
            GUEST_CHECKS,
        ],
        rwdirs=[shared],
        env={
            "TRACER_VM_REPORT_DIR": str(shared),
            "TRACER_VM_EXPECT_RELEASE": kernel.release,
            "TRACER_VM_KERNEL_CONFIG": str(kernel.config),
        },
        kernel=kernel,
        timeout=600,
    )
    report_file, junit_file = shared / "report.json", shared / "junit.xml"
    assert junit_file.is_file(), f"no JUnit XML came back; guest output:\n{result.stdout}\n{result.stderr}"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["host_wall_seconds"] = round(time.monotonic() - started, 2)
    print(
        f"\nVM session: boot {result.boot_seconds}s, guest setup {result.setup_seconds}s, "
        f"wall {result.wall_seconds}s, exit {result.returncode}"
    )
    probes = report.get("probes", {})
    print(
        f"BCC in the VM: compile {probes.get('compile_seconds')}s, kprobe attach "
        f"{probes.get('kprobe_attach_seconds')}s, fentry attach "
        f"{probes.get('fentry_attach_seconds')}s"
    )
    print(json.dumps(report, indent=1, sort_keys=True))
    print(result.stdout[-3000:])  # the guest's own summary and --durations
    return result, report, ET.parse(junit_file).getroot()


def _guest_case(junit: ET.Element, name: str) -> None:
    cases = {c.get("name"): c for c in junit.iter("testcase")}
    assert name in cases, f"{name} did not run in the VM (ran: {sorted(cases)})"
    problems = [e for e in cases[name] if e.tag in ("failure", "error", "skipped")]
    assert not problems, f"{name} in the VM: " + "\n".join(
        (p.get("message") or "") + "\n" + (p.text or "") for p in problems
    )


def test_ensure_kernel_is_cached_and_matches_the_headers(kernel: KernelImage):
    again = ensure_kernel()
    assert not again.downloaded and again.download_bytes == 0
    assert again.root == kernel.root
    assert kernel.vmlinuz.is_file()
    assert (kernel.modules_dir / "modules.dep").is_file()
    assert (kernel.modules_dir / "build").resolve() == kernel.headers_build
    assert (kernel.modules_dir / "source").resolve() == kernel.headers_source
    assert kernel.config_value("CONFIG_KPROBES") == "y"


def test_a_whole_pytest_session_runs_in_one_boot(guest_session):
    result, _, junit = guest_session
    suite = junit if junit.tag == "testsuite" else junit.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 7, counts
    assert result.returncode == (0 if counts["failures"] + counts["errors"] == 0 else 1)
    assert "passed" in result.stdout  # the guest's own pytest summary came back


def test_vm_runs_the_distro_6_1_kernel(guest_session, kernel: KernelImage):
    result, report, junit = guest_session
    _guest_case(junit, "test_runs_the_distro_kernel")
    assert result.kernel_release == kernel.release == report["kernel_release"]
    assert kernel.release.startswith("6.1.")


def test_vm_kernel_has_kprobes_and_nf_nat_inet_fn(guest_session):
    _, report, junit = guest_session
    _guest_case(junit, "test_kernel_has_kprobes_fentry_and_the_nat_functions")
    assert report["config"]["CONFIG_KPROBES"] == "y"
    assert report["kallsyms"]["nf_nat_inet_fn"] == ["nf_nat_inet_fn"]


def test_vm_has_tracefs_debugfs_bpffs_and_lab_modules(guest_session):
    result, _, junit = guest_session
    _guest_case(junit, "test_tracefs_debugfs_and_bpffs_are_mounted")
    assert {"nf_nat", "veth", "xt_statistic", "nft_compat"} <= set(result.modules_loaded)


def test_bcc_uses_the_headers_through_lib_modules_links(guest_session, kernel: KernelImage):
    _, report, junit = guest_session
    _guest_case(junit, "test_bcc_finds_headers_through_the_modules_links")
    assert report["bcc_headers"]["build"] == str(kernel.headers_build)
    assert report["bcc_headers"]["source"] == str(kernel.headers_source)


def test_bcc_kprobe_and_kretprobe_see_nat_in_the_vm(guest_session):
    _, _, junit = guest_session
    _guest_case(junit, "test_kprobe_and_kretprobe_on_nf_nat_inet_fn_see_nat_traffic")


def test_bcc_fentry_and_fexit_see_nat_in_the_vm(guest_session):
    _, _, junit = guest_session
    _guest_case(junit, "test_fentry_and_fexit_on_nf_nat_inet_fn_see_nat_traffic")
    _guest_case(junit, "test_bcc_kfunc_probe_on_a_module_function_is_refused_by_bcc_026")


def test_lab_tools_work_in_the_vm(guest_session):
    _, _, junit = guest_session
    _guest_case(junit, "test_lab_tools_run_inside")


def test_failing_command_status_and_output_come_back(kernel: KernelImage, shared_dir: Path):
    """Second boot: a nonzero exit, both streams, and a file in an rwdir."""
    tmp_path = shared_dir / "bare"
    tmp_path.mkdir()
    result = run_in_vm(
        f"echo to-stdout; echo to-stderr >&2; uname -r > {tmp_path}/release; exit 7",
        rwdirs=[tmp_path],
        modules=(),
        kernel=kernel,
        timeout=300,
    )
    print(f"\nbare boot: boot {result.boot_seconds}s, wall {result.wall_seconds}s")
    assert result.returncode == 7
    assert result.stdout == "to-stdout\n"
    assert result.stderr == "to-stderr\n"
    assert (tmp_path / "release").read_text().strip() == kernel.release
