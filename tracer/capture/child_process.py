"""`tracer capture` as a child process: started, waited on until its probes
are attached, stopped with SIGINT like a user's Ctrl-C.

A capture enters a node's network namespace for good (setns on the whole
process), so capturing two nodes at once takes two processes. The demo and
the tests drive them through this class.

Children must never outlive their parent: each asks the kernel for SIGINT
when the parent dies (PR_SET_PDEATHSIG) and is bounded by --duration, so a
parent killed with SIGKILL leaves nothing attached for long."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tracer.capture.live import READY_PREFIX
from tracer.errors import TracerError
from tracer.safe_output import open_replacing

_PR_SET_PDEATHSIG = 1
# A child whose stderr has ended is exiting; how long to wait for its status.
EXIT_AFTER_EOF_S = 5.0
# Loaded here, not in the child: between fork and exec only async-signal-safe
# work is wise (another thread may hold the loader's lock at fork time).
_libc = ctypes.CDLL(None, use_errno=True)


class CaptureProcessError(TracerError):
    """A capture child failed to start or to finish cleanly."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


class CaptureProcess:
    """One `tracer capture --quiet -o DIR` child. Its stdout (the capture's
    summary) goes to `log`; stderr is read line by line to see it get ready,
    and appended to the log at the end."""

    command: tuple[str, ...] = (sys.executable, "-m", "tracer", "capture")

    def __init__(self, name: str, args: Sequence[str], output: Path, log: Path,
                 *, max_duration_s: float = 300.0):
        self.name = name
        self.output = output
        self.log = log
        self.stderr_lines: list[str] = []
        self.returncode: int | None = None
        self._ready = threading.Event()
        argv = [*self.command, *args, "--quiet",
                "-o", str(output), "--force", "--duration", f"{max_duration_s:g}"]
        # 0600, never through a symlink, in a directory of ours (tracer.safe_output).
        self._log_file = open_replacing(log)
        try:
            self.proc = subprocess.Popen(
                argv, stdout=self._log_file, stderr=subprocess.PIPE, text=True,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                # Its own session: a terminal's Ctrl-C reaches the parent
                # only, which then stops every capture in order (and waits
                # for each to write its files).
                start_new_session=True,
            )
        except OSError as exc:
            self._log_file.close()
            raise CaptureProcessError(f"cannot start the capture on {name}: {exc}") from exc
        self._pump = threading.Thread(target=self._read_stderr, daemon=True,
                                      name=f"capture-{name}-stderr")
        self._pump.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, ""):
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            if line.startswith(READY_PREFIX):
                self._ready.set()
        self._ready.set()  # EOF: it exited; wait_ready() tells the difference

    @property
    def ready_line(self) -> str:
        return next((s for s in self.stderr_lines if s.startswith(READY_PREFIX)), "")

    def last_error(self) -> str:
        """The child's own one-line error, or its last stderr line."""
        errors = [s for s in self.stderr_lines if s.startswith("tracer: ")
                  and not s.startswith(READY_PREFIX)]
        text = (errors or self.stderr_lines or [f"exit status {self.proc.returncode}"])[-1]
        return text.removeprefix("tracer: ").removeprefix("error: ")

    def wait_ready(self, deadline: float) -> None:
        """Until the child says its probes are attached (raises if it exits
        first or the monotonic deadline passes)."""
        if not self._ready.wait(max(0.0, deadline - time.monotonic())):
            raise CaptureProcessError(f"capture on {self.name} not ready in time")
        if self.ready_line and self.proc.poll() is None:
            return
        # Its stderr ended without the ready line (or it exited right after
        # it): the child has exited or is exiting, and may not be reaped yet.
        # Wait for it briefly, so that its own error is what gets reported.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_AFTER_EOF_S)
        self._pump.join(2)
        raise CaptureProcessError(f"capture on {self.name} failed: {self.last_error()}")

    def signal(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit (SIGKILL after timeout); returns the exit status."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(5)
        # The log keeps what the capture printed: its summary, then stderr.
        with contextlib.suppress(OSError):
            self._log_file.write("".join(f"{line}\n" for line in self.stderr_lines))
        self._log_file.close()
        self.returncode = self.proc.returncode
        return self.returncode

    def stop(self, timeout: float = 60.0) -> int:
        self.signal(signal.SIGINT)
        return self.wait(timeout)
