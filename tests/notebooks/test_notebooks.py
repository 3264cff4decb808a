"""Both notebooks run end to end on the sample capture shipped with them
(no root, no lab: what a user with a laptop and a clone gets)."""

from __future__ import annotations

import re

import pytest

from tests.notebooks.run import NAMES, NOTEBOOKS, execute
from tracer.analysis import assemble, fairness, load_events

SAMPLE = [NOTEBOOKS / "data" / "lab-sample" / n for n in ("lab-node-a", "lab-node-b")]


def test_sample_is_small_and_real():
    size = sum(f.stat().st_size for d in SAMPLE for f in d.iterdir())
    assert size < 400_000, f"the shipped sample grew to {size} bytes"
    events = load_events(SAMPLE)
    assert set(events.nodes) == {"lab-node-a", "lab-node-b"}
    for meta in events.node_meta.values():  # recorded by the engine, not synthesized
        assert meta["mode"] == "events" and meta["complete"] and meta["backends"]
        assert meta["stats"]["lost"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_shipped_sample(name, tmp_path):
    run = execute(name, None, tmp_path)
    assert not run.errors()
    assert run.images() >= 3
    for source in run.figure_cells():  # readable plots: every axis says what it shows
        assert "set_xlabel" in source and "set_ylabel" in source, source[:200]
    text = run.text()
    if name == "lb_fairness":
        report = fairness.analyze(assemble(load_events(SAMPLE)))
        m = re.search(r"^(\d+) DNAT choices$", text, re.M)
        assert m and int(m.group(1)) == report.overall.connections


def test_shipped_notebooks_say_how_to_record_a_capture():
    import nbformat

    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for command in ("tracer lab up", "tracer capture --svc nginx-demo-1 --netns lab-node-a",
                        "tracer lab traffic", "kill -INT", "TRACER_CAPTURES=", "tracer demo"):
            assert command in prose, (name, command)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "TRACER_CAPTURES" in params[0].source
