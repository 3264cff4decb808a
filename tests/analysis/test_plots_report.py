"""PNG charts and the report page."""

from __future__ import annotations

import struct

from tracer.analysis import fairness, latency, plots, report, timeline
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_render(scenario, tmp_path):
    packets = assemble(load_events(scenario.both))
    docs = list(timeline.journeys(packets, [1, 2]))
    for path in (
        plots.plot_timeline(docs, tmp_path / "t.png"),
        plots.plot_latency(latency.analyze(packets), tmp_path / "l.png"),
        plots.plot_fairness(fairness.analyze(packets), tmp_path / "f.png"),
    ):
        w, h = _png_size(path)
        assert w > 600 and h > 300


def test_report_page(scenario, tmp_path):
    md = report.build(scenario.both, tmp_path / "rep")
    text = md.read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    for heading in ("## Captures", "## Sample packet timelines", "## Latency", "## Fairness"):
        assert heading in text
    assert "ambiguous" in text  # the scenario has wire duplicates
    for name in ("latency.png", "fairness.png", "timeline-1.png"):
        assert f"({name})" in text and (tmp_path / "rep" / name).exists() and name in html
    assert "<table>" in html and "DNAT first" in html


def test_lost_events_are_prominent(tmp_path):
    from tests.analysis.synthetic import NODE_B, Scenario, simulate

    sim = simulate(Scenario(connections=40, lost_events={NODE_B: 4321}, seed=2))
    paths = sim.write(tmp_path / "caps")
    text = report.build(list(paths.values()), tmp_path / "rep").read_text()
    warning = next(line for line in text.splitlines() if "LOST" in line)
    assert "4321" in warning and warning.startswith("> **WARNING:**")
    # before any section
    assert text.index("LOST") < text.index("## Captures")


def test_timeline_labels_stay_inside_the_axes():
    import numpy as np

    # Hops at both ends of a 100 us journey, labels 30 us wide, axes -7..109 us:
    # centred labels would run past both edges and be cut off in the PNG.
    x = np.array([0.0, 50.0, 100.0])
    lefts, rights, align = plots._label_extents(x, np.full(3, 30.0), -7.0, 109.0)
    assert align == ["left", "center", "right"]
    assert lefts.min() >= -7.0 and rights.max() <= 109.0
