"""Which namespaces `lab down` removes, and in what order. Pure parts only
(the teardown itself runs in test_lab_lifecycle.py); no root needed."""

from __future__ import annotations

from tracer.kube.manifest import load_manifest
from tracer.lab import netdev, teardown
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan


def test_lab_namespaces_pods_first_others_left_alone(monkeypatch):
    present = {"lab-tor", "lab-client", "lab-node-a", "lab-node-b", "lab-pod-x", "lab-old", "other"}
    monkeypatch.setattr(netdev, "existing_netns", lambda: set(present))
    assert teardown._lab_netns_present(None) == [
        "lab-pod-x", "lab-client", "lab-node-a", "lab-node-b", "lab-tor"]


def test_the_states_own_namespaces_are_removed_too(monkeypatch):
    state = make_plan(load_manifest(DEFAULT_MANIFEST))
    present = {"lab-tor", *(p.netns for p in state.pods), "other"}
    monkeypatch.setattr(netdev, "existing_netns", lambda: set(present))
    names = teardown._lab_netns_present(state)
    assert names == [*sorted(p.netns for p in state.pods), "lab-tor"]
