"""The benchmark harness's arithmetic (bench/stats.py): medians, on/off
ratios against the untraced throughput of the same moment, the throughput
ladder's accounting, RSS growth and the keys of the final JSON. Pure: no
lab, no timing."""

from __future__ import annotations

import json

import pytest

from bench import stats


def _run(rnd, state, traffic, rps, p99, placement="isolated", t=None):
    # By default the runs of a round follow the harness's order, off first.
    t = rnd * 100 + stats.STATES.index(state) if t is None else t
    return {"round": rnd, "state": state, "traffic": traffic, "rps": rps, "p99_ms": p99,
            "placement": placement, "t": t}


def test_median_and_ratio():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([None, 5]) == 5
    assert stats.median([]) is None
    assert stats.ratio(90, 100) == 0.9
    assert stats.ratio(1, 0) is None and stats.ratio(None, 1) is None


def test_traced_runs_are_compared_with_the_untraced_throughput_of_their_own_time():
    # Untraced throughput drifts down linearly, within rounds as between
    # them; the tracer costs exactly 10% (hist) and 20% (events) of what the
    # untraced path does at that moment. Off runs open each round and close
    # the last one; interpolating between them must recover 0.9 and 0.8,
    # where comparing with the round's own off run would not.
    def untraced(t):
        return 1000 - 2 * t

    runs = []
    for traffic in ("close", "keepalive"):
        for rnd in range(3):
            t0 = rnd * 100
            runs += [_run(rnd, "off", traffic, untraced(t0), 1.0, t=t0),
                     _run(rnd, "hist", traffic, untraced(t0 + 30) * 0.9, 1.1, t=t0 + 30),
                     _run(rnd, "events", traffic, untraced(t0 + 60) * 0.8, 2.0, t=t0 + 60)]
        runs.append(_run(3, "off", traffic, untraced(300), 1.0, t=300))
    s = stats.overhead_summary(runs)
    for traffic in ("close", "keepalive"):
        entry = s[f"isolated/{traffic}"]
        assert entry["off"]["runs"] == 4 and entry["off"]["rps_median"] == 700
        assert entry["hist"]["throughput_ratio"] == pytest.approx(0.9)
        assert entry["events"]["throughput_ratio"] == pytest.approx(0.8)
        assert entry["events"]["p99_ratio"] == pytest.approx(2.0)
        assert entry["events"]["runs"] == 3
    # Against each round's opening off run alone, the drift would read as cost.
    first = [r for r in runs if r["state"] == "events" and r["traffic"] == "close"]
    assert first[0]["rps"] / untraced(0) == pytest.approx(0.8 * 880 / 1000)


def test_untraced_throughput_between_and_outside_the_off_runs():
    offs = [{"t": 0, "rps": 100}, {"t": 10, "rps": 80}]
    assert stats.untraced_at(5, offs, "rps") == pytest.approx(90)
    assert stats.untraced_at(10, offs, "rps") == pytest.approx(80)
    assert stats.untraced_at(12, offs, "rps") == 80 and stats.untraced_at(-1, offs, "rps") == 100
    assert stats.untraced_at(3, [], "rps") is None


def test_headline_is_the_worse_traffic_shape():
    runs = [_run(0, "off", "close", 100, 1), _run(0, "hist", "close", 99, 1),
            _run(0, "off", "keepalive", 100, 1), _run(0, "hist", "keepalive", 95, 1),
            _run(0, "events", "close", 91, 1), _run(0, "events", "keepalive", 93, 1)]
    s = stats.overhead_summary(runs)
    assert stats.worst_ratio(s, "isolated", "hist") == pytest.approx(0.95)
    assert stats.worst_ratio(s, "isolated", "events") == pytest.approx(0.91)
    assert stats.worst_ratio(s, "shared", "events") is None


def test_floors_are_measured_where_they_are_run_and_reported_beside_the_modes():
    runs = []
    for traffic in ("close", "keepalive"):
        runs += [_run(0, "off", traffic, 100, 1), _run(0, "empty_hist", traffic, 97, 1),
                 _run(0, "hist", traffic, 93, 1), _run(0, "empty_events", traffic, 90, 1),
                 _run(0, "events", traffic, 70, 1)]
        shared = [_run(0, "off", traffic, 100, 1), _run(0, "hist", traffic, 92, 1)]
        runs += [dict(r, placement="shared") for r in shared]
    s = stats.overhead_summary(runs)
    assert "empty_hist" not in s["shared/close"] and "empty_hist" in s["isolated/close"]
    report = stats.final_report(overhead=s, ladder={}, startup={}, analysis={}, memory={})
    assert report["floor_ratio_hist"] == pytest.approx(0.97)
    assert report["floor_ratio_events"] == pytest.approx(0.90)
    assert report["throughput_ratio_hist"] == pytest.approx(0.93)
    assert report["throughput_ratio_hist_shared"] == pytest.approx(0.92)


def test_ladder_accounting_and_lossless_rate():
    steps = [
        stats.ladder_step(offered=3_000_000, recorded=3_000_000, lost=0, kernel_events=3_000_000,
                          seconds=3.0),
        stats.ladder_step(offered=4_500_000, recorded=4_500_000, lost=0, kernel_events=4_500_000,
                          seconds=3.0),
        stats.ladder_step(offered=6_000_000, recorded=5_700_000, lost=300_000,
                          kernel_events=5_700_000, seconds=3.0),
    ]
    assert all(s["accounted"] for s in steps)
    assert steps[0]["offered_per_s"] == 1_000_000
    summary = stats.ladder_summary(steps)
    assert summary["lossless_events_per_s"] == 1_500_000
    assert summary["accounting_ok"]
    assert summary["loss_above"] == {"offered_per_s": 2_000_000, "loss_fraction": 0.05,
                                     "lost": 300_000}


def test_a_rate_is_not_lossless_if_a_step_at_that_rate_lost_events():
    """At the blaster's limit two steps offer about the same rate; one lost
    0.6% of its events: neither rate counts as lossless, the step below does."""
    steps = [
        stats.ladder_step(offered=20_000_000, recorded=20_000_000, lost=0, kernel_events=20_000_000,
                          seconds=10.0),
        stats.ladder_step(offered=22_500_000, recorded=22_500_000, lost=0, kernel_events=22_500_000,
                          seconds=10.44),
        stats.ladder_step(offered=25_000_000, recorded=24_839_047, lost=160_953,
                          kernel_events=24_839_047, seconds=11.625),
    ]
    summary = stats.ladder_summary(steps)
    assert summary["lossless_events_per_s"] == 2_000_000
    assert summary["loss_above"]["offered_per_s"] == pytest.approx(2_150_538, abs=1)


def test_ladder_flags_events_that_vanish():
    bad = stats.ladder_step(offered=100, recorded=90, lost=5, kernel_events=95, seconds=1.0)
    assert not bad["accounted"] and bad["unaccounted"] == 5
    summary = stats.ladder_summary([bad])
    assert not summary["accounting_ok"]
    assert summary["lossless_events_per_s"] == 0.0  # lost > 0 and not accounted


def test_rss_growth():
    flat = [(t / 4, 100.0 + (t % 3) * 0.1) for t in range(240)]  # 60 s, jitter only
    assert stats.rss_growth_mb(flat, warmup_s=5) == pytest.approx(0.0, abs=0.11)
    growing = [(t / 4, 100.0 + t / 4) for t in range(240)]  # +1 MiB per second
    assert stats.rss_growth_mb(growing, warmup_s=5) == pytest.approx(27.5, abs=0.3)
    assert stats.rss_growth_mb(flat[:10], warmup_s=5) is None


def test_final_report_has_every_required_key_and_is_json():
    runs = [_run(0, s, t, 100, 1) for s in ("off", "hist", "events") for t in ("close", "keepalive")]
    report = stats.final_report(
        overhead=stats.overhead_summary(runs),
        ladder={"lossless_events_per_s": 1.2e6, "accounting_ok": True, "loss_above": None},
        startup={"all_attached_s_median": 0.7, "first_attach_s_median": 0.69},
        analysis={"analysis_1m_events_s": 1.8},
        memory={"rss_growth_mb": 0.1, "peak_rss_mb": 150.0},
    )
    assert stats.missing_keys(report) == []
    assert set(stats.REQUIRED_KEYS) <= set(json.loads(json.dumps(report)))
    assert report["throughput_ratio_hist"] == 1.0
    assert report["startup_s"] == 0.7
    assert stats.missing_keys({"startup_s": 1}) == [k for k in stats.REQUIRED_KEYS if k != "startup_s"]
