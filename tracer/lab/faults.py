"""Faults the lab injects on request, made with the kernel mechanism that
makes them in a real cluster (a filter rule, a withdrawn BGP route, ...),
never a fake drop.

A fault kind is one small FaultKind (tracer/lab/fault_kinds.py): what it
needs (a node, a pod), how to apply it, how to take it back, and how to see
that it is still in effect. This module keeps the record of the active ones
(faults.json in the lab's run directory, 0600) and applies, lists and
clears them; `tracer lab down` removes the run directory, and with it every
fault (the namespaces they lived in are gone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracer.errors import LabError, UsageError
from tracer.lab.state import LabState, Pod

FAULTS_FILE = "faults.json"
# The node of a fault that every node's kernel holds (a Service's rules).
CLUSTER = "all nodes"


@dataclass(frozen=True)
class Fault:
    """One applied fault: its kind, where, and what applying it did (the
    kind's own record, enough to take it back)."""

    kind: str
    node: str  # the node whose kernel holds the fault
    pod: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"{self.node}" + (f", pod {self.pod}" if self.pod else "")
        return f"{self.kind} on {where}"


@dataclass(frozen=True)
class FaultKind:
    name: str
    family: str  # filtering, routing, nat, conntrack, neighbour
    summary: str  # what a user sees
    # Where the fault goes when the user does not say: the pod or node to use.
    default_target: Callable[[LabState], tuple[str, str | None]]
    apply: Callable[[LabState, str, Pod | None], dict[str, Any]]
    remove: Callable[[LabState, Fault], None]
    in_effect: Callable[[LabState, Fault], bool]
    needs_pod: bool = False
    cluster_wide: bool = False  # every node at once: --node and --pod make no sense
    # How `tracer demo --fault` shows it: the lab's encapsulation it needs,
    # and the URL path whose responses it breaks.
    demo_encap: str = "none"
    demo_path: str = "/"


def last_node(state: LabState) -> tuple[str, str | None]:
    """A default target: the last node (node B), no pod."""
    return state.nodes[-1].name, None


def _faults_path(state: LabState) -> Path:
    return Path(state.run_dir) / FAULTS_FILE


def active(state: LabState) -> list[Fault]:
    """The faults recorded as applied, oldest first."""
    path = _faults_path(state)
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        return [Fault(**f) for f in doc["faults"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{path}: unreadable fault record ({exc})") from None


def _save(state: LabState, faults: list[Fault]) -> None:
    path = _faults_path(state)
    tmp = path.with_name(f".{FAULTS_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"faults": [asdict(x) for x in faults]}, f, indent=1)
    os.replace(tmp, path)


def _target(state: LabState, kind: FaultKind, node: str | None, pod: str | None
            ) -> tuple[str, Pod | None]:
    """(node name, pod) the fault applies to, from what the user named."""
    if kind.cluster_wide:
        if node is not None or pod is not None:
            raise UsageError(f"{kind.name} acts on every node: give neither --node nor --pod")
        return CLUSTER, None
    if pod is not None:
        p = state.pod(pod)
        if node is not None and state.node(node).name != p.node:
            raise UsageError(f"--pod {pod} runs on {p.node}, not on {node}")
        return p.node, p
    if node is not None:
        n = state.node(node).name
        if kind.needs_pod:
            pods = state.pods_on(n)
            if not pods:
                raise UsageError(f"{kind.name} needs a pod, and {n} runs none")
            return n, pods[0]
        return n, None
    n, pod_name = kind.default_target(state)
    return n, (state.pod(pod_name) if pod_name else None)


def add(state: LabState, kind_name: str, *, kinds: dict[str, FaultKind], node: str | None = None,
        pod: str | None = None) -> Fault:
    """Apply one fault of `kinds` (tracer.lab.fault_kinds.KINDS) and record
    it. A fault of the same kind already in place on the same target is an
    error (clear it first)."""
    kind = kinds.get(kind_name)
    if kind is None:
        raise UsageError(f"no fault {kind_name!r} (faults: {', '.join(sorted(kinds))})")
    node_name, target = _target(state, kind, node, pod)
    faults = active(state)
    pod_name = target.name if target is not None and kind.needs_pod else None
    if any(f.kind == kind.name and f.node == node_name and f.pod == pod_name for f in faults):
        raise UsageError(f"{kind.name} is already in effect on {node_name}: clear it first")
    detail = kind.apply(state, node_name, target)
    fault = Fault(kind.name, node_name, pod_name, detail)
    _save(state, [*faults, fault])
    return fault


def status(state: LabState, kinds: dict[str, FaultKind]) -> list[tuple[Fault, bool]]:
    """Each recorded fault and whether the kernel still shows it in effect
    (a fault undone by hand, or by `tracer lab up` rebuilding a node, is not)."""
    return [(f, f.kind in kinds and kinds[f.kind].in_effect(state, f)) for f in active(state)]


def clear(state: LabState, kind_name: str | None = None, *,
          kinds: dict[str, FaultKind]) -> list[Fault]:
    """Take back every fault (or those of one kind), newest first; returns them."""
    if kind_name is not None and kind_name not in kinds:
        raise UsageError(f"no fault {kind_name!r} (faults: {', '.join(sorted(kinds))})")
    faults = active(state)
    cleared = [f for f in faults if kind_name is None or f.kind == kind_name]
    for f in reversed(cleared):
        kinds[f.kind].remove(state, f)
        faults.remove(f)
        _save(state, faults)  # what is left stays recorded if a later removal fails
    return cleared

