"""The ICMP error columns (format version 3) on captures older than them:
the real lab sample (version 2) loads with them empty, unchanged on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tracer.analysis.diagnose import diagnose
from tracer.analysis.events import load_events
from tracer.capfile import FORMAT_VERSION, read_meta

SAMPLE = Path(__file__).resolve().parents[2] / "notebooks" / "data" / "lab-sample"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_the_lab_sample_predates_the_icmp_columns_and_reads_with_them_empty():
    before = _digest(SAMPLE)
    nodes = sorted(p for p in SAMPLE.iterdir() if p.is_dir())
    assert all(read_meta(n)["version"] < FORMAT_VERSION for n in nodes)
    ev = load_events(nodes).events
    assert len(ev)
    for name in ("icmp_type", "icmp_code", "quoted_sport", "quoted_dport", "quoted_proto",
                 "quoted_src", "quoted_dst"):
        assert not np.any(ev[name].to_numpy()), name
    d = diagnose(nodes)
    assert d.connections["unreachable"] == 0
    assert all(g["icmp"] is None for g in d.failures)
    assert _digest(SAMPLE) == before
