"""The analysis commands of the CLI: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.cli_run import one_line_error, run


def test_timeline_text(capsys, small):
    code, out, err = run(capsys, "timeline", *map(str, small.both), "--limit", "2")
    assert code == 0
    assert (
        out.startswith("clocks: ")
        and "packet 1 " in out
        and "packet 2 " in out
        and "packet 3 " not in out
    )
    assert "showing 2 of" in err


def test_timeline_json_flow_and_packet(capsys, small):
    conn = small.sim.connections.iloc[0]
    flow = f"{conn.client}:{conn.client_port}->192.168.64.57:8088/tcp"
    code, out, _ = run(
        capsys, "timeline", *map(str, small.both), "--flow", flow, "--json", "--limit", "0"
    )
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) >= 9 and all(d["hops"] for d in docs)
    code, out, _ = run(
        capsys, "timeline", *map(str, small.both), "--packet", str(docs[0]["packet"]), "--json"
    )
    assert code == 0 and json.loads(out)["packet"] == docs[0]["packet"]


def test_timeline_plot(capsys, small, tmp_path):
    code, _, err = run(
        capsys,
        "timeline",
        *map(str, small.both),
        "--packet",
        "1",
        "--plot",
        str(tmp_path / "t.png"),
    )
    assert code == 0 and (tmp_path / "t.png").stat().st_size > 10_000 and "t.png" in err


@pytest.mark.parametrize("flow", ["192.168.64.10:x->1.2.3.4", "1.2.3.4->5.6.7.8/tcpx", "a->b->c"])
def test_malformed_flow_is_exit_2(capsys, small, flow):
    code, out, err = run(capsys, "timeline", str(small.paths["lab-node-a"]), "--flow", flow)
    assert code == 2 and out == ""
    assert "--flow" in one_line_error(err)


def test_flow_without_packets_is_exit_1(capsys, small):
    code, _, err = run(capsys, "timeline", str(small.paths["lab-node-a"]), "--flow", "->1.2.3.4:9")
    assert code == 1 and "matches" in one_line_error(err)


def test_bad_packet_id_is_exit_2(capsys, small):
    code, _, err = run(capsys, "timeline", str(small.paths["lab-node-a"]), "--packet", "999999")
    assert code == 2 and "no packet 999999" in one_line_error(err)


def test_missing_and_not_a_capture_are_exit_5(capsys, tmp_path):
    code, _, err = run(capsys, "latency", str(tmp_path / "missing"))
    assert code == 5 and "no such capture" in one_line_error(err)
    (tmp_path / "plain").mkdir()
    code, _, err = run(capsys, "fairness", str(tmp_path / "plain"))
    assert code == 5 and "not a tracer capture" in one_line_error(err)


def test_truncated_part_is_exit_5(capsys, small, tmp_path):
    copy = tmp_path / "cap"
    shutil.copytree(small.paths["lab-node-a"], copy)
    part = sorted(copy.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    code, _, err = run(capsys, "timeline", str(copy))
    assert code == 5 and "truncated" in one_line_error(err)


def test_correlate(capsys, small, tmp_path):
    out_dir = tmp_path / "merged"
    code, out, _ = run(capsys, "correlate", *map(str, small.both), "-o", str(out_dir))
    assert code == 0 and "merged 2 nodes" in out and "lab-node-b: offset" in out
    code, _, err = run(capsys, "correlate", *map(str, small.both), "-o", str(out_dir))
    assert code == 5 and "not empty" in one_line_error(err)
    code, out, _ = run(
        capsys, "correlate", *map(str, small.both), "-o", str(out_dir), "--force", "--json"
    )
    assert code == 0 and json.loads(out)["causal_violations"] == 0
    code, _, err = run(
        capsys, "correlate", str(small.paths["lab-node-a"]), "-o", str(tmp_path / "x")
    )
    assert code == 2 and "at least two" in one_line_error(err)
    # the merged capture feeds every other command
    code, out, _ = run(capsys, "timeline", str(out_dir), "--limit", "1")
    assert code == 0 and "packet 1 " in out


def test_latency(capsys, small, tmp_path):
    code, out, _ = run(capsys, "latency", *map(str, small.both), "--plot", str(tmp_path / "l.png"))
    assert code == 0 and "NAT hook time" in out and ": count     distribution" in out
    assert (tmp_path / "l.png").exists()
    code, out, _ = run(capsys, "latency", *map(str, small.both), "--json")
    assert code == 0 and json.loads(out)["nat_hook"]


def test_fairness(capsys, small, tmp_path):
    code, out, _ = run(
        capsys,
        "fairness",
        *map(str, small.both),
        "--plot",
        str(tmp_path / "f.png"),
        "--window",
        "0.5",
    )
    assert (
        code == 0
        and "chi-square" in out
        and "windows of 0.5 s" in out
        and (tmp_path / "f.png").exists()
    )
    code, out, _ = run(capsys, "fairness", *map(str, small.both), "--json")
    assert code == 0 and json.loads(out)["overall"]["connections"] == 30
    code, _, err = run(capsys, "fairness", *map(str, small.both), "--confidence", "2")
    assert code == 2 and "--confidence" in one_line_error(err)


def test_export_and_report(capsys, small, tmp_path):
    code, out, _ = run(
        capsys, "export", str(small.paths["lab-node-b"]), "--pcap", str(tmp_path / "b.pcapng")
    )
    assert code == 0 and "wrote" in out and (tmp_path / "b.pcapng").exists()
    code, out, _ = run(capsys, "report", *map(str, small.both), "-o", str(tmp_path / "rep"))
    assert (
        code == 0
        and (tmp_path / "rep" / "report.md").exists()
        and (tmp_path / "rep" / "report.html").exists()
    )


def test_missing_argument_is_a_click_usage_error(capsys):
    code, _, err = run(capsys, "export", "somewhere")
    assert code == 2 and "--pcap" in one_line_error(err)


def test_real_process_prints_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tracer", "timeline", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 5 and proc.stdout == ""
    one_line_error(proc.stderr)
