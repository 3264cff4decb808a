"""CaptureProcess against stand-in children whose timing is known: the
readiness protocol, not the capture (tests/test_demo.py runs real ones)."""

from __future__ import annotations

import stat
import sys
import time

import pytest

from tests.output_attack import Attack, attack_fixture  # noqa: F401 (fixture)
from tracer.capture.child_process import CaptureProcess, CaptureProcessError

# A child that says what went wrong, closes stderr, and exits only a second
# later: the window in which stderr's EOF is seen before the exit status.
SLOW_EXIT = (
    "import os, sys, time\n"
    "print('tracer: error: no service no-such-service', file=sys.stderr, flush=True)\n"
    "os.close(2)\n"
    "time.sleep(1.0)\n"
    "sys.exit(2)\n"
)
READY_THEN_WAIT = (
    "import sys, time\n"
    "print('tracer: capturing default/x on n in events mode', file=sys.stderr, flush=True)\n"
    "time.sleep(30)\n"
)
SILENT = "import time\ntime.sleep(30)\n"


def _child(monkeypatch, tmp_path, script: str) -> CaptureProcess:
    # The stand-in ignores the capture's arguments (they follow the script).
    monkeypatch.setattr(CaptureProcess, "command", (sys.executable, "-c", script))
    return CaptureProcess("node-x", ["--svc", "x"], tmp_path / "cap", tmp_path / "cap.log")


def test_a_child_that_closed_stderr_reports_its_own_error(monkeypatch, tmp_path):
    child = _child(monkeypatch, tmp_path, SLOW_EXIT)
    with pytest.raises(CaptureProcessError, match=r"^capture on node-x failed: no service no-such-service$"):
        child.wait_ready(time.monotonic() + 20)
    assert child.wait() == 2


def test_a_ready_child_is_ready(monkeypatch, tmp_path):
    child = _child(monkeypatch, tmp_path, READY_THEN_WAIT)
    try:
        child.wait_ready(time.monotonic() + 20)
        assert child.ready_line.startswith("tracer: capturing default/x")
    finally:
        child.signal()
        child.wait(10)


def test_a_silent_child_is_not_ready_in_time(monkeypatch, tmp_path):
    child = _child(monkeypatch, tmp_path, SILENT)
    try:
        with pytest.raises(CaptureProcessError, match=r"^capture on node-x not ready in time$"):
            child.wait_ready(time.monotonic() + 0.5)
    finally:
        child.signal()
        assert child.wait(10) != 0


@pytest.mark.root
def test_the_log_is_never_written_through_a_symlink(monkeypatch, tmp_path, attack: Attack):
    from tracer.errors import CaptureFileError

    monkeypatch.setattr(CaptureProcess, "command", (sys.executable, "-c", SILENT))
    (tmp_path / "cap.log").symlink_to(attack.target)
    with pytest.raises(CaptureFileError, match=r"cap\.log: is a symbolic link: refusing"):
        CaptureProcess("node-x", [], tmp_path / "cap", tmp_path / "cap.log")
    with pytest.raises(CaptureFileError, match="owned by nobody"):
        CaptureProcess("node-x", [], attack.evil / "cap", attack.link("cap.log"))
    assert attack.target_unchanged()


def test_the_log_is_private(monkeypatch, tmp_path):
    child = _child(monkeypatch, tmp_path, SILENT)
    child.stop(timeout=10)
    assert stat.S_IMODE((tmp_path / "cap.log").stat().st_mode) == 0o600
