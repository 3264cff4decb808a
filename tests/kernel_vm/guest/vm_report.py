"""Guest side of an in-VM pytest session: where facts go
($TRACER_VM_REPORT_DIR/report.json, read back by tests/kernel_vm/
guest_session.py) and the check that the file runs inside run_in_vm's guest.
Import `in_the_vm` into a checks file to make its session use it."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

REPORT_DIR = Path(os.environ.get("TRACER_VM_REPORT_DIR", "/nonexistent"))
_report: dict[str, object] = {}


def record(**facts: object) -> None:
    _report.update(facts)
    (REPORT_DIR / "report.json").write_text(json.dumps(_report, indent=2, sort_keys=True, default=str))


@pytest.fixture(scope="session", autouse=True)
def in_the_vm():
    # Fail, never skip: a checks file only makes sense inside run_in_vm's guest.
    assert os.environ.get("TRACER_IN_VM") == "1", "run this only through tracer.testing.run_in_vm"
    assert REPORT_DIR.is_dir(), f"TRACER_VM_REPORT_DIR {REPORT_DIR} is not a shared directory"
    record(kernel_release=platform.release())
    yield
