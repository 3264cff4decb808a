"""Arguments that must be refused before any work (issue 12): each one line
on stderr and the documented exit code, nothing attached, nothing written.
The analysis commands' --window and --plot: tests/analysis/test_cli_arguments.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, run
from tracer import netns
from tracer.capfile import CaptureWriter
from tracer.capture.backends import parse_backend_option
from tracer.capture.decode import EventDecoder
from tracer.capture.live import RateLimitedPrinter
from tracer.capture.options import CaptureOptions, validate_options
from tracer.capture.session import CaptureSession
from tracer.capture.sink import EventSink
from tracer.errors import CaptureFileError, UsageError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "notebooks" / "data" / "lab-sample" / "lab-node-a"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """`tracer ARGV` as user nobody: a real other user, this worktree's code."""
    return subprocess.run([*NOBODY, sys.executable, "-m", "tracer", *argv], capture_output=True,
                          text=True, timeout=120, cwd="/",
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/",
                               "PYTHONPATH": str(REPO)})


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# ---- capture: refused by validate_options, before the session's start()

BAD_CAPTURE_OPTIONS = [
    ({"duration": float("nan")}, "--duration must be a finite number"),
    ({"duration": float("inf")}, "--duration must be a finite number"),
    ({"duration": 1e300}, "--duration must be at most a year"),
    ({"duration": 0.0}, "--duration must be positive"),
    ({"probes": ()}, "--probes: no probe point given"),
    ({"backend": "rx=kprobe,rx=tracepoint"}, "'rx' given twice"),
    ({"backend": "kprobe,kprobe"}, "'kprobe' given twice"),
    ({"backend": ""}, "unknown backend ''"),
    ({"netns": ""}, "--netns: empty name"),
]


@pytest.mark.parametrize("change, message", BAD_CAPTURE_OPTIONS)
def test_validate_options_refuses(change, message):
    with pytest.raises(UsageError, match=message):
        validate_options(CaptureOptions(service="default/web", **change))


def test_backend_forms_that_stay_allowed():
    # A bare backend is a preference; a point=backend item overrides it in either order.
    assert parse_backend_option("kprobe,rx=tracepoint")["rx"] == "tracepoint"
    assert parse_backend_option("rx=tracepoint,kprobe")["rx"] == "tracepoint"
    assert parse_backend_option("tp_btf,kprobe") == {
        "rx": "tp_btf", "tx": "tp_btf", "drop": "tp_btf", "nat": "kprobe"}


@pytest.mark.root
@pytest.mark.parametrize("args, message", [
    (["--duration", "nan"], "--duration must be a finite number of seconds, not nan"),
    (["--duration", "inf"], "--duration must be a finite number of seconds, not inf"),
    (["--probes", ""], "--probes: no probe point given"),
    (["--probes", " , "], "--probes: no probe point given"),
    (["--backend", "rx=kprobe,rx=tracepoint"], "--backend: 'rx' given twice"),
    (["--netns", ""], "--netns: empty name"),
])
def test_capture_usage_error_wins_over_not_root(args, message):
    """As nobody a capture that could start ends with exit 3 (not root) at
    start(); exit 2 here shows the option was refused before, so nothing
    could have been attached."""
    proc = as_nobody("capture", "--svc", "default/web", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert message in one_line_error(proc.stderr)


@pytest.mark.root
def test_capture_with_good_options_as_nobody_is_exit_3():
    """The control of the test above: the same command, valid, gets to start()."""
    proc = as_nobody("capture", "--svc", "default/web", "--duration", "1")
    assert proc.returncode == 3, proc.stderr
    assert "needs root" in one_line_error(proc.stderr)


@pytest.mark.root
@pytest.mark.parametrize("where", ["missing/summary.json", "adir"])
def test_summary_json_checked_before_anything_else(tmp_path, where):
    """start() refuses an unwritable --summary-json first thing after the
    root check: the --netns given here does not exist, so reaching any
    later step (entering the node, attaching) would raise UsageError instead."""
    (tmp_path / "adir").mkdir()
    opts = CaptureOptions(service="default/web", netns="/nonexistent/netns",
                          summary_json=tmp_path / where, output=tmp_path / "cap")
    session = CaptureSession(opts)
    try:
        with pytest.raises(CaptureFileError, match="--summary-json: cannot write"):
            session.start()
    finally:
        session.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]  # no capture directory made


def test_sink_keeps_writing_when_stdout_is_closed(tmp_path):
    """`tracer capture ... | head`: the live lines hit a closed pipe (a real
    one); the batch is still written and the sink says the output closed, so
    the session ends the capture as if stopped, with a complete file."""
    from tests.capture.test_decode_and_summary import make_events

    read_end, write_end = os.pipe()
    os.close(read_end)
    writer = CaptureWriter(tmp_path)
    printer = RateLimitedPrinter(lambda line: os.write(write_end, line.encode() + b"\n"))
    sink = EventSink(EventDecoder("n", 0), writer, printer, None)
    try:
        sink.emit(_columns(make_events()))
    finally:
        writer.close()
        os.close(write_end)
    assert sink.output_closed and sink.printer is None
    assert sink.events_written == 5 and writer.rows == 5


def _columns(events):
    from tracer.capture.decode import EventColumns

    cols = EventColumns(len(events))
    cols.append(events)
    return cols


# ---- services --netns, and netns.resolve for every command that takes one

@pytest.mark.parametrize("name, message", [
    ("", "--netns: empty name"),
    ("/etc/passwd", "--netns '/etc/passwd': not a network namespace"),
    ("/proc/self/ns/uts", "not a network namespace"),
    ("/dev/null", "not a network namespace"),
    ("x" * 5000, "File name too long"),
    ("no-such-netns-here", "no network namespace 'no-such-netns-here'"),
])
def test_services_netns_refused(capsys, name, message):
    code, out, err = run(capsys, "services", "--netns", name)
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert message in line and len(line) < 300


def test_resolve_accepts_a_network_namespace():
    assert netns.resolve("/proc/self/ns/net") == Path("/proc/self/ns/net")


# ---- doctor as another user

@pytest.mark.root
@pytest.mark.parametrize("as_json", [False, True])
def test_doctor_as_nobody_degrades_with_exit_3(as_json):
    proc = as_nobody("doctor", *(["--json"] if as_json else []))
    assert proc.returncode == 3, proc.stderr
    assert "needs root" in one_line_error(proc.stderr)
    if as_json:
        report = json.loads(proc.stdout)
        assert report["root"] is False and report["can_capture"] is False
        assert {c["name"] for c in report["checks"]} >= {"root", "BTF", "tracefs", "BCC"}
    else:
        assert "[MISS] root" in proc.stdout and "capture cannot run here" in proc.stdout


# ---- cluster capture: refused before kubectl is run or the output made

@pytest.mark.parametrize("args, message", [
    (["--duration", "inf"], "--duration must be a finite number of seconds, not inf"),
    (["--duration", "nan"], "--duration must be a finite number of seconds, not nan"),
    (["--duration", "1e300"], "--duration must be at most a year"),
    (["--duration", "1", "--start-timeout", "inf"], "--start-timeout must be a finite number"),
    (["--duration", "1", "--start-timeout", "-1"], "--start-timeout must be positive"),
])
def test_cluster_capture_durations(capsys, tmp_path, args, message):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "cluster", "capture", "--svc", "web", "-o", str(out_dir),
                         "--kubectl", str(tmp_path / "no-kubectl"), *args)
    assert code == 2 and out == ""
    assert message in one_line_error(err)
    assert not out_dir.exists()


# ---- output read by a process that leaves: quiet, exit 0

@pytest.mark.parametrize("args", [
    ["timeline", str(SAMPLE), "--limit", "0"],
    ["timeline", str(SAMPLE), "--limit", "0", "--json"],
])
def test_closed_stdout_ends_quietly(args):
    """`tracer ... | head -1` in a shell: exit 0, nothing on stderr, one line
    out. The output is far bigger than a pipe's buffer, so the pipe closes
    while the command still writes."""
    before = tree_hash(SAMPLE)
    command = " ".join([sys.executable, "-m", "tracer", *args])
    proc = subprocess.run(["bash", "-c", f"{command} | head -1; exit ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count("\n") == 1
    assert tree_hash(SAMPLE) == before
