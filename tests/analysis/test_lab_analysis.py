"""The analysis on real captures: both lab nodes captured by the real engine
while real traffic crosses them, every answer checked against a witness the
tracer does not produce (kube-proxy's KUBE-SEP counters, nginx's access logs,
the traffic generator's own counts) or against a known clock shift."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.compute as pc
import pytest

from tests.capture.lab_capture import capture, sep_counters
from tracer.analysis import fairness, latency
from tracer.analysis.correlate import merge
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble
from tracer.analysis.pcap import export_pcapng
from tracer.capfile import CaptureWriter, load, prepare_directory, read_meta, read_table, write_meta
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

SHIFT_NS = 6_500_000  # the known clock error given to node B's capture
ACCEPTANCE_NS = 20_000


@pytest.fixture(scope="module")
def captured(lab, tmp_path_factory):
    """Node A and node B captured during 80 one-request connections and 60
    keep-alive requests over 3 connections, all to the external IP."""
    tmp = tmp_path_factory.mktemp("lab-analysis")
    before = sep_counters("lab-node-a")
    with (
        capture(["--svc", "nginx-demo-1", "--netns", "lab-node-a"], tmp / "a") as a,
        capture(["--svc", "nginx-demo-1", "--netns", "lab-node-b"], tmp / "b") as b,
    ):
        fresh = run_traffic(requests=80, concurrency=4, target="external-ip")
        kept = run_traffic(requests=60, concurrency=3, target="external-ip", keepalive=True)
        time.sleep(0.5)
    assert a.returncode == 0 and b.returncode == 0, a.stderr_lines + b.stderr_lines
    assert fresh.failed == 0 and kept.failed == 0
    after = sep_counters("lab-node-a")
    meta = load(tmp / "a").meta
    chain_ip = {e["chain"]: e["ip"] for p in meta["service"]["ports"] for e in p["endpoints"]}
    sep = Counter({chain_ip[c]: n - before.get(c, 0) for c, n in after.items() if c in chain_ip})
    pod_ip = {p.name: p.ip for p in lab.pods}
    served = Counter()
    for run in (fresh, kept):
        served.update({pod_ip[name]: n for name, n in run.served_by_pod.items()})
    return SimpleNamespace(
        a=tmp / "a", b=tmp / "b", tmp=tmp, fresh=fresh, kept=kept, sep=+sep, served=+served
    )


def _shifted_copy(src: Path, dst: Path, shift_ns: int) -> Path:
    """The capture as a node whose UTC clock runs shift_ns ahead would have written it."""
    prepare_directory(dst)
    meta = read_meta(src)
    for key in ("format", "version"):
        meta.pop(key)
    table = read_table(src)
    table = table.set_column(
        table.schema.get_field_index("time_ns"), "time_ns", pc.add(table["time_ns"], shift_ns)
    )
    writer = CaptureWriter(dst)
    writer.submit(table)
    writer.close()
    meta["clock"]["realtime_minus_monotonic_ns"] += shift_ns
    write_meta(dst, meta)
    return dst


def test_lab_packets_cross_nodes_in_causal_order(captured):
    packets = assemble(load_events([captured.a, captured.b]))
    ev = packets.events
    nodes_per_packet = ev.groupby("packet")["node"].nunique()
    assert (nodes_per_packet > 1).sum() > 100
    assert not ev["ambiguous"].any()
    assert (ev["since_prev_ns"] >= 0).all()
    # A connection's first packet to the pod on node B: NATed on A, forwarded to B, into the pod.
    first = ev[(ev["nat_kind"] == "dnat") & ev["nat_first"]]["packet"]
    crossing = [p for p in first if nodes_per_packet[p] == 2]
    hops = ev[ev["packet"] == crossing[0]]
    assert list(zip(hops["node"].astype(str), hops["probe"].astype(str), strict=True)) == [
        ("lab-node-a", "rx"),
        ("lab-node-a", "nat"),
        ("lab-node-a", "nat"),
        ("lab-node-a", "tx"),
        ("lab-node-b", "rx"),
        ("lab-node-b", "tx"),
        ("lab-node-b", "rx"),
    ]


def test_lab_acceptance_known_clock_shift_recovered(captured):
    shifted = _shifted_copy(captured.b, captured.tmp / "b-shifted", SHIFT_NS)
    result = merge([captured.a, shifted], captured.tmp / "merged")
    clock = result.clocks.nodes["lab-node-b"]
    assert abs(clock.offset_ns - SHIFT_NS) <= ACCEPTANCE_NS
    assert clock.uncertainty_ns <= ACCEPTANCE_NS
    assert result.causal_violations == 0
    merged = assemble(load_events([captured.tmp / "merged"])).events
    cross = merged.groupby("packet")["node"].nunique() > 1
    times = merged[merged["packet"].isin(cross.index[cross])].groupby("packet")["t"]
    assert not times.apply(lambda s: bool((np.diff(s.to_numpy()) < 0).any())).any()


def test_lab_fairness_agrees_with_rule_counters_and_nginx(captured):
    report = fairness.analyze(assemble(load_events([captured.a, captured.b])))
    conns = Counter({e.endpoint.split(":")[0]: e.connections for e in report.overall.endpoints})
    assert +conns == captured.sep  # one KUBE-SEP DNAT per connection
    # Every DNAT choice counts (a connection whose first NAT binding was reset
    # by a TIME_WAIT clash behind MASQUERADE --random-fully is chosen again),
    # so at least one per client connection, exactly the rules' count.
    assert report.overall.connections == sum(captured.sep.values())
    assert report.overall.connections >= captured.fresh.connections + captured.kept.connections
    requests = Counter({e.endpoint.split(":")[0]: e.requests for e in report.overall.endpoints})
    assert +requests == captured.served  # what the pods logged
    assert report.requests["per_connection"]["max"] >= 2  # the keep-alive connections


def test_lab_latency_groups(captured):
    report = latency.analyze(assemble(load_events([captured.a, captured.b])))
    first = [d for d in report.nat if d.labels["kind"] == "dnat" and d.labels["first"] == "first"]
    assert sum(d.count for d in first) == sum(captured.sep.values())
    assert {(d.labels["from"], d.labels["to"]) for d in report.hops} == {
        ("lab-node-a", "lab-node-b"),
        ("lab-node-b", "lab-node-a"),
    }


def test_lab_pcap_reads_back(captured):
    out = captured.tmp / "lab.pcapng"
    n = export_pcapng([captured.a, captured.b], out)
    tshark = shutil.which("tshark")
    assert tshark, "tshark missing: run scripts/setup.sh"
    import subprocess

    lines = subprocess.run(
        [tshark, "-r", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert len(lines.splitlines()) == n
