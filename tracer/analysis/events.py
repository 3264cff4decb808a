"""Loads one or more captures into one normalized event table.

Every analysis works on the same frame: the capture's columns, plus addresses
as integer keys (tracer.analysis.addresses: IPv4 its 32-bit value, IPv6 a
registered key; uint32 columns when the events hold no IPv6, else int64;
``src``, ``dst``, ``nat_src``, ``nat_dst``, a tunnel's
``outer_src``, ``outer_dst``, an ICMP error's ``quoted_src``, ``quoted_dst``), the tuple *after* each
event (``out_*``: the NAT rewrite for nat events, unchanged otherwise), a
probe code, and ``t``: the event's UTC time in ns, later corrected by the
clock offsets that correlation estimates. Rows keep their capture order in
``row`` so ties are broken the way the ring buffer delivered them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import union_categoricals

from tracer.analysis.addresses import column_to_int, ints_to_strings, key_dtype
from tracer.capfile import COLUMN_NAMES, PROBES, SCHEMA, Capture, load, part_files, read_meta
from tracer.errors import CaptureFileError, UsageError

PROBE_RX, PROBE_TX, PROBE_NAT, PROBE_DROP = (PROBES.index(p) for p in ("rx", "tx", "nat", "drop"))

STRING_COLUMNS = ("node", "probe", "hook", "netns", "ifname", "nat_kind", "drop_reason", "encap")


@dataclass
class EventSet:
    """Events of one or more nodes, normalized, with each node's metadata."""

    events: pd.DataFrame
    node_meta: dict[str, dict[str, Any]]
    sources: list[Path] = field(default_factory=list)
    node_source: dict[str, Path] = field(default_factory=dict)  # node -> capture it came from

    @property
    def nodes(self) -> list[str]:
        return list(self.node_meta)


def load_events(paths: Sequence[str | Path]) -> EventSet:
    """Load captures (per-node or merged) into one EventSet. A node may appear
    in only one input: the same node twice would count its events twice."""
    if not paths:
        raise UsageError("no capture given")
    return from_captures([load(p) for p in paths])


def from_captures(captures: Iterable[Capture]) -> EventSet:
    frames, node_meta, sources, node_source = [], {}, [], {}
    for capture in captures:
        missing = [c for c in COLUMN_NAMES if c not in capture.events.columns]
        if missing:
            raise CaptureFileError(
                f"{capture.path}: not a tracer capture (missing columns {missing})"
            )
        for node, meta in nodes_of(capture).items():
            if node in node_meta:
                raise UsageError(
                    f"node {node!r} appears in more than one capture ({capture.path}); "
                    "give each node's capture once (a merged capture already holds its nodes)"
                )
            node_meta[node] = meta
            node_source[node] = capture.path
        frames.append(capture.events)
        sources.append(capture.path)
    events = normalize(concat_events(frames))
    for node in events["node"].cat.categories:
        # A merged capture lists its nodes; anything else is named by its events.
        node_meta.setdefault(str(node), {"node": str(node)})
    return EventSet(events=events, node_meta=node_meta, sources=sources, node_source=node_source)


def nodes_of(capture: Capture) -> dict[str, dict[str, Any]]:
    """node -> metadata. A merged capture carries each source node's metadata
    in merged_from; a per-node capture is its own."""
    merged = capture.meta.get("merged_from")
    if merged:
        return {str(m["node"]): {**m.get("meta", {}), "merged": m} for m in merged}
    node = capture.node or (
        str(capture.events["node"].iloc[0]) if len(capture.events) else capture.path.name
    )
    return {node: capture.meta}


def no_events_note(paths: Sequence[str | Path]) -> str | None:
    """The note for captures that hold metadata and no events, None if there
    are none. Such a capture is valid (a quiet Service; --mode hist records
    only histograms; a capture stopped before its first part): every
    command reads it, says so in this one line and exits 0, so an empty
    output is not mistaken for a failure."""
    empty = [Path(p) for p in paths if not part_files(Path(p))]
    if not empty:
        return None
    hist = any(read_meta(p).get("mode") == "hist" for p in empty)
    why = (
        "histogram mode records no packets; `tracer latency` shows its NAT hook histograms"
        if hist
        else "the capture holds only its metadata"
    )
    return f"no events in {', '.join(map(str, empty))} ({why})"


def concat_events(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate raw capture frames, keeping string columns categorical
    (plain concat would turn differing categories into 1M Python strings).
    A capture without events adds no rows, only its metadata: its empty
    frame is left out (its categories have no type to unite with others')."""
    frames = [f for f in frames if len(f)] or frames[:1]
    if len(frames) == 1:
        return frames[0]
    out = {}
    for name in COLUMN_NAMES:
        columns = [f[name] for f in frames]
        if name in STRING_COLUMNS or isinstance(columns[0].dtype, pd.CategoricalDtype):
            out[name] = union_categoricals(
                [
                    c if isinstance(c.dtype, pd.CategoricalDtype) else c.astype("category")
                    for c in columns
                ],
                ignore_order=True,
            )
        else:
            out[name] = np.concatenate([c.to_numpy() for c in columns])
    return pd.DataFrame(out)


def _categorical(series: pd.Series) -> pd.Series:
    """As a categorical with '' for missing values (the capture's "none")."""
    if not isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype("category")
    if series.isna().any():
        if "" not in series.cat.categories:
            series = series.cat.add_categories([""])
        series = series.fillna("")
    return series


def normalize(raw: pd.DataFrame) -> pd.DataFrame:
    """The analysis frame: integer addresses, probe codes, tuple after each event."""
    n = len(raw)
    ev = pd.DataFrame(index=pd.RangeIndex(n))
    ev["row"] = np.arange(n, dtype=np.int64)
    ev["ts_ns"] = raw["ts_ns"].to_numpy(dtype=np.int64)
    ev["t"] = raw["time_ns"].to_numpy(dtype=np.int64)
    for name in STRING_COLUMNS:
        ev[name] = _categorical(raw[name]).reset_index(drop=True)
    probe_lookup = {p: i for i, p in enumerate(PROBES)}
    probe_cats = ev["probe"].cat.categories
    table = np.array([probe_lookup.get(str(c), -1) for c in probe_cats] + [-1], dtype=np.int8)
    ev["probe_code"] = table[ev["probe"].cat.codes.to_numpy()]
    for name, dtype in (
        ("netns_ino", np.uint32),
        ("ifindex", np.uint32),
        ("skb", np.uint64),
        ("ct", np.uint64),
        ("cpu", np.uint16),
        ("proto", np.uint8),
        ("sport", np.uint16),
        ("dport", np.uint16),
        ("ip_id", np.uint16),
        ("ttl", np.uint8),
        ("len", np.uint16),
        ("tcp_flags", np.uint8),
        ("ip_hlen", np.uint8),
        ("tcp_hlen", np.uint8),
        ("seq", np.uint32),
        ("ack", np.uint32),
        ("nat_sport", np.uint16),
        ("nat_dport", np.uint16),
        ("nat_ns", np.uint32),
        ("icmp_type", np.uint8),
        ("icmp_code", np.uint8),
        ("quoted_sport", np.uint16),
        ("quoted_dport", np.uint16),
        ("quoted_proto", np.uint8),
    ):
        ev[name] = raw[name].fillna(0).to_numpy().astype(dtype, copy=False)
    ev["nat_first"] = raw["nat_first"].fillna(False).to_numpy(dtype=bool)
    # One key dtype for every address column: uint32 unless IPv6 is present.
    dtype = key_dtype([raw[name] for name in _ADDRESS_SOURCES])
    ev["src"] = column_to_int(raw["saddr"], dtype)
    ev["dst"] = column_to_int(raw["daddr"], dtype)
    ev["nat_src"] = column_to_int(raw["nat_saddr"], dtype)
    ev["nat_dst"] = column_to_int(raw["nat_daddr"], dtype)
    # Encapsulated events: src/dst above are the inner packet's (the tunnel's
    # addresses are these), so everything that follows is tunnel-blind.
    ev["outer_src"] = column_to_int(raw["outer_saddr"], dtype)
    ev["outer_dst"] = column_to_int(raw["outer_daddr"], dtype)
    # ICMP errors: the tuple of the packet they quote (tracer.analysis.icmp).
    ev["quoted_src"] = column_to_int(raw["quoted_saddr"], dtype)
    ev["quoted_dst"] = column_to_int(raw["quoted_daddr"], dtype)
    is_nat = ev["probe_code"].to_numpy() == PROBE_NAT
    # A nat event whose "after" address is missing rewrote nothing on that side.
    for out, before, after in (("out_src", "src", "nat_src"), ("out_dst", "dst", "nat_dst")):
        a = ev[after].to_numpy()
        ev[out] = np.where(is_nat & (a != 0), a, ev[before].to_numpy())
    for out, before, after in (
        ("out_sport", "sport", "nat_sport"),
        ("out_dport", "dport", "nat_dport"),
    ):
        a = ev[after].to_numpy()
        b = ev[before].to_numpy()
        has_after = is_nat & ((ev["nat_src"].to_numpy() != 0) | (ev["nat_dst"].to_numpy() != 0))
        ev[out] = np.where(has_after, a, b)
    return ev


# Capture address columns (strings) -> the normalized frame's key columns.
_ADDRESS_SOURCES = {
    "saddr": "src",
    "daddr": "dst",
    "nat_saddr": "nat_src",
    "nat_daddr": "nat_dst",
    "outer_saddr": "outer_src",
    "outer_daddr": "outer_dst",
    "quoted_saddr": "quoted_src",
    "quoted_daddr": "quoted_dst",
}


def to_capture_table(ev: pd.DataFrame) -> pa.Table:
    """The capture-file table (tracer.capfile.schema.SCHEMA) of a normalized
    frame, with time_ns taken from ``t`` (corrected, if it was)."""
    columns = {}
    for name in COLUMN_NAMES:
        if name == "time_ns":
            values = ev["t"].to_numpy()
        elif name in _ADDRESS_SOURCES:
            source = _ADDRESS_SOURCES[name]
            values = ints_to_strings(ev[source].to_numpy())
        else:
            values = ev[name]
        arr = (
            pa.array(values) if not isinstance(values, pd.Series) else pa.Array.from_pandas(values)
        )
        columns[name] = arr.cast(SCHEMA.field(name).type)
    return pa.table(columns, schema=SCHEMA)
