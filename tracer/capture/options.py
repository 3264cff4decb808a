"""What the user asked a capture to do, checked before anything is attached."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from tracer.capfile import PROTO_NUMBERS
from tracer.capfile.rolling import ON_FULL, RollPolicy
from tracer.capture.abi import POINTS
from tracer.capture.backends import parse_backend_option
from tracer.errors import UsageError
from tracer.option_checks import seconds


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
    # Where the CLI writes the summary document after the capture; the
    # session checks it can before attaching anything (writable_summary).
    summary_json: Path | None = None
    # --rules: record the netfilter rules the Service's packets walk
    # (nf_tables tracing; tracer.capture.rule_recorder). Opt-in: it costs.
    rules: bool = False
    # Long captures (tracer.capfile.rolling): bytes, or None for no bound.
    max_size: int | None = None
    on_full: str = "drop-oldest"
    keep: int | None = None
    segment_size: int = RollPolicy.segment_bytes
    segment_seconds: float = RollPolicy.segment_seconds

    @property
    def roll_policy(self) -> RollPolicy:
        return RollPolicy(segment_bytes=self.segment_size, segment_seconds=self.segment_seconds,
                          keep=self.keep, max_bytes=self.max_size, on_full=self.on_full)

    @property
    def points(self) -> tuple[str, ...]:
        """The probe points to attach, in POINTS order: --mode hist needs only nat."""
        return ("nat",) if self.mode == "hist" else tuple(p for p in POINTS if p in self.probes)

    @property
    def filters(self) -> dict[str, str | int]:
        """The narrowing filters given, as the metadata records them."""
        given = (("client", self.client), ("endpoint", self.endpoint), ("port", self.port),
                 ("proto", self.proto))
        return {k: v for k, v in given if v is not None}


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str, option: str) -> int:
    """'500M', '2G', '1.5GiB', '4096' -> bytes (powers of 1024)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{option}: {text!r} is not a size (e.g. 500M, 2G)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def _validate_rolling(opts: CaptureOptions) -> None:
    if opts.max_size is not None and opts.max_size < 1 << 20:
        raise UsageError("--max-size must be at least 1M")
    if opts.on_full not in ON_FULL:
        raise UsageError(f"--on-full must be one of {', '.join(ON_FULL)}")
    if opts.keep is not None and opts.keep < 1:
        raise UsageError("--keep must be at least 1")
    if opts.segment_size < 1 << 20:
        raise UsageError("--segment-size must be at least 1M")
    if not opts.segment_seconds >= 1:  # also NaN
        raise UsageError("--segment-seconds must be at least 1")


def validate_options(opts: CaptureOptions) -> None:
    """Raise UsageError for the first option that cannot work."""
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
    if opts.netns == "":  # not "the host": a variable that expanded to nothing
        raise UsageError("--netns: empty name (leave the option out to capture on the host)")
    unknown = [p for p in opts.probes if p not in POINTS]
    if unknown:
        raise UsageError(f"--probes: unknown probe point {unknown[0]!r} (points: {', '.join(POINTS)})")
    if not opts.probes:  # a capture that attaches nothing would sit and record nothing
        raise UsageError(f"--probes: no probe point given (points: {', '.join(POINTS)})")
    if opts.duration is not None:
        seconds(opts.duration, "--duration")  # nan would never end the capture
    if opts.count is not None and opts.count <= 0:
        raise UsageError("--count must be positive")
    bad_size = not 1 <= opts.ringbuf_mb <= 1024 or opts.ringbuf_mb & (opts.ringbuf_mb - 1)
    if bad_size and opts.ringbuf_mb != 0:  # 0 = one page, for tests of loss accounting
        raise UsageError("--ringbuf-mb must be a power of two between 1 and 1024")
    if opts.fault_nat_entry_one_in < 1:
        raise UsageError("--fault-nat-entry-one-in must be at least 1")
    _validate_rolling(opts)
    parse_backend_option(opts.backend)
