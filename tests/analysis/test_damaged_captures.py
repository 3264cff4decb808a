"""Damaged or odd captures through the CLI: one line on stderr, exit 5 for a
capture that cannot be read as the format says (never exit 0 with a wrong
answer, never exit 70), exit 0 with one note for a capture without events;
and in every case not one byte of the input changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.analysis.synthetic import KEEP_EVERY_PART, Scenario, simulate
from tracer.capfile import META_FILE, part_files
from tracer.cli import main

REPO = Path(__file__).resolve().parent.parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two nodes' captures of a few parts each (20 ms of events a part)."""
    sim = simulate(Scenario(connections=30, seed=4))
    paths = sim.write(tmp_path_factory.mktemp("parts"), part_seconds=0.02, policy=KEEP_EVERY_PART)
    assert all(len(part_files(p)) >= 3 for p in paths.values())
    return paths


@pytest.fixture
def cap(parts: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of node A's capture, free to damage."""
    return Path(shutil.copytree(parts["lab-node-a"], tmp_path / "cap"))


def digest(root: Path) -> str:
    """Names, modes and bytes of everything under root."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(f"{path.relative_to(root)} {path.stat().st_mode:o}\n".encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def one_line(err: str, prefix: str = "tracer: error: ") -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


def commands(caps: list[Path], other: Path, out: Path) -> Iterator[list[str]]:
    """Every command that reads captures, on caps (correlate beside `other`)."""
    names = list(map(str, caps))
    yield ["timeline", *names]
    yield ["latency", *names]
    yield ["fairness", *names]
    yield ["export", names[0], "--pcap", str(out / "x.pcapng")]
    yield ["report", *names, "-o", str(out / "report")]
    yield ["correlate", *names, str(other), "-o", str(out / "merged")]
    yield ["diagnose", *names]


COMMAND_NAMES = ["timeline", "latency", "fairness", "export", "report", "correlate", "diagnose"]


def nth_command(i: int, caps: list[Path], other: Path, out: Path) -> list[str]:
    return list(commands(caps, other, out))[i]


def expect_error(capsys, argv: list[str], inputs: list[Path], *needles: str) -> str:
    before = [digest(p) for p in inputs]
    code, out, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 5 and out == "", err
    for needle in needles:
        assert needle in line, line
    assert [digest(p) for p in inputs] == before
    return line


def rewrite_part(part: Path, change) -> None:
    pq.write_table(change(pq.read_table(part)), part)


def edit_meta(cap: Path, change) -> None:
    meta = json.loads((cap / META_FILE).read_text())
    (cap / META_FILE).write_text(json.dumps(change(meta)))


# ---- 1. a part whose columns are not the format's


@pytest.mark.parametrize("i", range(len(COMMAND_NAMES)), ids=COMMAND_NAMES)
def test_part_without_a_column_is_exit_5_in_every_command(capsys, cap, parts, tmp_path, i):
    part = part_files(cap)[1]
    rewrite_part(part, lambda t: t.drop_columns(["saddr"]))
    n = len(part_files(cap))
    argv = nth_command(i, [cap], parts["lab-node-b"], tmp_path)
    expect_error(capsys, argv, [cap, parts["lab-node-b"]], part.name, "no column saddr",
                 f"{n - 1} other parts are untouched")


def test_part_with_a_column_of_another_type_is_exit_5(capsys, cap):
    part = part_files(cap)[0]
    rewrite_part(part, lambda t: t.set_column(
        t.schema.get_field_index("sport"), "sport", t.column("sport").cast(pa.int64())))
    expect_error(capsys, ["latency", str(cap)], [cap], part.name,
                 "column sport is int64, the format has uint16")


def test_tunnel_columns_may_lack_only_in_a_version_1_capture(capsys, cap):
    part = part_files(cap)[-1]
    rewrite_part(part, lambda t: t.drop_columns(["encap", "outer_saddr", "outer_daddr"]))
    expect_error(capsys, ["latency", str(cap)], [cap], part.name, "version 3",
                 "no column encap, outer_saddr, outer_daddr")
    edit_meta(cap, lambda m: {**m, "version": 1})
    code, out, err = run(capsys, "latency", str(cap))
    assert code == 0 and err == "" and "NAT hook time" in out


ICMP_COLUMNS = ["icmp_type", "icmp_code", "quoted_saddr", "quoted_daddr", "quoted_sport",
                "quoted_dport", "quoted_proto"]


def test_icmp_columns_may_lack_only_in_a_version_2_capture(capsys, cap):
    part = part_files(cap)[-1]
    rewrite_part(part, lambda t: t.drop_columns(ICMP_COLUMNS))
    expect_error(capsys, ["latency", str(cap)], [cap], part.name, "version 3",
                 "no column " + ", ".join(ICMP_COLUMNS))
    edit_meta(cap, lambda m: {**m, "version": 2})
    code, out, err = run(capsys, "latency", str(cap))
    assert code == 0 and err == "" and "NAT hook time" in out


def test_text_columns_in_another_encoding_read_the_same(capsys, cap, parts):
    """Plain strings, or a narrower dictionary index (pandas writes int8):
    the same values, so the same answer; only the encoding differs."""
    code, want, _ = run(capsys, "latency", "--json", str(parts["lab-node-a"]))
    assert code == 0
    plain = part_files(cap)[0]
    rewrite_part(plain, lambda t: t.set_column(
        t.schema.get_field_index("saddr"), "saddr", t.column("saddr").cast(pa.string())))
    narrow = part_files(cap)[1]
    int8 = pa.dictionary(pa.int8(), pa.string())
    rewrite_part(narrow, lambda t: t.set_column(
        t.schema.get_field_index("probe"), "probe", t.column("probe").cast(int8)))
    code, out, err = run(capsys, "latency", "--json", str(cap))
    assert code == 0 and err == "" and out == want


def test_truncated_part_of_many_says_the_others_are_untouched(capsys, cap):
    part = part_files(cap)[-1]
    part.write_bytes(part.read_bytes()[:200])
    n = len(part_files(cap))
    expect_error(capsys, ["timeline", str(cap)], [cap], part.name, "damaged or truncated",
                 f"the capture's {n - 1} other parts are untouched")


def test_truncated_only_part_does_not_speak_of_other_parts(capsys, cap):
    for extra in part_files(cap)[1:]:
        extra.unlink()
    (part,) = part_files(cap)
    part.write_bytes(part.read_bytes()[:200])
    line = expect_error(capsys, ["timeline", str(cap)], [cap], part.name, "truncated")
    assert "other part" not in line and "intact" not in line


def test_part_left_half_written_by_a_kill_is_not_read(capsys, cap, parts):
    """SIGKILL mid-part leaves the part under its dot-name: the complete
    parts load and nothing is lost of them (docs/capture-format.md)."""
    last = part_files(cap)[-1]
    (cap / ".part-999999.parquet.tmp").write_bytes(last.read_bytes()[:300])
    code, want, _ = run(capsys, "latency", "--json", str(parts["lab-node-a"]))
    code, out, err = run(capsys, "latency", "--json", str(cap))
    assert code == 0 and err == "" and out == want


# ---- 2. the metadata document


def _set(key: str, value: Any):
    return lambda m: {**m, key: value}


BAD_METADATA = {
    "future version": (_set("version", 4), "format version 4 is newer than this tracer reads"),
    "version a string": (_set("version", "2"), "version is a string, the format has an integer"),
    "version missing": (lambda m: {k: v for k, v in m.items() if k != "version"},
                        "version is missing"),
    "a JSON list": (lambda m: [m], "the document is a list, the format has an object"),
    "stats a string": (_set("stats", "many"), "stats is a string"),
    "stats counter a string": (lambda m: {**m, "stats": {**m["stats"], "lost": "3"}},
                               "stats.lost is a string"),
    "service a list": (_set("service", ["default/nginx"]), "service is a list"),
    "service port a string": (lambda m: {**m, "service": {**m["service"], "ports": ["80"]}},
                              "service.ports[0] is a string"),
    "merged_from an object": (_set("merged_from", {"node": "a"}), "merged_from is an object"),
    "merged_from without node": (_set("merged_from", [{"meta": {}}]),
                                 "merged_from[0].node is missing"),
    "clock a number": (_set("clock", 5), "clock is an integer"),
    "clock offset a string": (_set("clock", {"realtime_minus_monotonic_ns": "x"}),
                              "clock.realtime_minus_monotonic_ns is a string"),
    "histograms a list": (_set("histograms", []), "histograms is a list"),
    "histogram bucket short": (
        _set("histograms", {"nat_hook_ns": [{"hook": "prerouting", "first": True,
                                             "buckets": [[0, 1]]}]}),
        "histograms.nat_hook_ns[0].buckets[0] has 2 items"),
    "service_history entry": (_set("service_history", [{"ts_ns": None}]),
                              "service_history[0].ts_ns is null"),
    "complete a string": (_set("complete", "yes"), "complete is a string"),
}


@pytest.mark.parametrize("case", BAD_METADATA, ids=list(BAD_METADATA))
def test_invalid_metadata_is_exit_5_saying_what(capsys, cap, case):
    change, needle = BAD_METADATA[case]
    edit_meta(cap, change)
    for command in ("latency", "fairness", "timeline"):
        expect_error(capsys, [command, str(cap)], [cap], META_FILE, needle)


@pytest.mark.parametrize("body", [
    bytes(range(256)),  # binary
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    b'{"format": "tracer-capture", "version": 2',  # cut short
    b"[" * 100_000 + b"]" * 100_000,  # nested past the parser's depth
])
def test_metadata_that_is_not_json_text_is_exit_5(capsys, cap, body):
    (cap / META_FILE).write_bytes(body)
    for command in ("latency", "report"):
        argv = [command, str(cap)] + (["-o", str(cap.parent / "r")] if command == "report" else [])
        expect_error(capsys, argv, [cap], META_FILE, "unreadable metadata")


def test_metadata_fifo_is_exit_5_not_a_hang(cap):
    (cap / META_FILE).unlink()
    os.mkfifo(cap / META_FILE)
    before = digest(cap)
    proc = subprocess.run([sys.executable, "-m", "tracer", "latency", str(cap)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 5 and proc.stdout == ""
    assert "not a regular file" in one_line(proc.stderr)
    assert digest(cap) == before


def test_every_document_the_writers_make_passes(tmp_path):
    """The capture engine's document (as tracer.capture.metadata and
    counters build it) and a merged one read back."""
    from types import SimpleNamespace

    from tracer.capfile import read_meta
    from tracer.capture import abi, metadata
    from tracer.capture.counters import stats_document
    from tracer.histograms import log2_buckets
    from tracer.kube.resolved import ResolvedEndpoint, ResolvedService, ResolvedServicePort

    ep = ResolvedEndpoint("10.0.0.5", 80, "tcp", 0.5, 0.5, "KUBE-SEP-X")
    svc = ResolvedService("default", "web", (ResolvedServicePort(
        "http", "tcp", 8080, ("10.96.0.1",), endpoints=(ep, ep), local_endpoints=(ep,)),))
    backend = SimpleNamespace(name="tracepoint", target="netif_receive_skb")
    doc = metadata.initial_document(
        node="n1", netns_info={"path": "/proc/self/ns/net", "inode": 4026531840},
        backends={"rx": backend, "nat": backend}, nat_priorities={"prerouting": [-101, -99]},
        mode="events", service=svc.to_dict(), filters={"client": "1.2.3.4"},
        clock=metadata.clock_offset(), startup={"compile_s": 0.3, "first_attach_s": 0.5})
    slots = [0] * abi.HIST_SLOTS
    slots[8] = 3
    out = tmp_path / "cap"
    out.mkdir()
    metadata.update_and_write(
        out, doc,
        stats=stats_document(list(range(abi.STAT_NR)), events_read=5, events=5,
                             filter_overflow_user=0),
        histograms={"nat_hook_ns": [{"hook": "prerouting", "first": True,
                                     "buckets": log2_buckets(slots)}]},
        service_history=[{"ts_ns": 1, "service": svc.to_dict()}],
        scoped_netns={"4026531840": "host"}, ended_ns=2, ended_by="SIGINT", parts=0,
        complete=True)
    assert read_meta(out)["service"]["ports"][0]["endpoints"][0]["chain"] == "KUBE-SEP-X"


def test_merged_capture_of_the_sample_reads_back(capsys, tmp_path):
    sample = REPO / "notebooks" / "data" / "lab-sample"
    inputs = [sample / "lab-node-a", sample / "lab-node-b"]
    before = [digest(p) for p in inputs]
    code, _, _ = run(capsys, "correlate", *map(str, inputs), "-o", str(tmp_path / "m"))
    assert code == 0
    code, out, err = run(capsys, "latency", str(tmp_path / "m"))
    assert code == 0 and err == "" and "NAT hook time" in out
    assert [digest(p) for p in inputs] == before


# ---- 3. a directory that can be entered but not listed


@pytest.mark.root
@pytest.mark.parametrize("command", ["timeline", "latency"])
def test_unlistable_capture_directory_is_exit_5(parts, command):
    """Mode 0311, read as another user: the metadata opens but the parts
    cannot be listed, which must not read as a capture without events."""
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import pyarrow, pandas, click"],
                           capture_output=True)
    # Fails, never skips: the capture tests run the same interpreter as nobody.
    assert probe.returncode == 0, f"{sys.executable} cannot run as nobody: {probe.stderr!r}"
    root = Path(tempfile.mkdtemp(prefix="tracer-unlistable-"))
    try:
        root.chmod(0o711)
        shutil.copytree(REPO / "tracer", root / "src" / "tracer")  # importable by nobody
        for d in (root / "src", *(p for p in (root / "src").rglob("*") if p.is_dir())):
            d.chmod(0o755)
        for f in (root / "src").rglob("*"):
            if f.is_file():
                f.chmod(0o644)
        cap = Path(shutil.copytree(parts["lab-node-a"], root / "cap"))
        for f in cap.iterdir():
            f.chmod(0o644)
        cap.chmod(0o311)
        before = digest(cap)
        proc = subprocess.run(
            [*NOBODY, sys.executable, "-m", "tracer", command, str(cap)],
            capture_output=True, text=True, cwd="/", timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": "/", "PYTHONPATH": str(root / "src")},
        )
        assert proc.returncode == 5 and proc.stdout == "", proc.stderr
        line = one_line(proc.stderr)
        assert str(cap) in line and "cannot list" in line and "Permission denied" in line
        assert digest(cap) == before
    finally:
        shutil.rmtree(root)


# ---- 4. a capture with metadata and no events


@pytest.fixture
def quiet(parts: dict[str, Path], tmp_path: Path) -> Path:
    """What a capture of a Service without traffic is: metadata, no parts."""
    path = tmp_path / "quiet"
    path.mkdir()
    shutil.copy(parts["lab-node-a"] / META_FILE, path / META_FILE)
    return path


@pytest.mark.parametrize("i", range(len(COMMAND_NAMES)), ids=COMMAND_NAMES)
def test_capture_without_events_is_exit_0_with_one_note(capsys, quiet, parts, tmp_path, i):
    argv = nth_command(i, [quiet], parts["lab-node-b"], tmp_path)
    inputs = [quiet, parts["lab-node-b"]]
    before = [digest(p) for p in inputs]
    code, out, err = run(capsys, *argv)
    assert code == 0
    line = one_line(err, "tracer: no events in ")
    assert line == f"tracer: no events in {quiet} (the capture holds only its metadata)"
    assert [digest(p) for p in inputs] == before
    if argv[0] == "correlate":
        assert "merged 2 nodes" in out


@pytest.mark.parametrize("command", ["latency --json", "fairness --json", "timeline --json"])
def test_capture_without_events_gives_valid_json(capsys, quiet, command):
    code, out, err = run(capsys, *command.split(), str(quiet))
    assert code == 0 and "no events" in one_line(err, "tracer: ")
    for doc in filter(None, out.splitlines() if command.startswith("timeline") else [out]):
        json.loads(doc)


def test_two_captures_without_events_correlate_with_one_note(capsys, quiet, parts, tmp_path):
    other = tmp_path / "quiet-b"
    other.mkdir()
    shutil.copy(parts["lab-node-b"] / META_FILE, other / META_FILE)
    code, out, err = run(capsys, "correlate", str(quiet), str(other), "-o", str(tmp_path / "m"))
    assert code == 0 and "merged 2 nodes, 0 events" in out
    assert str(quiet) in one_line(err, "tracer: no events in ") and str(other) in err
    code, _, err = run(capsys, "timeline", str(tmp_path / "m"))
    assert code == 0 and "no events" in one_line(err, "tracer: ")


def test_histogram_mode_capture_points_to_latency(capsys, quiet):
    edit_meta(quiet, _set("mode", "hist"))
    code, out, err = run(capsys, "timeline", str(quiet))
    assert code == 0 and out == ""
    assert "`tracer latency` shows its NAT hook histograms" in one_line(err, "tracer: ")
    code, out, _ = run(capsys, "latency", str(quiet))
    assert code == 0 and "In-kernel NAT hook histograms" in out
