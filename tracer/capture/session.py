"""One capture, start to end: resolve the Service from the node's own
kube-proxy rules, pick backends, load and attach the BPF, keep the in-kernel
filter in step with the Service, read events in bulk, write the capture file,
and summarize. Probes are detached on every way out; the kernel drops them by
itself if the process is killed (every attachment is a file descriptor).

The jobs it strings together live beside it: options.py (what was asked),
program.py (compile, load, attach), ringbuf.py and decode.py (events out of
the kernel), sink.py (where they go), counters.py (the kernel's counters),
metadata.py (the metadata document), stopper.py (signals)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer import netns
from tracer.btf import Btf
from tracer.capfile import PROTO_NUMBERS, CaptureWriter, prepare_directory
from tracer.capfile.rule_trace import RULES_FILE
from tracer.capture import metadata
from tracer.capture import scope as node_scope
from tracer.capture.backends import parse_backend_option, select_backends
from tracer.capture.counters import read_kernel_counters, read_nat_histograms, stats_document
from tracer.capture.decode import EventColumns, EventDecoder
from tracer.capture.features import KernelFeatures
from tracer.capture.live import READY_PREFIX, RateLimitedPrinter
from tracer.capture.offsets import drop_reason_names
from tracer.capture.options import CaptureOptions, validate_options
from tracer.capture.program import LoadedProgram, ProgramSettings, load_and_attach
from tracer.capture.ringbuf import RingBufferReader
from tracer.capture.rule_recorder import RuleRecorder
from tracer.capture.service_filter import ServiceKeyMap, ipv6_addresses, service_keys
from tracer.capture.sink import BATCH_EVENTS, EventSink
from tracer.capture.stopper import Stopper
from tracer.capture.summary import CaptureSummary, dropped_line, render_summary
from tracer.errors import UsageError
from tracer.kube.resolved import ResolvedService
from tracer.kube.rules_source import find_service, read_kube_proxy_rules
from tracer.option_checks import writable_file
from tracer.safe_output import write_text
from tracer.system import require_root

__all__ = ["Callbacks", "CaptureOptions", "CaptureResult", "CaptureSession", "run_capture"]


@dataclass
class CaptureResult:
    summary: CaptureSummary
    stats: dict[str, Any]
    meta: dict[str, Any]
    text: str
    output: Path | None

    def summary_document(self) -> dict[str, Any]:
        """What --summary-json writes: the summary, the counters, and how the
        capture ran (backends, node, start-up times, NAT histograms)."""
        return {"summary": self.summary.to_dict(), "stats": self.stats,
                "backends": self.meta.get("backends"), "node": self.meta.get("node"),
                "startup": self.meta.get("startup"),
                "histograms": self.meta.get("histograms"),
                "dropped": self.meta.get("dropped", {})}

    def write_summary_json(self, path: Path) -> None:
        write_text(path, json.dumps(self.summary_document(), indent=1, default=str))


@dataclass
class Callbacks:
    line: Callable[[str], None] = lambda s: None  # an event line (stdout)
    status: Callable[[str], None] = lambda s: None  # progress, every second (stderr)
    notice: Callable[[str], None] = lambda s: None  # something changed (stderr)
    ready: Callable[[str], None] = lambda s: None  # probes attached (stderr)


class CaptureSession:
    """The capture's life cycle: start() resolves and attaches, run() reads
    until told to stop, finish() detaches and drains, close() frees."""

    def __init__(self, opts: CaptureOptions, callbacks: Callbacks | None = None):
        validate_options(opts)
        self.opts = opts
        self.cb = callbacks or Callbacks()
        self.t_start = time.monotonic()
        self.prog: LoadedProgram | None = None
        self.reader: RingBufferReader | None = None
        self.sink: EventSink | None = None
        self.service: ResolvedService | None = None
        self.service_history: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.key_map: ServiceKeyMap | None = None
        self.scope: node_scope.NodeScope | None = None
        self.rules: RuleRecorder | None = None
        self.stop_reason = ""

    @property
    def summary(self) -> CaptureSummary:
        return self.sink.summary if self.sink is not None else CaptureSummary()

    # -- set-up -------------------------------------------------------------
    def _resolve_service(self) -> ResolvedService:
        return find_service(read_kube_proxy_rules().services, self.opts.service)

    def _settings(self) -> ProgramSettings:
        o = self.opts
        keys = max(4096, 4 * len(service_keys(self.service, ["0.0.0.0"] * 4)))  # type: ignore[arg-type]
        return ProgramSettings(
            mode=o.mode,
            ringbuf_bytes=(o.ringbuf_mb << 20) if o.ringbuf_mb else 4096,
            svc_keys_max=keys,
            filter_proto=PROTO_NUMBERS[o.proto.lower()] if o.proto else None,
            filter_client=o.client,
            filter_endpoint=o.endpoint,
            filter_port=o.port,
            nat_entry_one_in=o.fault_nat_entry_one_in,
        )

    def _enter_node(self) -> tuple[str, dict[str, Any]]:
        """Become the node (its netns, for good: rules, netlink and links are
        the node's); returns its name and the namespace's identity."""
        o = self.opts
        if o.netns:
            path = netns.resolve(o.netns)
            netns.enter(path)
            return o.node or path.name, {"path": str(path), "inode": netns.inode(path)}
        return (o.node or socket.gethostname(),
                {"path": "/proc/self/ns/net", "inode": netns.current_inode()})

    def start(self) -> None:
        o = self.opts
        require_root("capturing")
        if o.summary_json is not None:  # known now, not after the capture
            writable_file(o.summary_json, "--summary-json")
        node, netns_info = self._enter_node()
        self.service = self._resolve_service()
        if ipv6_addresses(self.service):
            self.cb.notice(f"tracer: note: {self.service.full_name} is dual-stack; this capture "
                           "traces its IPv4 addresses only (IPv6 capture is not built yet)")
        if o.output is not None:
            prepare_directory(o.output, overwrite=o.force)
        kf = KernelFeatures()
        btf = kf.btf or Btf.load()
        backends = select_backends(kf, o.points, parse_backend_option(o.backend))
        self.scope = node_scope.discover(node)
        self.prog = load_and_attach(backends, self._settings(), btf, t_start=self.t_start)
        self._fill_scope()
        self.key_map = ServiceKeyMap(self.prog.table("svc_keys"), self.prog.settings.svc_keys_max)
        self.key_map.sync(service_keys(self.service, self.scope.local_addresses))
        self.service_history.append({"ts_ns": time.monotonic_ns(), "service": self.service.to_dict()})
        clock = metadata.clock_offset()
        decoder = EventDecoder(node, clock[0], self.scope.namespaces, drop_reason_names(btf))
        printer = None if o.quiet else RateLimitedPrinter(self.cb.line, o.max_lines_per_s)
        writer = CaptureWriter(o.output, policy=o.roll_policy) if o.output is not None else None
        self.sink = EventSink(decoder, writer, printer, o.count)
        if o.rules:
            self._start_rules(writer)
        if o.mode == "events":
            self.reader = RingBufferReader(self.prog.table("events").map_fd,
                                           self.prog.settings.ringbuf_bytes)
            self.sink.warm_up()
        self.meta = metadata.initial_document(
            node=node, netns_info=netns_info, backends=backends,
            nat_priorities=self.prog.nat_priorities, mode=o.mode, service=self.service.to_dict(),
            filters=o.filters, clock=clock,
            startup={"compile_s": self.prog.compile_s, "first_attach_s": self.prog.first_attach_s,
                     "all_attached_s": self.prog.all_attached_s,
                     "session_start_monotonic_s": self.t_start})
        # Bounds the programs were loaded with (rx_list_max: lowered where an
        # older verifier refused the receive-list loop; skbs past it are lost).
        self.meta["limits"] = {"rx_list_max": self.prog.settings.rx_list_max}
        self._write_meta(complete=False)
        described = ", ".join(f"{p}={b.describe()}" for p, b in backends.items())
        self.cb.ready(
            f"{READY_PREFIX} {self.service.full_name} on {node} in {o.mode} mode "
            f"[{described}] ({self.prog.all_attached_s:.2f}s to attach); Ctrl-C to stop"
        )

    def _start_rules(self, writer: CaptureWriter | None) -> None:
        """--rules: trace the Service's packets through netfilter (an owner
        table in this namespace; tracer.capture.rule_recorder)."""
        assert self.service is not None and self.scope is not None
        out = writer.open_side_file(RULES_FILE) if writer is not None else None
        keys = service_keys(self.service, self.scope.local_addresses)
        self.rules = RuleRecorder(keys, out, None if self.opts.quiet else self.cb.line)
        self.rules.__enter__()

    def _fill_scope(self) -> None:
        assert self.prog is not None and self.scope is not None
        table = self.prog.table("netns_allow")
        wanted = set(self.scope.namespaces)
        for k in list(table.keys()):
            if k.value not in wanted:
                del table[k]
        for ino in wanted:
            table[table.Key(ino)] = table.Leaf(1)

    # -- running ------------------------------------------------------------
    @property
    def records_read(self) -> int:
        return self.reader.records_read if self.reader is not None else 0

    def read_stats(self) -> dict[str, Any]:
        assert self.prog is not None
        writing = self.sink is not None and self.sink.writer is not None
        return stats_document(
            read_kernel_counters(self.prog), events_read=self.records_read,
            events=self.sink.events_written if writing else self.records_read,  # type: ignore[union-attr]
            filter_overflow_user=self.key_map.overflow_total if self.key_map else 0)

    def read_histograms(self) -> list[dict[str, Any]]:
        assert self.prog is not None
        return read_nat_histograms(self.prog)

    def _write_meta(self, complete: bool) -> None:
        if self.opts.output is None or self.prog is None:
            return
        writer = self.sink.writer if self.sink is not None else None
        metadata.update_and_write(
            self.opts.output, self.meta,
            stats=self.read_stats(),
            histograms={"nat_hook_ns": self.read_histograms()},
            service_history=self.service_history,
            scoped_netns={str(k): v for k, v in (self.scope.namespaces if self.scope else {}).items()},
            workloads=list(self.scope.workloads) if self.scope else [],
            **({"rules": self.rules.stats()} if self.rules is not None else {}),
            ended_ns=time.monotonic_ns(),
            ended_by=self.stop_reason,
            parts=writer.parts if writer else 0,
            files=writer.files if writer else 0,
            dropped=writer.dropped if writer else {},
            complete=complete,
        )

    def _refresh(self) -> None:
        """Pick up endpoint and pod changes (kube-proxy rewrites its rules;
        pods come and go)."""
        assert self.service is not None and self.key_map is not None and self.sink is not None
        try:
            fresh = self._resolve_service()
        except UsageError:
            return  # the service vanished: keep filtering on what it was
        self.scope = node_scope.discover(self.scope.node_name if self.scope else "")
        self._fill_scope()
        self.sink.decoder.netns_names.update(self.scope.namespaces)
        if fresh != self.service:
            self.service = fresh
            self.key_map.sync(service_keys(fresh, self.scope.local_addresses))
            if self.rules is not None:
                self.rules.replace_keys(service_keys(fresh, self.scope.local_addresses))
            self.service_history.append({"ts_ns": time.monotonic_ns(), "service": fresh.to_dict()})
            self.meta["service"] = fresh.to_dict()
            eps = sum(len(p.endpoints) for p in fresh.ports)
            self.cb.notice(f"tracer: {fresh.full_name} changed: now {eps} endpoint(s)")

    def _stop_reason(self, stopper: Stopper, deadline: float | None, now: float) -> str:
        """Why the capture should end now ('' to go on)."""
        if stopper.event.is_set():
            return stopper.reason
        if deadline is not None and now >= deadline:
            return f"--duration {self.opts.duration:g}s"
        writer = self.sink.writer if self.sink is not None else None
        if writer is not None and writer.full:
            return f"--max-size {self.opts.max_size} bytes reached (--on-full stop)"
        return ""

    def run(self, stopper: Stopper) -> None:
        """Drain the ring buffer into column batches; decode a batch when it
        is full or has waited decode_every, append it to the open part, and
        complete a part (and refresh the metadata) every second. Decoding a
        batch of BATCH_EVENTS takes ~30 ms, so the ring is never left
        unread for long even at a million events a second."""
        o, sink = self.opts, self.sink
        assert sink is not None
        deadline = None if o.duration is None else time.monotonic() + o.duration
        batch = EventColumns(BATCH_EVENTS)
        last_decode = last_flush = last_refresh = last_status = time.monotonic()
        decode_every = 1.0 if o.quiet else 0.1
        status_count = 0
        done = False
        while not done:
            now = time.monotonic()
            reason = self._stop_reason(stopper, deadline, now)
            if reason:
                done, self.stop_reason = True, reason
            got = self.reader.read_into(batch) if self.reader is not None else 0
            if self.rules is not None:
                self.rules.pump()
            # Decode a batch when it is full, has waited long enough, or the
            # capture ends; and before closing a part, so that a part holds
            # everything up to now and a SIGKILL loses at most the last
            # second (not the last second plus a decode interval).
            flushing = done or now - last_flush >= 1.0
            if len(batch) and (flushing or not batch.room or now - last_decode >= decode_every):
                sink.emit(batch)
                batch = EventColumns(BATCH_EVENTS)
                last_decode = now
                if sink.count_reached:
                    done, self.stop_reason = True, f"--count {o.count}"
                elif sink.output_closed:
                    done, self.stop_reason = True, "stdout closed by its reader"
            elif not len(batch):
                last_decode = now
            if flushing or done:
                if sink.writer is not None:
                    sink.writer.end_part()
                self._write_meta(complete=False)
                last_flush = now
            if not done and now - last_refresh >= o.refresh_s:
                self._refresh()
                last_refresh = now
            if now - last_status >= 1.0:
                rate = (sink.summary.events - status_count) / (now - last_status)
                self.cb.status(f"tracer: {sink.summary.events} events ({rate:.0f}/s), "
                               f"lost {self.read_stats()['lost']}")
                status_count, last_status = sink.summary.events, now
            if not done and not got:
                if self.reader is not None:
                    self.reader.wait(0.05)
                else:
                    stopper.event.wait(0.2)
        if sink.printer is not None:
            sink.printer.close()

    # -- ending -------------------------------------------------------------
    def _drain(self) -> None:
        """Read what the kernel queued before the probes were detached."""
        assert self.sink is not None
        if self.reader is None:
            return
        while True:
            batch = EventColumns(BATCH_EVENTS)
            if not self.reader.read_into(batch):
                return
            self.sink.emit(batch, show=False)

    def finish(self) -> CaptureResult:
        """Detach, drain what the kernel already queued, flush, summarize."""
        assert self.prog is not None and self.sink is not None
        self.prog.detach()
        self._drain()
        if self.rules is not None:
            self.rules.pump()
            self.rules.close()
        stats = self.read_stats()
        hists = self.read_histograms()
        if self.sink.writer is not None:
            self.sink.writer.close()
        self._write_meta(complete=True)
        meta = dict(self.meta, stats=stats, histograms={"nat_hook_ns": hists})
        summary = self.sink.summary
        summary.service = self.service.to_dict() if self.service else None
        elapsed = time.monotonic() - self.t_start
        title = (
            f"capture summary: {self.service.full_name if self.service else '?'} on "
            f"{self.meta.get('node')}, {elapsed:.1f}s, mode {self.opts.mode}, "
            f"ended by {self.stop_reason or 'an error'}"
        )
        if self.opts.output is not None:
            title += f", written to {self.opts.output}"
        text = render_summary(summary, title=title, stats=stats, kernel_histograms=hists,
                              show_kernel_histograms=self.opts.mode == "hist")
        dropped = meta.get("dropped")  # recorded by _write_meta from the writer
        if dropped:
            text += "\n" + dropped_line(dropped)
        if self.rules is not None:
            r = self.rules.stats()
            text += (f"\n  rules (--rules): {r['events']} nf_tables trace events, {r['walks']} "
                     f"walks of a base chain, {r['lost']} trace messages lost")
        return CaptureResult(summary, stats, meta, text, self.opts.output)

    def close(self) -> None:
        if self.rules is not None:
            with contextlib.suppress(Exception):
                self.rules.close()
            self.rules = None
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
            self.reader = None
        if self.prog is not None:
            self.prog.close()
            self.prog = None


def run_capture(opts: CaptureOptions, callbacks: Callbacks | None = None) -> CaptureResult:
    session = CaptureSession(opts, callbacks)
    with Stopper() as stopper:
        try:
            session.start()
            session.run(stopper)
            return session.finish()
        finally:
            session.close()
