"""Shared fixtures and the `root` marker rule for the whole test suite.

- Tests marked `root` FAIL (never skip) when not run as root: a CI run
  without privileges must not pass silently.
- `lab` (session): the network-namespace lab of tracer/lab, brought up once
  for the session and taken down at its end (TRACER_LAB_KEEP=1 keeps it).
- `lab_state` (function): the lab as it runs now, repaired first if an earlier
  test broke it (a no-op `up` when nothing is wrong, ~20 ms).
- `lab_reup` (function): re-`up` with other replicas or another manifest;
  the default lab is restored afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail(f"{item.nodeid} needs root (marked root): run the tests as root",
                    pytrace=False)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root", pytrace=False)


@pytest.fixture(scope="session")
def lab() -> Iterator:
    """The lab, up for the whole session: a tracer.lab.state.LabState.

    Tests that break or change the lab must put it back (`lab_reup` does,
    `lab_state` repairs); the object's pids may be stale after such tests,
    so take `lab_state` when pids matter."""
    _need_root("the lab fixture")
    from tracer.lab import controller

    result = controller.up()
    yield result.state
    if not os.environ.get("TRACER_LAB_KEEP"):
        controller.down()


@pytest.fixture
def lab_state(lab) -> object:
    """The running lab's current LabState (re-`up`ed first: repairs, or no-op)."""
    from tracer.lab import controller

    return controller.up().state


@pytest.fixture
def lab_reup(lab) -> Iterator[Callable[..., object]]:
    """reup(replicas=None, manifest=None) -> LabState; restores the default
    lab (shipped manifest, its own replicas) after the test."""
    from tracer.lab import controller

    def reup(replicas: int | None = None, manifest: str | None = None):
        return controller.up(manifest, replicas).state

    yield reup
    controller.up()
