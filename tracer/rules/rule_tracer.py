"""RuleTracer: trace the Service's packets through netfilter in one network
namespace, for as long as the `with` block runs.

    with RuleTracer("/run/netns/lab-node-a", keys) as tracer:
        for event in tracer.poll(timeout=0.5): ...
        print("\\n".join(w.line() for w in tracer.walks(events)))

On enter: refuse legacy xtables, subscribe to the trace group, then create
the owner table (so no traced packet comes before the reader listens). On
exit: delete the table; the kernel deletes it anyway when the control socket
closes, which covers SIGKILL. Sockets are made inside the namespace by the
calling thread, which tracer.netns.entered moves back before returning."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tracer import netns
from tracer.errors import TracerError
from tracer.rules import trace_table
from tracer.rules.legacy import check_not_legacy
from tracer.rules.nfnetlink import NfnlSocket
from tracer.rules.rule_text import RuleTexts, run_program
from tracer.rules.trace_events import TraceEvent
from tracer.rules.trace_reader import TraceReader
from tracer.rules.trace_table import Key
from tracer.rules.walk import Walk, build_walks


def table_name(pid: int | None = None) -> str:
    return f"tracer_{os.getpid() if pid is None else pid}"


class RuleTracer:
    def __init__(self, netns_path: str | os.PathLike[str] | None, keys: Iterable[Key], *,
                 name: str | None = None, check_legacy: bool = True) -> None:
        self.netns_path = Path(netns_path) if netns_path is not None else None
        self.keys = list(keys)
        self.name = name or table_name()
        self.check_legacy = check_legacy
        self.control: NfnlSocket | None = None
        self.reader: TraceReader | None = None
        self.texts = RuleTexts(runner=self._run)

    def _inside(self) -> contextlib.AbstractContextManager[None]:
        return netns.entered(self.netns_path) if self.netns_path else contextlib.nullcontext()

    def _run(self, argv: list[str]) -> str:
        with self._inside():
            return run_program(argv)

    def __enter__(self) -> RuleTracer:
        try:
            with self._inside():
                if self.check_legacy:
                    check_not_legacy(run_program)
                self.reader = TraceReader()
                self.control = NfnlSocket()
                trace_table.create(self.control, self.name, self.keys)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.control is not None:
            with contextlib.suppress(TracerError, OSError):
                trace_table.delete(self.control, self.name)
            self.control.close()  # and the kernel drops the table if delete failed
            self.control = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def replace_keys(self, keys: Iterable[Key]) -> None:
        """The Service's endpoints changed: trace these keys from now on."""
        assert self.control is not None, "RuleTracer used outside its with block"
        self.keys = list(keys)
        trace_table.replace_keys(self.control, self.name, self.keys)

    def fileno(self) -> int:
        assert self.reader is not None
        return self.reader.fileno()

    def poll(self, timeout: float = 0.0) -> list[TraceEvent]:
        """Trace events of other tables (ours only switches tracing on)."""
        assert self.reader is not None, "RuleTracer used outside its with block"
        return [e for e in self.reader.poll(timeout) if e.table != self.name]

    def events(self, timeout: float = 0.2) -> Iterator[TraceEvent]:
        """Events as they come, forever (stop by leaving the loop)."""
        while True:
            yield from self.poll(timeout)

    @property
    def overruns(self) -> int:
        """Times the kernel dropped trace messages for want of buffer (ENOBUFS)."""
        return self.reader.overruns if self.reader else 0

    def text_of(self, family: int, table: str, chain: str, handle: int | None) -> str | None:
        return self.texts.lookup(family, table, chain, handle)

    def walks(self, events: Iterable[TraceEvent]) -> list[Walk]:
        return build_walks(events, self.text_of, skip_tables=[self.name])
