"""Host side of an in-VM pytest session: boot Debian's 6.1 kernel once, run a
guest checks file (tests/kernel_vm/guest/*_checks.py) as a pytest session
inside, and read back its JUnit XML and the facts it recorded in report.json.
Each host test then asserts one guest test passed (`passed`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tracer.testing import VmResult, ensure_kernel, run_in_vm


@dataclass
class GuestSession:
    result: VmResult
    report: dict
    cases: dict[str, ET.Element]


@contextlib.contextmanager
def shared_dir(prefix: str) -> Iterator[Path]:
    # Not tmp_path: pytest prunes old /tmp/pytest-of-root/pytest-N dirs when
    # other sessions start, which could pull an rwdir from under a running VM.
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def run_guest_session(guest_file: str, directory: Path, *, memory: str, timeout: float) -> GuestSession:
    assert os.geteuid() == 0, "kernel_vm tests need root (qemu, BPF in the guest)"
    kernel = ensure_kernel()
    started = time.monotonic()
    result = run_in_vm(
        [".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "--durations=0",
         f"--junitxml={directory / 'junit.xml'}", guest_file],
        rwdirs=[directory],
        env={"TRACER_VM_REPORT_DIR": str(directory)},
        kernel=kernel,
        memory=memory,
        timeout=timeout,
    )
    junit_file, report_file = directory / "junit.xml", directory / "report.json"
    assert junit_file.is_file(), (
        f"no JUnit XML came back (exit {result.returncode}); guest output:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    report["vm"] = {"boot_s": result.boot_seconds, "guest_setup_s": result.setup_seconds,
                    "wall_s": result.wall_seconds, "host_wall_s": round(time.monotonic() - started, 1),
                    "kernel": result.kernel_release, "modules": list(result.modules_loaded)}
    report_file.write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    print(f"\nVM session {guest_file}: boot {result.boot_seconds}s, guest setup "
          f"{result.setup_seconds}s, wall {result.wall_seconds}s, exit {result.returncode}")
    print(json.dumps({k: v for k, v in report.items() if k != "doctor"}, indent=1, sort_keys=True,
                     default=str))
    print(result.stdout[-4000:])
    cases = {c.get("name", ""): c for c in ET.parse(junit_file).getroot().iter("testcase")}
    return GuestSession(result, report, cases)


def passed(cases: dict[str, ET.Element], name: str) -> None:
    """The guest test `name` ran and neither failed, errored nor skipped."""
    assert name in cases, f"{name} did not run in the VM (ran: {sorted(cases)})"
    problems = [e for e in cases[name] if e.tag in ("failure", "error", "skipped")]
    assert not problems, f"{name} in the VM: " + "\n".join(
        (p.get("message") or "") + "\n" + (p.text or "") for p in problems)
