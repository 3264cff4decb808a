"""`tracer capture --rules`: the netfilter rules the Service's packets walk,
recorded beside the events.

tracer.rules.RuleTracer switches nf_tables tracing on for the Service's
packets (an owner table: gone with the process, even after SIGKILL) and
reads the trace events; this records each with the text of the rule it
names, as the rules read now (tracer.capfile.rule_trace), and prints each
finished walk when the capture prints its events. Trace messages the kernel
could not queue for want of socket buffer are counted (``lost``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import IO, Any

from tracer.capfile.rule_trace import write_record
from tracer.rules import RuleTracer, TraceEvent, build_walks, format_walk, table_name
from tracer.rules.trace_table import Key

PENDING_MAX = 4096  # unfinished walks kept (dicts keep insertion order: oldest first)


class RuleRecorder:
    def __init__(self, keys: Iterable[Key], out: IO[str] | None,
                 show: Callable[[str], None] | None) -> None:
        self.tracer = RuleTracer(None, keys)  # the namespace the capture entered
        self.out = out
        self.show = show
        self.events = 0
        self.walks = 0
        self._pending: dict[int, list[TraceEvent]] = {}

    def __enter__(self) -> RuleRecorder:
        try:
            self.tracer.__enter__()
        except BaseException:
            if self.out is not None:
                self.out.close()
                self.out = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def replace_keys(self, keys: Iterable[Key]) -> None:
        self.tracer.replace_keys(keys)

    def pump(self) -> int:
        """Record what the kernel traced since the last call; returns how many."""
        got = self.tracer.poll(0.0)
        for event in got:
            text = (self.tracer.text_of(event.family, event.table, event.chain, event.handle)
                    if event.handle is not None else None)
            if self.out is not None:
                write_record(self.out, {**dataclasses.asdict(event), "text": text})
            self._walk(event)
        self.events += len(got)
        return len(got)

    def _walk(self, event: TraceEvent) -> None:
        """Count (and show) a packet's walk of a base chain when it ends."""
        pending = self._pending.setdefault(event.trace_id, [])
        pending.append(event)
        if len(self._pending) > PENDING_MAX:  # walks whose end was lost
            self._pending.pop(next(iter(self._pending)))
        if not event.terminal:
            return
        walk = build_walks(pending, self.tracer.text_of)[-1]  # texts are cached
        del self._pending[event.trace_id]
        self.walks += 1
        if self.show is not None:
            tuple_text = f"{walk.first.src}:{walk.first.sport} -> {walk.first.dst}:{walk.first.dport}"
            self.show(f"rules  {tuple_text}  {format_walk(walk)}")

    @property
    def lost(self) -> int:
        return self.tracer.overruns

    def stats(self) -> dict[str, Any]:
        return {"table": table_name(), "events": self.events, "walks": self.walks,
                "lost": self.lost}

    def close(self) -> None:
        if self.out is not None:
            self.out.flush()
        self.tracer.close()
        if self.out is not None:
            self.out.close()
            self.out = None
