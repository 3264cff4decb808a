"""Merging per-node captures onto one clock (the acceptance test of issue 4,
on synthetic captures until the engine's real ones exist)."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.analysis.conftest import OFFSET_B_NS
from tests.analysis.synthetic import NODE_A, NODE_B, Scenario, simulate
from tracer.analysis.correlate import merge
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble
from tracer.capfile import load
from tracer.errors import CaptureFileError, UsageError

ACCEPTANCE_NS = 20_000  # the offset must be recovered within 20 us


def _truth_causal_check(sim, merged_dir) -> tuple[int, int]:
    """Read the merged capture with DuckDB (an independent reader), find each
    event's true packet through (node, ts_ns), and count cross-node packets
    and those whose merged time_ns do not follow their true order."""
    truth = pd.concat(
        [sim.events[n][["node", "ts_ns", "_packet", "_t_true"]].assign(node=n) for n in sim.events],
        ignore_index=True,
    )
    merged = duckdb.sql(
        f"SELECT node, ts_ns, time_ns FROM read_parquet('{merged_dir}/*.parquet')"
    ).df()
    merged["node"] = merged["node"].astype(str)
    both = truth.merge(merged, on=["node", "ts_ns"], how="inner", validate="one_to_one")
    assert len(both) == len(truth) == len(merged)
    both = both.sort_values(["_packet", "_t_true"], kind="stable")
    crossing = both.groupby("_packet")["node"].nunique() > 1
    cross = both[both["_packet"].isin(crossing.index[crossing])]
    backwards = cross.groupby("_packet")["time_ns"].apply(
        lambda s: bool((np.diff(s.to_numpy()) < 0).any())
    )
    return int(crossing.sum()), int(backwards.sum())


def test_acceptance_offset_recovered_and_hops_causal(scenario, tmp_path):
    result = merge(scenario.both, tmp_path / "merged")
    clock = result.clocks.nodes[NODE_B]
    assert abs(clock.offset_ns - OFFSET_B_NS) <= ACCEPTANCE_NS
    assert clock.uncertainty_ns is not None and clock.uncertainty_ns <= ACCEPTANCE_NS
    assert result.causal_violations == 0
    crossing, backwards = _truth_causal_check(scenario.sim, tmp_path / "merged")
    assert crossing > 500 and backwards == 0


@pytest.mark.parametrize(
    ("offset_ns", "delay_ab", "delay_ba"),
    [
        (-4_250_000, (15_000, 5_000), (15_000, 5_000)),
        (12_000_000, (15_000, 4_000), (45_000, 4_000)),  # 30 us asymmetry: error ~15 us
        (3_000_000, (60_000, 20_000), (60_000, 20_000)),  # slow links: wider, still centred
    ],
)
def test_offset_recovered_for_other_offsets_and_delays(tmp_path, offset_ns, delay_ab, delay_ba):
    sim = simulate(
        Scenario(
            connections=150,
            clock_error_ns={NODE_A: 0, NODE_B: offset_ns},
            delay_ab_ns=delay_ab,
            delay_ba_ns=delay_ba,
            seed=7,
        )
    )
    paths = sim.write(tmp_path)
    result = merge([paths[NODE_A], paths[NODE_B]], tmp_path / "merged")
    clock = result.clocks.nodes[NODE_B]
    assert abs(clock.offset_ns - offset_ns) <= ACCEPTANCE_NS
    # the truth lies inside the feasible interval, whatever the delays
    assert clock.lower_ns <= offset_ns <= clock.upper_ns
    assert result.causal_violations == 0
    assert _truth_causal_check(sim, tmp_path / "merged")[1] == 0


def test_merged_capture_format_and_metadata(scenario, tmp_path):
    out = tmp_path / "merged"
    merge(scenario.both, out)
    capture = load(out)  # the ordinary reader
    meta = capture.meta
    assert meta["format"] == "tracer-capture" and meta["complete"] is True
    assert len(capture.events) == sum(len(f) for f in scenario.sim.events.values())
    by_node = {m["node"]: m for m in meta["merged_from"]}
    assert by_node[NODE_A]["reference"] and by_node[NODE_A]["offset_ns"] == 0
    b = by_node[NODE_B]
    assert abs(b["offset_ns"] - OFFSET_B_NS) <= ACCEPTANCE_NS and b["uncertainty_ns"] > 0
    assert b["meta"]["node"] == NODE_B and b["path"].endswith(NODE_B)
    # ts_ns keeps each node's own monotonic clock; time_ns is on the reference's
    rmm = b["corrected_realtime_minus_monotonic_ns"]
    ev_b = capture.events[capture.events["node"] == NODE_B]
    assert ((ev_b["time_ns"] - ev_b["ts_ns"]) == rmm).mean() > 0.99
    assert (
        json.loads((out / "_tracer_meta.json").read_text())["correlation"]["cross_node_links"] > 0
    )
    # DuckDB reads it like any capture
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchall()[0][
        0
    ] == len(capture.events)


def test_merging_is_idempotent(scenario, tmp_path):
    merge(scenario.both, tmp_path / "merged")
    again = assemble(load_events([tmp_path / "merged"]))
    clock = again.clocks.nodes[NODE_B]
    assert abs(clock.offset_ns) <= 1 and again.count == assemble(load_events(scenario.both)).count


def test_merge_errors(scenario, tmp_path):
    with pytest.raises(UsageError):
        merge([scenario.paths[NODE_A]], tmp_path / "one")
    with pytest.raises(UsageError):  # the same node twice would double its events
        merge([scenario.paths[NODE_A], scenario.paths[NODE_A]], tmp_path / "twice")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(CaptureFileError):
        merge(scenario.both, tmp_path / "busy")
    with pytest.raises(CaptureFileError):
        merge([scenario.paths[NODE_A], tmp_path / "missing"], tmp_path / "m2")
