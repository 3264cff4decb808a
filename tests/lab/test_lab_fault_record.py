"""The fault record (tracer/lab/faults.py) without a lab: which target a
fault gets, what is recorded and taken back, in which order, and the errors.
The kinds here are stand-ins that only note what they were asked; the real
kinds run against the real lab in test_lab_faults.py."""

from __future__ import annotations

import stat

import pytest

from tracer.errors import UsageError
from tracer.kube.manifest import load_manifest
from tracer.lab import faults
from tracer.lab.fault_kinds import KINDS
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan


@pytest.fixture
def state(tmp_path):
    return make_plan(load_manifest(DEFAULT_MANIFEST), run_dir=tmp_path)


def _stand_in(name: str, calls: list, *, needs_pod: bool = False) -> faults.FaultKind:
    live: set[tuple] = set()

    def apply(state, node, pod):
        calls.append(("apply", name, node, pod.name if pod else None))
        live.add((node, pod.name if pod else None))
        return {"n": len(calls)}

    def remove(state, fault):
        calls.append(("remove", name, fault.node, fault.pod))
        live.discard((fault.node, fault.pod))

    return faults.FaultKind(
        name=name, family="filtering", summary="stand-in",
        default_target=lambda s: (s.nodes[-1].name, s.pods_on(s.nodes[-1].name)[0].name),
        apply=apply, remove=remove, in_effect=lambda s, f: (f.node, f.pod) in live,
        needs_pod=needs_pod)


def test_add_records_the_target_and_clear_takes_back_newest_first(state):
    calls: list = []
    kinds = {"one": _stand_in("one", calls, needs_pod=True), "two": _stand_in("two", calls)}
    last_node, first_pod = state.nodes[-1].name, state.pods_on(state.nodes[-1].name)[0].name
    a = faults.add(state, "one", kinds=kinds)
    b = faults.add(state, "two", node="a", kinds=kinds)
    assert (a.node, a.pod, b.node, b.pod) == (last_node, first_pod, state.nodes[0].name, None)
    assert faults.active(state) == [a, b]
    assert faults.status(state, kinds) == [(a, True), (b, True)]
    path = faults._faults_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert faults.clear(state, kinds=kinds) == [a, b]
    assert [c[:2] for c in calls[2:]] == [("remove", "two"), ("remove", "one")]
    assert faults.active(state) == []


def test_clear_one_kind_keeps_the_others(state):
    calls: list = []
    kinds = {"one": _stand_in("one", calls, needs_pod=True), "two": _stand_in("two", calls)}
    a = faults.add(state, "one", kinds=kinds)
    b = faults.add(state, "two", kinds=kinds)
    assert faults.clear(state, "one", kinds=kinds) == [a]
    assert faults.active(state) == [b]


def test_a_pod_names_its_node(state):
    calls: list = []
    kinds = {"one": _stand_in("one", calls, needs_pod=True)}
    pod = state.pods[0]
    fault = faults.add(state, "one", pod=pod.name, kinds=kinds)
    assert (fault.node, fault.pod) == (pod.node, pod.name)
    other = next(n.name for n in state.nodes if n.name != pod.node)
    with pytest.raises(UsageError, match=f"runs on {pod.node}, not on"):
        faults.add(state, "one", pod=pod.name, node=other, kinds=kinds)


@pytest.mark.parametrize("call, message", [
    (lambda s, k: faults.add(s, "nope", kinds=k), "no fault 'nope'"),
    (lambda s, k: faults.add(s, "one", pod="nope", kinds=k), "no lab pod 'nope'"),
    (lambda s, k: faults.add(s, "one", node="z", kinds=k), "no lab node 'z'"),
    (lambda s, k: faults.clear(s, "nope", kinds=k), "no fault 'nope'"),
])
def test_bad_names_are_usage_errors(state, call, message):
    kinds = {"one": _stand_in("one", [], needs_pod=True)}
    with pytest.raises(UsageError, match=message):
        call(state, kinds)
    assert faults.active(state) == []


def test_the_same_fault_twice_is_refused(state):
    kinds = {"one": _stand_in("one", [], needs_pod=True)}
    faults.add(state, "one", kinds=kinds)
    with pytest.raises(UsageError, match="already in effect"):
        faults.add(state, "one", kinds=kinds)


def test_the_shipped_kinds_name_their_family():
    assert {"policy-drop", "route-withdrawn", "wrong-target-port", "no-endpoints", "mtu-blackhole",
            "rp-filter"} <= set(KINDS)
    assert all(k.family in ("filtering", "routing", "nat", "conntrack", "neighbour")
               for k in KINDS.values())


def test_a_cluster_wide_fault_takes_no_node_nor_pod(state):
    calls: list = []
    kind = _stand_in("svc", calls)
    kinds = {"svc": faults.FaultKind(**{**kind.__dict__, "cluster_wide": True})}
    for where in ({"node": "a"}, {"pod": state.pods[0].name}):
        with pytest.raises(UsageError, match="acts on every node"):
            faults.add(state, "svc", kinds=kinds, **where)
    fault = faults.add(state, "svc", kinds=kinds)
    assert (fault.node, fault.pod) == (faults.CLUSTER, None) and calls[-1][2] == faults.CLUSTER
    assert fault.describe() == "svc on all nodes"
