"""One capture, start to end: resolve the Service from the node's own
kube-proxy rules, pick backends, load and attach the BPF, keep the in-kernel
filter in step with the Service, read events in bulk, write the capture file,
and summarize. Probes are detached on every way out; the kernel drops them by
itself if the process is killed (every attachment is a file descriptor)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import platform
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tracer import netns
from tracer.btf import Btf
from tracer.capfile import (
    HOOKS,
    PARQUET_OPTIONS,
    PROTO_NUMBERS,
    CaptureWriter,
    prepare_directory,
    write_meta,
)
from tracer.capture import scope as node_scope
from tracer.capture.backends import POINTS, parse_backend_option, select_backends
from tracer.capture.event_layout import EVENT_DTYPE, GATHER_CHUNK, EventColumns, EventDecoder
from tracer.capture.features import KernelFeatures
from tracer.capture.live import RateLimitedPrinter
from tracer.capture.offsets import drop_reason_names
from tracer.capture.program import LoadedProgram, ProgramSettings, load_and_attach
from tracer.capture.ringbuf import RingBufferReader
from tracer.capture.service_filter import ServiceKeyMap, service_keys
from tracer.capture.summary import CaptureSummary, render_summary
from tracer.errors import UsageError
from tracer.histograms import log2_buckets
from tracer.kube.resolved import ResolvedService
from tracer.kube.rules_source import find_service, read_kube_proxy_rules
from tracer.system import require_root

# bpf/tracer.h TRACER_STAT_*
STAT_EVENTS, STAT_LOST, STAT_FLOW_OVERFLOW, STAT_IPV6, STAT_NON_IP = 0, 1, 2, 3, 4
STAT_NAT_UNPAIRED, STAT_PARSE_ERROR, STAT_NAT_UNTIMED, STAT_LOST_BASE, STAT_NR = 5, 6, 7, 8, 16
HIST_HOOKS, HIST_SLOTS = 5, 32
# Events per decoded batch: 256k events, ~28 MB of columns, ~30 ms to decode.
BATCH_EVENTS = 1 << 18


@dataclass
class CaptureOptions:
    service: str
    netns: str | None = None
    node: str | None = None
    output: Path | None = None
    force: bool = False
    mode: str = "events"
    duration: float | None = None
    count: int | None = None
    quiet: bool = False
    backend: str | None = None
    probes: tuple[str, ...] = POINTS
    client: str | None = None
    endpoint: str | None = None
    port: int | None = None
    proto: str | None = None
    ringbuf_mb: int = 16
    refresh_s: float = 2.0
    max_lines_per_s: int = 2000
    fault_nat_entry_one_in: int = 1  # tests only: ProgramSettings.nat_entry_one_in


@dataclass
class CaptureResult:
    summary: CaptureSummary
    stats: dict[str, Any]
    meta: dict[str, Any]
    text: str
    output: Path | None


@dataclass
class Callbacks:
    line: Callable[[str], None] = lambda s: None  # an event line (stdout)
    status: Callable[[str], None] = lambda s: None  # progress, every second (stderr)
    notice: Callable[[str], None] = lambda s: None  # something changed (stderr)
    ready: Callable[[str], None] = lambda s: None  # probes attached (stderr)


def _validate(opts: CaptureOptions) -> None:
    if opts.mode not in ("events", "hist"):
        raise UsageError(f"--mode must be events or hist, not {opts.mode!r}")
    for name in ("client", "endpoint"):
        value = getattr(opts, name)
        if value is not None:
            try:
                ipaddress.IPv4Address(value)
            except ValueError as exc:
                raise UsageError(f"--{name}: {value!r} is not an IPv4 address") from exc
    if opts.port is not None and not 0 < opts.port < 65536:
        raise UsageError(f"--port: {opts.port} is not a port number")
    if opts.proto is not None and opts.proto.lower() not in PROTO_NUMBERS:
        raise UsageError(f"--proto: {opts.proto!r} is not one of {', '.join(PROTO_NUMBERS)}")
    unknown = [p for p in opts.probes if p not in POINTS]
    if unknown:
        raise UsageError(f"--probes: unknown probe point {unknown[0]!r} (points: {', '.join(POINTS)})")
    if opts.duration is not None and opts.duration <= 0:
        raise UsageError("--duration must be positive")
    if opts.count is not None and opts.count <= 0:
        raise UsageError("--count must be positive")
    bad_size = not 1 <= opts.ringbuf_mb <= 1024 or opts.ringbuf_mb & (opts.ringbuf_mb - 1)
    if bad_size and opts.ringbuf_mb != 0:  # 0 = one page, for tests of loss accounting
        raise UsageError("--ringbuf-mb must be a power of two between 1 and 1024")
    if opts.fault_nat_entry_one_in < 1:
        raise UsageError("--fault-nat-entry-one-in must be at least 1")
    parse_backend_option(opts.backend)


def clock_offset() -> tuple[int, int]:
    """(CLOCK_REALTIME - CLOCK_MONOTONIC, uncertainty) in ns: the tightest of
    several monotonic/realtime/monotonic readings."""
    best = None
    for _ in range(9):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        rt = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m2 - m1 < best[1]:
            best = (rt - (m1 + m2) // 2, m2 - m1)
    assert best is not None
    return best[0], (best[1] + 1) // 2


class _Stopper:
    """Ends the capture on SIGINT, SIGTERM or SIGHUP (the handlers are restored after)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class CaptureSession:
    def __init__(self, opts: CaptureOptions, callbacks: Callbacks | None = None):
        _validate(opts)
        self.opts = opts
        self.cb = callbacks or Callbacks()
        self.t_start = time.monotonic()
        self.prog: LoadedProgram | None = None
        self.reader: RingBufferReader | None = None
        self.writer: CaptureWriter | None = None
        self.summary = CaptureSummary()
        self.service: ResolvedService | None = None
        self.service_history: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.events_written = 0
        self.key_map: ServiceKeyMap | None = None
        self.scope: node_scope.NodeScope | None = None
        self.stop_reason = ""

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

    def start(self) -> None:
        o = self.opts
        require_root("capturing")
        if o.netns:
            path = netns.resolve(o.netns)
            netns.enter(path)  # the whole process: rules, netlink, links are the node's
            node = o.node or path.name
            netns_info = {"path": str(path), "inode": netns.inode(path)}
        else:
            node = o.node or socket.gethostname()
            netns_info = {"path": "/proc/self/ns/net", "inode": netns.current_inode()}
        self.service = self._resolve_service()
        if o.output is not None:
            prepare_directory(o.output, overwrite=o.force)
        kf = KernelFeatures()
        btf = kf.btf or Btf.load()
        points = ("nat",) if o.mode == "hist" else tuple(p for p in POINTS if p in o.probes)
        backends = select_backends(kf, points, parse_backend_option(o.backend))
        self.scope = node_scope.discover(node)
        self.prog = load_and_attach(backends, self._settings(), btf, t_start=self.t_start)
        self._fill_scope()
        self.key_map = ServiceKeyMap(self.prog.table("svc_keys"), self.prog.settings.svc_keys_max)
        self.key_map.sync(service_keys(self.service, self.scope.local_addresses))
        self.service_history.append({"ts_ns": time.monotonic_ns(), "service": self.service.to_dict()})
        offset, uncertainty = clock_offset()
        self.decoder = EventDecoder(node, offset, self.scope.namespaces, drop_reason_names(btf))
        if o.mode == "events":
            rb = self.prog.settings.ringbuf_bytes
            self.reader = RingBufferReader(self.prog.table("events").map_fd, rb)
            self._warm_up()
        if o.output is not None:
            self.writer = CaptureWriter(o.output)
        self.meta = {
            "node": node,
            "hostname": socket.gethostname(),
            "kernel": platform.release(),
            "netns": netns_info,
            "backends": {p: b.name for p, b in backends.items()},
            "backend_targets": {p: b.target for p, b in backends.items()},
            "nat_hook_priorities": self.prog.nat_priorities,
            "mode": o.mode,
            "service": self.service.to_dict(),
            "filters": {k: v for k, v in (("client", o.client), ("endpoint", o.endpoint),
                                           ("port", o.port), ("proto", o.proto)) if v is not None},
            "clock": {"realtime_minus_monotonic_ns": offset, "uncertainty_ns": uncertainty},
            "started_ns": time.monotonic_ns(),
            "started_at": datetime.now(UTC).isoformat(),
            # *_s are relative to the session's start (CLOCK_MONOTONIC, also
            # recorded), so an outside observer can add the interpreter's
            # start and imports: bench/ measures from the command.
            "startup": {"compile_s": self.prog.compile_s, "first_attach_s": self.prog.first_attach_s,
                        "all_attached_s": self.prog.all_attached_s,
                        "session_start_monotonic_s": self.t_start},
        }
        self._write_meta(complete=False)
        described = ", ".join(f"{p}={b.describe()}" for p, b in backends.items())
        self.cb.ready(
            f"tracer: capturing {self.service.full_name} on {node} in {o.mode} mode "
            f"[{described}] ({self.prog.all_attached_s:.2f}s to attach); Ctrl-C to stop"
        )

    def _warm_up(self) -> None:
        """Decode, count and encode one full batch of empty events, once,
        before the first real one. The first pass costs ~0.2 s more than the
        next (pyarrow's compute functions, the Parquet writer, and the first
        touch of every buffer the allocator then keeps); paid here, while
        the ring buffer is still empty, instead of with 140k events queued
        behind it at a high rate."""
        cols = EventColumns(BATCH_EVENTS)
        zeros = np.zeros(GATHER_CHUNK, EVENT_DTYPE)
        while cols.room:
            cols.append(zeros[: cols.room])
        table = self.decoder.to_table(cols)
        CaptureSummary().add(table)
        pq.write_table(table, io.BytesIO(), **PARQUET_OPTIONS)

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
        table = self.prog.table("stats")
        counts = [int(sum(table.getvalue(table.Key(i)))) for i in range(STAT_NR)]
        return {
            "events_kernel": counts[STAT_EVENTS],
            "events_read": self.records_read,
            "events": self.events_written if self.writer else self.records_read,
            "lost": counts[STAT_LOST],
            "lost_by_probe": {p: counts[STAT_LOST_BASE + i + 1] for i, p in enumerate(POINTS_BY_ID)},
            "filter_overflow": counts[STAT_FLOW_OVERFLOW]
            + (self.key_map.overflow_total if self.key_map else 0),
            "ipv6_skipped": counts[STAT_IPV6],
            "non_ip_skipped": counts[STAT_NON_IP],
            "parse_errors": counts[STAT_PARSE_ERROR],
            "nat_unpaired": counts[STAT_NAT_UNPAIRED],
            "nat_untimed": counts[STAT_NAT_UNTIMED],
        }

    def read_histograms(self) -> list[dict[str, Any]]:
        assert self.prog is not None
        table = self.prog.table("nat_hist")
        out = []
        for h in range(HIST_HOOKS):
            for first in (0, 1):
                base = (h * 2 + first) * HIST_SLOTS
                slots = [int(sum(table.getvalue(table.Key(base + s)))) for s in range(HIST_SLOTS)]
                if any(slots):
                    out.append({"hook": HOOKS[h], "first": bool(first), "buckets": log2_buckets(slots)})
        return out

    def _sample_clock(self) -> None:
        """Keep a monotonic-to-realtime sample every 10 s: NTP may slew the
        wall clock during a long capture, and correlation across nodes wants
        the offset at the time of each packet."""
        now = time.monotonic_ns()
        samples = self.meta.setdefault("clock_samples", [])
        if not samples or now - samples[-1]["ts_ns"] >= 10_000_000_000:
            offset, uncertainty = clock_offset()
            samples.append({"ts_ns": now, "realtime_minus_monotonic_ns": offset,
                            "uncertainty_ns": uncertainty})

    def _write_meta(self, complete: bool) -> None:
        if self.opts.output is None or self.prog is None:
            return
        self._sample_clock()
        self.meta.update(
            stats=self.read_stats(),
            histograms={"nat_hook_ns": self.read_histograms()},
            service_history=self.service_history,
            scoped_netns={str(k): v for k, v in (self.scope.namespaces if self.scope else {}).items()},
            ended_ns=time.monotonic_ns(),
            ended_by=self.stop_reason,
            parts=self.writer.parts if self.writer else 0,
            complete=complete,
        )
        write_meta(self.opts.output, self.meta)

    def _refresh(self) -> None:
        """Pick up endpoint and pod changes (kube-proxy rewrites its rules;
        pods come and go)."""
        assert self.service is not None and self.key_map is not None
        try:
            fresh = self._resolve_service()
        except UsageError:
            return  # the service vanished: keep filtering on what it was
        self.scope = node_scope.discover(self.scope.node_name if self.scope else "")
        self._fill_scope()
        self.decoder.netns_names.update(self.scope.namespaces)
        if fresh != self.service:
            self.service = fresh
            self.key_map.sync(service_keys(fresh, self.scope.local_addresses))
            self.service_history.append({"ts_ns": time.monotonic_ns(), "service": fresh.to_dict()})
            self.meta["service"] = fresh.to_dict()
            eps = sum(len(p.endpoints) for p in fresh.ports)
            self.cb.notice(f"tracer: {fresh.full_name} changed: now {eps} endpoint(s)")

    def run(self, stopper: _Stopper) -> None:
        """Drain the ring buffer into column batches; decode a batch when it
        is full or has waited decode_every, append it to the open part, and
        complete a part (and refresh the metadata) every second. Decoding a
        batch of BATCH_EVENTS takes ~30 ms, so the ring is never left
        unread for long even at a million events a second."""
        o = self.opts
        printer = None if o.quiet else RateLimitedPrinter(self.cb.line, o.max_lines_per_s)
        deadline = None if o.duration is None else time.monotonic() + o.duration
        batch = EventColumns(BATCH_EVENTS)
        last_decode = last_flush = last_refresh = last_status = time.monotonic()
        decode_every = 1.0 if o.quiet else 0.1
        status_count = 0
        done = False
        while not done:
            now = time.monotonic()
            if stopper.event.is_set():
                done, self.stop_reason = True, stopper.reason
            elif deadline is not None and now >= deadline:
                done, self.stop_reason = True, f"--duration {o.duration:g}s"
            got = self.reader.read_into(batch) if self.reader is not None else 0
            if len(batch) and (done or not batch.room or now - last_decode >= decode_every):
                self._emit(batch, printer)
                batch = EventColumns(BATCH_EVENTS)
                last_decode = now
                if o.count is not None and self.summary.events >= o.count:
                    done, self.stop_reason = True, f"--count {o.count}"
            elif not len(batch):
                last_decode = now
            if done or now - last_flush >= 1.0:
                # Decode what was read before closing the part: a part then
                # holds everything up to now, so a SIGKILL loses at most the
                # last second (not the last second plus a decode interval).
                if len(batch) and not done:
                    self._emit(batch, printer)
                    batch = EventColumns(BATCH_EVENTS)
                    last_decode = now
                    if o.count is not None and self.summary.events >= o.count:
                        done, self.stop_reason = True, f"--count {o.count}"
                if self.writer is not None:
                    self.writer.end_part()
                self._write_meta(complete=False)
                last_flush = now
            if not done and now - last_refresh >= o.refresh_s:
                self._refresh()
                last_refresh = now
            if now - last_status >= 1.0:
                stats = self.read_stats()
                rate = (self.summary.events - status_count) / (now - last_status)
                self.cb.status(
                    f"tracer: {self.summary.events} events ({rate:.0f}/s), lost {stats['lost']}"
                )
                status_count, last_status = self.summary.events, now
            if not done and not got:
                if self.reader is not None:
                    self.reader.wait(0.05)
                else:
                    stopper.event.wait(0.2)
        if printer is not None:
            printer.close()

    def _emit(self, batch: EventColumns, printer: RateLimitedPrinter | None) -> None:
        """Decode one batch, count it, show it, and append it to the open part."""
        table = self.decoder.to_table(batch)
        if self.opts.count is not None:
            table = table.slice(0, max(self.opts.count - self.summary.events, 0))
        if not table.num_rows:
            return
        self.summary.add(table)
        if printer is not None:
            printer.emit(table)
        if self.writer is not None:
            self.writer.append(table)
            self.events_written += table.num_rows

    # -- ending -------------------------------------------------------------
    def finish(self) -> CaptureResult:
        """Detach, drain what the kernel already queued, flush, summarize."""
        assert self.prog is not None
        self.prog.detach()
        if self.reader is not None:
            while True:
                batch = EventColumns(BATCH_EVENTS)
                got = self.reader.read_into(batch)
                if not got:
                    break
                self._emit(batch, None)
        stats = self.read_stats()
        hists = self.read_histograms()
        if self.writer is not None:
            self.writer.close()
        self._write_meta(complete=True)
        meta = dict(self.meta, stats=stats, histograms={"nat_hook_ns": hists})
        self.summary.service = self.service.to_dict() if self.service else None
        elapsed = time.monotonic() - self.t_start
        title = (
            f"capture summary: {self.service.full_name if self.service else '?'} on "
            f"{self.meta.get('node')}, {elapsed:.1f}s, mode {self.opts.mode}, "
            f"ended by {self.stop_reason or 'an error'}"
        )
        if self.opts.output is not None:
            title += f", written to {self.opts.output}"
        text = render_summary(self.summary, title=title, stats=stats, kernel_histograms=hists,
                              show_kernel_histograms=self.opts.mode == "hist")
        return CaptureResult(self.summary, stats, meta, text, self.opts.output)

    def close(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
            self.reader = None
        if self.prog is not None:
            self.prog.close()
            self.prog = None


POINTS_BY_ID = ("rx", "tx", "nat", "drop")  # TRACER_PROBE_* order in bpf/tracer.h


def run_capture(opts: CaptureOptions, callbacks: Callbacks | None = None) -> CaptureResult:
    session = CaptureSession(opts, callbacks)
    with _Stopper() as stopper:
        try:
            session.start()
            session.run(stopper)
            return session.finish()
        finally:
            session.close()
