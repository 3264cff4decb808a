"""Run `tracer capture` the way a user does (the installed command, a new
process), pinned to given CPUs, and measure it from the outside: time from
the command to the first and to the last probe attached, RSS over time, and
the counters of its --summary-json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

READY_MARK = "Ctrl-C to stop"  # the tracer's stderr line once every probe is attached


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TracerRun:
    def __init__(self, *, service: str, netns: str, mode: str = "events", cpus: set[int] | None = None,
                 ringbuf_mb: int | None = None, output: bool = True, sample_rss: bool = False,
                 tracer: str | None = None):
        self.mode = mode
        self.cpus = cpus
        self.dir = Path(tempfile.mkdtemp(prefix="tracer-bench-"))
        self.summary_path = self.dir / "summary.json"
        self.capture_dir = self.dir / "capture" if output else None
        argv = [tracer or shutil.which("tracer") or "tracer", "capture", "--svc", service,
                "--netns", netns, "--mode", mode, "--quiet", "--summary-json", str(self.summary_path)]
        if self.capture_dir is not None:
            argv += ["-o", str(self.capture_dir)]
        if ringbuf_mb is not None:
            argv += ["--ringbuf-mb", str(ringbuf_mb)]
        self.argv = argv
        self.sample_rss = sample_rss
        self.rss: list[tuple[float, float]] = []
        self.proc: subprocess.Popen[str] | None = None
        self.t_command = 0.0
        self.t_ready = 0.0
        self.stderr_lines: list[str] = []
        self._sampler: threading.Thread | None = None
        self._stop_sampling = threading.Event()

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until every probe is attached; returns the seconds
        from the command to that moment, as the harness saw it."""
        cpus = self.cpus
        self.t_command = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        assert self.proc.stderr is not None
        deadline = self.t_command + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line.rstrip())
            if READY_MARK in line:
                self.t_ready = time.monotonic()
                break
        if not self.t_ready:
            # No summary to read: stop it, drop its directory, say why.
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.cleanup()
            raise RuntimeError("tracer did not attach: " + " | ".join(self.stderr_lines[-5:]))
        # Keep draining stderr so the tracer never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        if self.sample_rss:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self.t_ready - self.t_command

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())
            del self.stderr_lines[:-50]

    def _sample(self) -> None:
        assert self.proc is not None
        t0 = time.monotonic()
        while not self._stop_sampling.wait(0.25):
            mb = _rss_mb(self.proc.pid)
            if mb is not None:
                self.rss.append((time.monotonic() - t0, mb))

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGINT (as Ctrl-C), wait, and return the summary JSON (with
        'startup' completed by the harness's own clock)."""
        assert self.proc is not None
        self._stop_sampling.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"tracer did not stop within {timeout}s") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"tracer exited {self.proc.returncode}: "
                               + " | ".join(self.stderr_lines[-5:]))
        doc = json.loads(self.summary_path.read_text())
        doc["harness"] = self.harness_startup(doc.get("startup") or {})
        return doc

    def harness_startup(self, startup: dict[str, Any]) -> dict[str, Any]:
        """Command -> first/all probes attached. The tracer reports both
        relative to its session start (after Python and its imports); with
        the session's own CLOCK_MONOTONIC start they become times since the
        command."""
        ready = round(self.t_ready - self.t_command, 4)
        out: dict[str, Any] = {"ready_line_s": ready}
        t_session = startup.get("session_start_monotonic_s")
        if t_session is None:
            # A tracer that does not record its start (before bench/ existed):
            # the "attached" line on stderr is within a millisecond of it.
            out["first_attach_s"] = out["all_attached_s"] = ready
        else:
            out["session_start_s"] = round(t_session - self.t_command, 4)
            for key in ("first_attach_s", "all_attached_s"):
                if startup.get(key) is not None:
                    out[key] = round(t_session + startup[key] - self.t_command, 4)
        return out

    def recorded_events(self) -> int:
        """Rows in the capture file (read back from the Parquet footers)."""
        import pyarrow.parquet as pq

        assert self.capture_dir is not None
        return sum(pq.ParquetFile(p).metadata.num_rows
                   for p in sorted(self.capture_dir.glob("part-*.parquet")))

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
