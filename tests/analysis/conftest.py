"""Synthetic two-node captures of the seed scenario, generated once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.analysis.synthetic import NODE_A, NODE_B, Scenario, Simulation, simulate

OFFSET_B_NS = 7_300_000  # node B's UTC clock runs 7.3 ms ahead


@dataclass
class Captured:
    sim: Simulation
    paths: dict[str, Path]

    @property
    def both(self) -> list[Path]:
        return [self.paths[NODE_A], self.paths[NODE_B]]

    def truth_of_rows(self) -> np.ndarray:
        """Truth packet id per row of the combined frame (A's rows, then B's),
        the order tracer.analysis.events.load_events gives them."""
        return pd.concat([self.sim.events[NODE_A], self.sim.events[NODE_B]], ignore_index=True)[
            "_packet"
        ].to_numpy()


def _capture(tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs) -> Captured:
    sim = simulate(Scenario(**kwargs))
    return Captured(sim, sim.write(tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """Three clients (one keep-alive pinned), drops, wire duplicates, B 7.3 ms off."""
    return _capture(
        tmp_path_factory,
        "scenario",
        connections=400,
        rate_per_s=300,
        clients=("192.168.64.10", "192.168.64.11", "192.168.64.12"),
        pinned_clients={"192.168.64.12": 6},
        drop_fraction=0.03,
        duplicate_fraction=0.02,
        clock_error_ns={NODE_A: 0, NODE_B: OFFSET_B_NS},
        seed=11,
    )


@pytest.fixture(scope="session")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """No drops, no duplicates, both clocks right."""
    return _capture(tmp_path_factory, "clean", connections=60, seed=3)


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """A few dozen connections with drops and duplicates: for slow external tools."""
    return _capture(
        tmp_path_factory,
        "small",
        connections=30,
        requests_per_connection=3,
        drop_fraction=0.2,
        duplicate_fraction=0.1,
        clock_error_ns={NODE_A: 0, NODE_B: -2_000_000},
        seed=4,
    )


@pytest.fixture
def clean_lab(lab_state):
    """The lab with no fault in effect, before and after the test (whatever
    an interrupted run left is cleared first)."""
    from tracer.lab import controller

    controller.clear_faults()
    yield lab_state
    controller.clear_faults()
