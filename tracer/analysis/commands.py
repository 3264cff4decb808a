"""What each analysis command prints, as functions returning lines.

tracer/cli.py parses arguments and calls these; they load captures, run the
analysis and yield the text (or JSON) to print, raising TracerError subclasses
for anything the user can act on. Keeping them here keeps cli.py free of
work and lets tests call them without a terminal."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracer.analysis import correlate as correlate_mod
from tracer.analysis import fairness as fairness_mod
from tracer.analysis import fairness_text
from tracer.analysis import latency as latency_mod
from tracer.analysis import timeline as timeline_mod
from tracer.analysis.events import load_events, no_events_note
from tracer.analysis.flows import parse_flow
from tracer.analysis.packets import assemble
from tracer.errors import TracerError, UsageError
from tracer.option_checks import plot_file, seconds


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to null, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    return json.dumps(_clean(value), **kwargs)


def _note_no_events(captures: Sequence[str | Path], notes: list[str] | None) -> None:
    """Captures without events are valid: say so once (stderr), exit 0."""
    note = no_events_note(captures)
    if note and notes is not None:
        notes.append(note)


def timeline(
    captures: Sequence[str | Path],
    *,
    packet: int | None = None,
    flow: str | None = None,
    limit: int = 20,
    as_json: bool = False,
    plot: str | Path | None = None,
    notes: list[str] | None = None,
) -> Iterator[str]:
    """Journeys of the selected packets: text blocks, or one JSON object per packet.
    Messages meant for stderr (truncation) are appended to `notes`."""
    if flow is not None:
        parse_flow(flow)  # a malformed --flow fails before any file is read
    if plot:
        plot_file(plot)
    if limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    packets = timeline_mod.packets_of(captures)
    if not packets.count:  # no packet to show or to select
        _note_no_events(captures, notes)
        return
    ids = timeline_mod.select(packets, packet=packet, flow=flow)
    if not len(ids):
        raise TracerError(f"no packet in these captures matches --flow {flow}")
    total = len(ids)
    if limit and total > limit:
        ids = ids[:limit]
        if notes is not None:
            notes.append(f"showing {limit} of {total} packets (--limit 0 for all)")
    if plot:
        from tracer.analysis.plots import plot_timeline

        plot_timeline(list(timeline_mod.journeys(packets, ids[:6])), plot)
        if notes is not None:
            notes.append(f"timeline plot of {min(len(ids), 6)} packet(s) written to {plot}")
    if not as_json and len(packets.clocks.nodes) > 1:
        yield "clocks: " + "; ".join(packets.clocks.summary())
        yield ""
    for doc in timeline_mod.journeys(packets, ids):
        if as_json:
            yield json.dumps(doc)  # journeys hold plain Python values only
        else:
            yield timeline_mod.format_journey(doc)
            yield ""


def latency(
    captures: Sequence[str | Path],
    *,
    as_json: bool = False,
    plot: str | Path | None = None,
    notes: list[str] | None = None,
) -> Iterator[str]:
    if plot:
        plot_file(plot)  # before the captures are read
    packets = assemble(load_events(captures))
    report = latency_mod.analyze(packets)
    if plot:
        from tracer.analysis.plots import plot_latency

        plot_latency(report, plot)
    if as_json:
        yield to_json(report.to_dict(), indent=1)
    else:
        yield latency_mod.format_text(report)
    _note_no_events(captures, notes)


def fairness(
    captures: Sequence[str | Path],
    *,
    as_json: bool = False,
    plot: str | Path | None = None,
    window_s: float | None = None,
    confidence: float = 0.95,
    notes: list[str] | None = None,
) -> Iterator[str]:
    if window_s is not None:
        # At least a microsecond: times are whole nanoseconds, and a shorter
        # window holds one new connection at most, so it has no shares to
        # compare. At most a year (MAX_SECONDS): beyond any capture's span,
        # where a window is simply the whole capture.
        seconds(window_s, "--window", least=1e-6)
    if not 0 < confidence < 1:
        raise UsageError("--confidence must be between 0 and 1 (e.g. 0.95)")
    if plot:
        plot_file(plot)
    events = load_events(captures)
    source = (
        assemble(events) if len(events.nodes) > 1 else events
    )  # clocks matter only across nodes
    report = fairness_mod.analyze(
        source, window_ns=None if window_s is None else int(window_s * 1e9), confidence=confidence
    )
    if plot:
        if not report.overall.connections:
            raise TracerError("no new connections (DNAT decisions) to plot")
        from tracer.analysis.plots import plot_fairness

        plot_fairness(report, plot)
    if as_json:
        yield to_json(report.to_dict(), indent=1)
    else:
        yield fairness_text.format_text(report)
    _note_no_events(captures, notes)


def diagnose(
    captures: Sequence[str | Path], *, as_json: bool = False, notes: list[str] | None = None,
) -> Iterator[str]:
    from tracer.analysis import diagnose as diagnose_mod
    from tracer.analysis import diagnose_text

    result = diagnose_mod.diagnose(captures)
    if as_json:
        yield to_json(result.to_dict(), indent=1)
    else:
        yield diagnose_text.format_text(result)
    _note_no_events(captures, notes)


def correlate(
    captures: Sequence[str | Path],
    out: str | Path,
    *,
    force: bool = False,
    as_json: bool = False,
    notes: list[str] | None = None,
) -> Iterator[str]:
    result = correlate_mod.merge(captures, out, overwrite=force)
    _note_no_events(captures, notes)
    if as_json:
        yield to_json(result.to_dict(), indent=1)
        return
    yield f"merged {len(result.nodes)} nodes, {result.events} events -> {result.path}"
    yield from (f"  {line}" for line in result.clocks.summary())
    yield (
        f"  {result.links} cross-node packet hops matched, {result.ambiguous_links} ambiguous, "
        f"{result.causal_violations} out of causal order after correction"
    )


def export(
    capture: str | Path,
    pcap: str | Path,
    *,
    payload: str = "omit",
    notes: list[str] | None = None,
) -> Iterator[str]:
    from tracer.analysis.pcap import export_pcapng

    n = export_pcapng([capture], pcap, payload=payload)
    _note_no_events([capture], notes)
    yield f"wrote {n} packets (one per event) to {pcap}"


def report(
    captures: Sequence[str | Path], out_dir: str | Path, *, force: bool = False,
    notes: list[str] | None = None,
) -> Iterator[str]:
    from tracer.analysis.report import build

    md = build(captures, out_dir, force=force)
    _note_no_events(captures, notes)
    yield f"report written to {md} and {md.with_suffix('.html')}"
