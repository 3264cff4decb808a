"""`tracer demo`: the README's first command, end to end on the lab.

The integration test runs it as a user would (`tracer demo -o DIR`) and holds
every figure it prints against the merged capture it wrote, read with plain
pandas; the others make it fail in the middle and check that the captures
were stopped and the error is one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.capture.lab_capture import client_connections, netfilter_links
from tests.output_attack import Attack, attack_fixture  # noqa: F401 (fixture)
from tracer.capfile import read_meta
from tracer.cli import main
from tracer.errors import LabError

TRACER = [sys.executable, "-m", "tracer"]
ENDPOINT = re.compile(
    r"^  (\S+:\d+)\s+(\S+)\s+dnat\s+(\d+) \(rules\s+(\d+)\)\s+share\s+([\d.]+)% "
    r"\(promised\s+([\d.]+)%\)\s+requests\s+(\d+) \(nginx\s+(\d+)\)$", re.M)
NAT = re.compile(
    r"^  (\S+) (DNAT|SNAT)\s+(\w+)\s+first ([\d.]+) us / ([\d.]+) us \(n=(\d+)\)\s+"
    r"established ([\d.]+) us / ([\d.]+) us \(n=(\d+)\)$", re.M)
CLOCK = re.compile(
    r"^clock: (\S+) offset ([+-][\d.]+) us \+/- ([\d.]+) us relative to (\S+) "
    r"\(estimated from (\d+) crossing packets\)$", re.M)
REQUESTS = re.compile(r"^requests: (\d+) sent, (\d+) answered; seen in the capture (\d+); "
                      r"nginx access logs (\d+)$", re.M)
CONNECTIONS = re.compile(r"^connections: (\d+) opened by the client; (\d+) client connections and "
                         r"(\d+) DNAT choices in the capture; KUBE-SEP counters (\d+)$", re.M)


def _us(ns: float) -> str:
    return f"{ns / 1e3:.2f}"


@pytest.mark.root
@pytest.mark.lab
def test_demo_end_to_end(lab, tmp_path):
    out = tmp_path / "demo"
    t0 = time.monotonic()
    proc = subprocess.run([*TRACER, "demo", "-o", str(out)], capture_output=True, text=True,
                          timeout=180)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert all(line.startswith("demo: ") for line in proc.stderr.splitlines()), proc.stderr
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"
    text = proc.stdout

    for name in ("report.html", "report.md", "latency.png", "fairness.png", "timeline-1.png"):
        assert (out / "report" / name).stat().st_size > 1000, name
    assert f"report: {out / 'report' / 'report.html'}" in text
    for node in ("lab-node-a", "lab-node-b"):
        meta = read_meta(out / "captures" / node)
        assert meta["complete"] and meta["ended_by"] == "SIGINT" and meta["stats"]["lost"] == 0

    # The merged capture, read without the tracer's analysis.
    merged = out / "merged"
    ev = pd.read_parquet(merged)
    meta = json.loads((merged / "_tracer_meta.json").read_text())
    dnat = ev[(ev["probe"] == "nat") & (ev["nat_kind"] == "dnat") & ev["nat_first"]]
    per_endpoint = (dnat["nat_daddr"].astype(str) + ":" + dnat["nat_dport"].astype(str)).value_counts()

    sent, answered, seen, logged = map(int, REQUESTS.search(text).groups())
    assert sent == answered == seen == logged == 500  # 400 new connections + 100 keep-alive
    opened, clients, choices, rules = map(int, CONNECTIONS.search(text).groups())
    assert choices == rules == len(dnat)
    assert clients == opened == client_connections(dnat)

    rows = ENDPOINT.findall(text)
    assert len(rows) == 2
    promised = {f"{e['ip']}:{e['port']}": e["share"] for e in meta["service"]["ports"][0]["endpoints"]}
    for endpoint, _node, n, by_rules, share, promise, requests, by_nginx in rows:
        assert int(n) == int(by_rules) == per_endpoint[endpoint]
        assert share == f"{100 * per_endpoint[endpoint] / len(dnat):.1f}"
        assert promise == f"{100 * promised[endpoint]:.1f}"
        assert requests == by_nginx
    assert sum(int(r[6]) for r in rows) == 500

    nat = ev[ev["probe"] == "nat"]
    lines = NAT.findall(text)
    assert {(k, h) for _, k, h, *_ in lines} == {("DNAT", "prerouting"), ("SNAT", "postrouting")}
    for node, kind, hook, f50, f99, fn, e50, e99, en in lines:
        group = nat[(nat["node"] == node) & (nat["nat_kind"] == kind.lower()) & (nat["hook"] == hook)]
        for flag, p50, p99, n in ((True, f50, f99, fn), (False, e50, e99, en)):
            values = group[group["nat_first"] == flag]["nat_ns"].to_numpy(np.float64)
            assert int(n) == len(values)
            assert (p50, p99) == (_us(np.percentile(values, 50)), _us(np.percentile(values, 99)))

    node, offset, uncertainty, reference, crossings = CLOCK.search(text).groups()
    source = {m["node"]: m for m in meta["merged_from"]}
    assert source[reference]["reference"] and not source[node]["reference"]
    assert offset == f"{source[node]['offset_ns'] / 1e3:+.2f}"
    assert uncertainty == _us(source[node]["uncertainty_ns"])
    assert int(crossings) == source[node]["packets_to"] + source[node]["packets_from"] > 100

    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["dnat_choices"] == len(dnat)


@pytest.mark.root
@pytest.mark.lab
def test_demo_stops_the_captures_when_a_step_fails(lab, tmp_path, monkeypatch, capsys):
    import tracer.demo

    def broken_traffic(*args, **kwargs):
        raise LabError("traffic generator broke")

    monkeypatch.setattr(tracer.demo, "run_traffic", broken_traffic)
    links_before = len(netfilter_links())
    with pytest.raises(SystemExit) as exc:
        main(["demo", "-o", str(tmp_path / "demo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == LabError.exit_code
    assert err[-1] == "tracer: error: traffic generator broke"
    assert "Traceback" not in "\n".join(err)
    for node in ("lab-node-a", "lab-node-b"):  # both captures ended by SIGINT, files closed
        meta = read_meta(tmp_path / "demo" / "captures" / node)
        assert meta["complete"] and meta["ended_by"] == "SIGINT"
    assert len(netfilter_links()) == links_before  # no probe left attached


@pytest.mark.root
@pytest.mark.lab
def test_capture_child_error_is_one_line(lab, tmp_path):
    from tracer.capture.child_process import CaptureProcess, CaptureProcessError

    child = CaptureProcess("lab-node-a", ["--svc", "no-such-service", "--netns", "lab-node-a"],
                           tmp_path / "cap", tmp_path / "cap.log")
    with pytest.raises(CaptureProcessError, match=r"^capture on lab-node-a failed: .*no-such-service"):
        child.wait_ready(time.monotonic() + 60)
    assert child.wait() == 2
    assert "no-such-service" in Path(tmp_path / "cap.log").read_text()


def test_demo_needs_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exc:
        main(["demo", "-o", str(tmp_path / "demo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 3 and len(err) == 1 and err[0].startswith("tracer: error: ")
    assert not (tmp_path / "demo").exists()  # nothing written before the check


def test_demo_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--requests", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("tracer: error: ")


@pytest.mark.root
def test_demo_refuses_another_users_directory_before_the_lab(attack: Attack, capsys):
    attack.link(".write-test")
    attack.link("summary.json")
    for out in (attack.evil, attack.evil / "demo"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 5 and len(err) == 1
        assert err[0].startswith(f"tracer: error: {attack.evil}: owned by nobody (uid 65534)")
    assert attack.target_unchanged() and len(os.listdir(attack.evil)) == 2
