"""pcapng export streams: the packets are built a batch at a time, the bytes
are those one pass over every event writes, and the memory it takes does not
grow with the number of events (issue 12)."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest

from tests.analysis.synthetic import Scenario, simulate
from tracer.analysis import pcap
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble

SAMPLE = Path(__file__).parents[2] / "notebooks" / "data" / "lab-sample"


def _tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()


def _export(monkeypatch, source, path: Path, batch: int, **kwargs) -> bytes:
    monkeypatch.setattr(pcap, "EXPORT_BATCH", batch)
    pcap.export_pcapng(source, path, **kwargs)
    return path.read_bytes()


@pytest.mark.parametrize("payload", ["omit", "zeros"])
def test_lab_sample_bytes_do_not_depend_on_the_batch(monkeypatch, tmp_path, payload):
    before = _tree_hash(SAMPLE)
    captures = [SAMPLE / "lab-node-a", SAMPLE / "lab-node-b"]
    one_pass = _export(monkeypatch, captures, tmp_path / "one.pcapng", 10**9, payload=payload)
    batched = _export(monkeypatch, captures, tmp_path / "batched.pcapng", 997, payload=payload)
    assert batched == one_pass
    assert one_pass.count(b"tracer packet ") == 7994 + 2634
    assert _tree_hash(SAMPLE) == before


def test_synthetic_bytes_do_not_depend_on_the_batch(monkeypatch, tmp_path, scenario):
    packets = assemble(load_events(scenario.both))
    one_pass = _export(monkeypatch, packets, tmp_path / "one.pcapng", 10**9)
    for batch in (997, 4096):
        assert _export(monkeypatch, packets, tmp_path / f"{batch}.pcapng", batch) == one_pass


def _export_peak(monkeypatch, tmp_path: Path, connections: int) -> tuple[int, int]:
    """(events, peak bytes the export allocates beyond its input)."""
    packets = assemble(load_events(simulate(Scenario(connections=connections, seed=3)).write(
        tmp_path / str(connections)).values()))
    monkeypatch.setattr(pcap, "EXPORT_BATCH", 1000)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        pcap.export_pcapng(packets, tmp_path / f"{connections}.pcapng")
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return len(packets.events), peak


def test_export_memory_is_flat_in_the_number_of_events(monkeypatch, tmp_path):
    n, peak_n = _export_peak(monkeypatch, tmp_path, 250)
    n4, peak_4n = _export_peak(monkeypatch, tmp_path, 1000)
    assert n4 > 3.5 * n > 3.5 * 5_000
    # Building every packet first grows with the events (~1.3 KB each: 4x
    # here); a batch at a time, only the sort order and interface code per
    # event do (~50 bytes each).
    assert peak_4n < 1.8 * peak_n, (n, peak_n, n4, peak_4n)
