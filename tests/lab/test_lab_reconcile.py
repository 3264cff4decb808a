"""What `lab up` decides before it touches anything: when the running
infrastructure cannot be kept, and which pods must go. Pure parts only (the
live checks run in test_lab_lifecycle.py); no root needed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tracer.kube.manifest import load_manifest
from tracer.lab import netdev, reconcile
from tracer.lab.build import with_nginx_pid
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan


@pytest.fixture(scope="module")
def want():
    return make_plan(load_manifest(DEFAULT_MANIFEST))


def test_pids_and_rule_digests_are_not_topology(want):
    running = replace(
        want,
        tor=replace(want.tor, bird=replace(want.tor.bird, pid=4242)),
        nodes=tuple(replace(n, bird=replace(n.bird, pid=7), rules_digest="ab") for n in want.nodes),
    )
    assert reconcile._sans_runtime(running) == reconcile._sans_runtime(want)


def test_a_moved_node_is_a_topology_change(want, monkeypatch):
    def no_live_checks(*args, **kwargs):
        raise AssertionError("a changed topology needs no live check")

    monkeypatch.setattr(netdev, "existing_netns", no_live_checks)
    moved = replace(want, nodes=(replace(want.nodes[0], ip="192.168.64.99"), *want.nodes[1:]))
    assert reconcile.infra_problem(moved, want) == "topology changed"


def test_a_pod_not_wanted_or_changed_goes(want):
    running = with_nginx_pid(want.pods[0], 1234)
    assert reconcile._pod_problem(running, None, set(), {}) == "not wanted"
    other_ports = replace(want.pods[0], ports=(8080,))
    assert reconcile._pod_problem(running, other_ports, set(), {}) == "spec changed"
    assert reconcile._pod_problem(running, want.pods[0], set(), {}) == "namespace missing"
