"""A packet's walk through one base chain, from its trace events, in words:

    nat PREROUTING -> KUBE-SERVICES -> KUBE-SVC-X -> KUBE-SEP-Y DNAT to 10.217.121.8:80 (handle 28)
    filter FORWARD -> cali-FORWARD -> cali-tw-cali1234 -> DROP (handle 7)

Pure functions over TraceEvents (no kernel, no root). The kernel reports,
per traced packet and base chain, one event for each rule that matched (its
verdict: continue, jump, goto, return, accept, drop, ...), one "return" when
a chain ends without a verdict, and one "policy" when the base chain's end is
reached. Events of one packet share a trace id; packets on other CPUs may
interleave, so walks are kept apart by trace id, then by table."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tracer.rules.trace_events import TraceEvent

TextOf = Callable[[int, str, str, int | None], str | None]  # (family, table, chain, handle)


@dataclass(frozen=True)
class Step:
    chain: str
    handle: int | None
    verdict: str | None
    target: str | None
    text: str | None


@dataclass
class Walk:
    trace_id: int
    family: int
    table: str
    base_chain: str
    first: TraceEvent  # carries the packet's tuple
    steps: list[Step] = field(default_factory=list)
    frames: list[list[str]] = field(default_factory=list)
    verdict: str | None = None  # accept, drop, ... or None while unfinished
    by_policy: bool = False
    final: Step | None = None

    @property
    def path(self) -> list[str]:
        return [chain for frame in self.frames for chain in frame]

    @property
    def done(self) -> bool:
        return self.verdict is not None

    def line(self) -> str:
        return format_walk(self)


def _is_implicit_return(event: TraceEvent) -> bool:
    """A chain's rules ran out. Kernels report it as type "return", or (6.x)
    as a "rule" event with no handle and verdict continue."""
    return event.type == "return" or (
        event.type == "rule" and event.handle is None and event.verdict in (None, "continue"))


def _apply(walk: Walk, event: TraceEvent, text_of: TextOf | None) -> None:
    if event.type == "policy":
        walk.verdict, walk.by_policy = event.policy or "accept", True
        return
    if _is_implicit_return(event):
        if len(walk.frames) > 1:
            walk.frames.pop()
        return
    text = text_of(event.family, event.table, event.chain, event.handle) if text_of else None
    step = Step(event.chain, event.handle, event.verdict, event.target, text)
    walk.steps.append(step)
    if event.verdict == "jump" and event.target:
        walk.frames.append([event.target])
    elif event.verdict == "goto" and event.target:
        walk.frames[-1].append(event.target)
    elif event.verdict == "return" and len(walk.frames) > 1:
        walk.frames.pop()
    elif event.terminal:
        walk.verdict, walk.final = event.verdict, step


def build_walks(events: Iterable[TraceEvent], text_of: TextOf | None = None,
                skip_tables: Iterable[str] = ()) -> list[Walk]:
    """Events in the order read -> walks in the order they began. A walk
    whose events stopped coming (lost messages, or read before its end) is
    kept with verdict None."""
    skip = set(skip_tables)
    walks: list[Walk] = []
    open_walks: dict[int, Walk] = {}
    for event in events:
        if event.table in skip:
            continue
        walk = open_walks.get(event.trace_id)
        if walk is None or walk.done or walk.table != event.table or walk.family != event.family:
            walk = Walk(event.trace_id, event.family, event.table, event.chain, event,
                        frames=[[event.chain]])
            open_walks[event.trace_id] = walk
            walks.append(walk)
        _apply(walk, event, text_of)
    return walks


_IPT_TARGET = re.compile(r"-j (\S+)(.*)$")
_NFT_NAT = re.compile(r"\b(dnat|snat)(?: ip)? to (\S+)")
_REJECT_WITH = re.compile(r"(?:--reject-with|reject with \S+ type|reject with) (\S+)")


def action(verdict: str | None, text: str | None) -> str:
    """What the final rule did, from its text when known: "DNAT to ip:port",
    "REJECT icmp-port-unreachable", "DROP", ...; else the bare verdict."""
    if text:
        if text.startswith("-A "):
            found = _IPT_TARGET.search(text)
            if found:
                target, rest = found.group(1), found.group(2)
                if target == "DNAT" and "--to-destination" in rest:
                    return "DNAT to " + rest.split("--to-destination", 1)[1].split()[0]
                if target == "SNAT" and "--to-source" in rest:
                    return "SNAT to " + rest.split("--to-source", 1)[1].split()[0]
                with_ = _REJECT_WITH.search(rest) if target == "REJECT" else None
                return f"REJECT {with_.group(1)}" if with_ else target
        nat = _NFT_NAT.search(text)
        if nat:
            return f"{nat.group(1).upper()} to {nat.group(2)}"
        for word in ("masquerade", "reject", "drop", "accept", "queue"):
            if re.search(rf"\b{word}\b", text):
                with_ = _REJECT_WITH.search(text) if word == "reject" else None
                return f"REJECT {with_.group(1)}" if with_ else word.upper()
    return (verdict or "?").upper()


def format_walk(walk: Walk) -> str:
    path = " -> ".join(walk.path)
    head = f"{walk.table} {path}"
    if walk.verdict is None:
        return f"{head} -> (walk incomplete)"
    if walk.by_policy:
        return f"{head} -> policy {walk.verdict}"
    final = walk.final
    what = action(walk.verdict, final.text if final else None)
    handle = f" (handle {final.handle})" if final and final.handle is not None else ""
    # NAT targets name where the packet goes; bare verdicts end the path.
    joiner = " " if what.startswith(("DNAT", "SNAT", "MASQUERADE")) else " -> "
    return f"{head}{joiner}{what}{handle}"


def walk_lines(walk: Walk) -> list[str]:
    """format_walk, then one indented line per rule that matched, with its text."""
    lines = [format_walk(walk)]
    for step in walk.steps:
        verdict = step.verdict or "?"
        if step.target:
            verdict += f" {step.target}"
        lines.append(f"    {step.chain} #{step.handle}: {step.text or '(rule text unknown)'}  [{verdict}]")
    return lines
