"""The capture's metadata document (_tracer_meta.json, tracer.capfile.meta):
what was captured where and how, the clocks, and the counters, rewritten
every second while the capture runs."""

from __future__ import annotations

import platform
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracer.capfile import write_meta

CLOCK_SAMPLE_EVERY_NS = 10_000_000_000


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


def initial_document(*, node: str, netns_info: dict[str, Any], backends: dict[str, Any],
                     nat_priorities: Any, mode: str, service: dict[str, Any],
                     filters: dict[str, Any], clock: tuple[int, int],
                     startup: dict[str, float]) -> dict[str, Any]:
    """The document as it stands once every probe is attached. backends:
    point -> Backend; startup: compile_s, first_attach_s, all_attached_s and
    session_start_monotonic_s, the *_s relative to the session's start
    (CLOCK_MONOTONIC, also recorded), so an outside observer can add the
    interpreter's start and imports: bench/ measures from the command."""
    offset, uncertainty = clock
    return {
        "node": node,
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "netns": netns_info,
        "backends": {p: b.name for p, b in backends.items()},
        "backend_targets": {p: b.target for p, b in backends.items()},
        "nat_hook_priorities": nat_priorities,
        "mode": mode,
        "service": service,
        "filters": filters,
        "clock": {"realtime_minus_monotonic_ns": offset, "uncertainty_ns": uncertainty},
        "started_ns": time.monotonic_ns(),
        "started_at": datetime.now(UTC).isoformat(),
        "startup": startup,
    }


def sample_clock(meta: dict[str, Any]) -> None:
    """Keep a monotonic-to-realtime sample every 10 s: NTP may slew the
    wall clock during a long capture, and correlation across nodes wants
    the offset at the time of each packet."""
    now = time.monotonic_ns()
    samples = meta.setdefault("clock_samples", [])
    if not samples or now - samples[-1]["ts_ns"] >= CLOCK_SAMPLE_EVERY_NS:
        offset, uncertainty = clock_offset()
        samples.append({"ts_ns": now, "realtime_minus_monotonic_ns": offset,
                        "uncertainty_ns": uncertainty})


def update_and_write(output: Path, meta: dict[str, Any], **fields: Any) -> None:
    """Sample the clock, set fields (counters, histograms, service history,
    parts, complete...) and rewrite the metadata file atomically."""
    sample_clock(meta)
    meta.update(fields)
    write_meta(output, meta)
