"""The metadata document's schema: the type of every key the writers
(tracer.capture.metadata, tracer.analysis.correlate) put in it and the
readers (tracer.analysis, the notebooks) use, checked in one place when a
capture is opened (tracer.capfile.meta.read_meta). A document that passes
can be read with ``meta.get(key) or default`` and the types below, so a
wrong type is a one-line error naming the key, never a crash deep in an
analysis or a silently wrong figure.

Keys the schema does not know are allowed (hand additions, notes); every
known key is optional except ``format`` and ``version``. null is allowed
where a writer can write it (a merged capture copies its reference node's
``clock`` or ``kernel``, which that node may lack)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tracer.capfile.schema import FORMAT_VERSION


def kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Spec:
    what = "?"

    def problem(self, value: Any, where: str) -> str | None:
        """None if value fits, else what is wrong with it (one line)."""
        raise NotImplementedError

    def _wrong(self, value: Any, where: str) -> str:
        return f"{where} is {kind(value)}, the format has {self.what}"


class Scalar(Spec):
    def __init__(self, what: str, fits: Callable[[Any], bool]):
        self.what, self.fits = what, fits

    def problem(self, value: Any, where: str) -> str | None:
        return None if self.fits(value) else self._wrong(value, where)


class Either(Spec):
    def __init__(self, *options: Spec):
        self.options = options
        self.what = " or ".join(o.what for o in options)

    def problem(self, value: Any, where: str) -> str | None:
        if any(o.problem(value, where) is None for o in self.options):
            return None
        # One option of the right JSON type: its own, more precise, complaint.
        near = [o.problem(value, where) for o in self.options if _same_kind(o, value)]
        return near[0] if len(near) == 1 else self._wrong(value, where)


class OneOf(Spec):
    def __init__(self, *values: str):
        self.values = values
        self.what = "one of " + ", ".join(map(repr, values))

    def problem(self, value: Any, where: str) -> str | None:
        if value in self.values:
            return None
        shown = repr(value)[:40] if isinstance(value, str) else kind(value)
        return f"{where} is {shown}, the format has {self.what}"


class ListOf(Spec):
    def __init__(self, item: Spec, length: int | None = None):
        self.item, self.length = item, length
        self.what = "a list" if length is None else f"a list of {length}"

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return self._wrong(value, where)
        if self.length is not None and len(value) != self.length:
            return f"{where} has {len(value)} items, the format has {self.length}"
        for i, item in enumerate(value):
            found = self.item.problem(item, f"{where}[{i}]")
            if found:
                return found
        return None


class MapOf(Spec):
    """An object whose keys are names the format does not fix (probe points, counters)."""

    what = "an object"

    def __init__(self, item: Spec):
        self.item = item

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return self._wrong(value, where)
        for key, item in value.items():
            found = self.item.problem(item, f"{where}.{key}")
            if found:
                return found
        return None


class Record(Spec):
    """An object with known keys (others allowed)."""

    what = "an object"

    def __init__(self, fields: Mapping[str, Spec], required: tuple[str, ...] = ()):
        self.fields, self.required = fields, required

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return self._wrong(value, where)
        for key in self.required:
            if key not in value:
                return f"{_join(where, key)} is missing"
        for key, spec in self.fields.items():
            if key in value:
                found = spec.problem(value[key], _join(where, key))
                if found:
                    return found
        return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _same_kind(spec: Spec, value: Any) -> bool:
    if isinstance(spec, Either):
        return any(_same_kind(o, value) for o in spec.options)
    container = {ListOf: list, MapOf: dict, Record: dict}.get(type(spec))
    return container is not None and isinstance(value, container)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STR = Scalar("a string", lambda v: isinstance(v, str))
INT = Scalar("an integer", _is_int)
NUM = Scalar("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
BOOL = Scalar("true/false", lambda v: isinstance(v, bool))
ANY = Scalar("anything", lambda v: True)
NULL = Scalar("null", lambda v: v is None)


def opt(spec: Spec) -> Spec:
    """spec, or null."""
    return Either(spec, NULL)


# A Service as ResolvedService.to_dict() writes it, with the other field
# names tracer.analysis.service reads leniently (hand-written metadata).
ENDPOINT = Either(STR, Record({
    **{k: opt(STR) for k in ("ip", "address", "addr", "pod_ip", "endpoint", "protocol")},
    **{k: opt(STR) for k in ("chain", "sep_chain")},
    **{k: opt(INT) for k in ("port", "target_port", "targetPort")},
    **{k: opt(NUM) for k in ("probability", "p", "share")},
}))
ADDRESSES = opt(ListOf(STR))
SERVICE_PORT = Record({
    "protocol": opt(Either(STR, INT)),
    "port": opt(INT),
    "node_port": opt(INT),
    "cluster_ips": opt(Either(STR, ListOf(STR))),
    "cluster_ip": opt(Either(STR, ListOf(STR))),
    "external_ips": ADDRESSES,
    "load_balancer_ips": ADDRESSES,
    "external_policy": opt(STR),
    "endpoints": opt(ListOf(ENDPOINT)),
    "local_endpoints": opt(ListOf(ENDPOINT)),
    **{k: opt(STR) for k in ("port_name", "service_chain", "external_chain", "local_chain",
                             "firewall_chain", "cluster_ip_chain", "load_balancer_chain",
                             "internal_policy")},
    "load_balancer_source_ranges": ADDRESSES,
    "pod_cidrs": ADDRESSES,
})
SERVICE = Record({
    "namespace": opt(STR),
    "name": opt(STR),
    "name_source": opt(STR),
    "ports": opt(ListOf(SERVICE_PORT)),
    "endpoints": opt(ListOf(ENDPOINT)),
})

CLOCK_SAMPLE = Record({"ts_ns": INT, "realtime_minus_monotonic_ns": INT, "uncertainty_ns": NUM})
HISTOGRAM = Record({
    "hook": STR,
    "first": BOOL,
    "node": STR,
    "buckets": ListOf(ListOf(INT, length=3)),  # [lo_ns, hi_ns, count]
})

# One node's document: a capture's, or a merged capture's entry for a node.
NODE_FIELDS: dict[str, Spec] = {
    "node": STR,
    "hostname": opt(STR),
    "kernel": opt(STR),
    "netns": opt(Record({"path": opt(STR), "inode": opt(INT)})),
    "scoped_netns": opt(MapOf(STR)),
    "workloads": opt(ListOf(STR)),
    "limits": opt(MapOf(opt(INT))),  # bounds the BPF programs were loaded with
    # --rules: the trace table, trace events and walks recorded, messages lost.
    "rules": opt(Record({"table": opt(STR), "events": opt(INT), "walks": opt(INT),
                         "lost": opt(INT)})),  # pod IPs routed over a pod veth (capture.scope)
    "backends": opt(MapOf(opt(STR))),
    "backend_targets": opt(MapOf(opt(STR))),
    "mode": OneOf("events", "hist"),
    "service": opt(SERVICE),
    "service_history": opt(ListOf(Record({"ts_ns": INT, "service": opt(SERVICE)}))),
    "filters": opt(MapOf(ANY)),
    "clock": opt(Record({"realtime_minus_monotonic_ns": opt(INT), "uncertainty_ns": opt(NUM)})),
    "clock_samples": opt(ListOf(CLOCK_SAMPLE)),
    "started_ns": opt(INT),
    "ended_ns": opt(INT),
    "started_at": opt(STR),
    "ended_by": opt(STR),
    "startup": opt(MapOf(opt(NUM))),
    # Counters, and counters by probe point (lost_by_probe).
    "stats": opt(MapOf(opt(Either(NUM, MapOf(opt(NUM)))))),
    "histograms": opt(Record({"nat_hook_ns": opt(ListOf(HISTOGRAM))})),
    "complete": BOOL,
    "parts": INT,
}
MERGED_NODE = Record(
    {
        "node": STR,
        "path": opt(STR),
        "reference": BOOL,
        "offset_ns": NUM,
        "uncertainty_ns": opt(NUM),
        "method": opt(STR),
        "lower_ns": opt(NUM),
        "upper_ns": opt(NUM),
        "packets_to": INT,
        "packets_from": INT,
        "via": opt(STR),
        "consistent": BOOL,
        "realtime_minus_monotonic_ns": opt(INT),
        "corrected_realtime_minus_monotonic_ns": opt(INT),
        "meta": Record(NODE_FIELDS),
    },
    required=("node",),
)
DOCUMENT = Record(
    {
        "format": STR,
        "version": INT,
        **NODE_FIELDS,
        "nodes": ListOf(STR),
        "merged_from": opt(ListOf(MERGED_NODE)),
        "correlation": opt(Record({
            "reference": opt(STR), "cross_node_links": INT, "ambiguous_links": INT,
        })),
    },
    required=("format", "version"),
)


def document_problem(meta: Any) -> str | None:
    """None if meta is a metadata document this tracer reads, else what is
    wrong, in one line. The version first: a newer format may change any
    other key, so its types say nothing."""
    if not isinstance(meta, dict):
        return f"the document is {kind(meta)}, the format has an object"
    version = meta.get("version")
    if not _is_int(version):
        return (f"version is {kind(version)}, the format has an integer" if "version" in meta
                else "version is missing")
    if version > FORMAT_VERSION:
        return (f"format version {version} is newer than this tracer reads "
                f"(1 to {FORMAT_VERSION}): read it with a newer tracer")
    if version < 1:
        return f"format version {version} does not exist (1 to {FORMAT_VERSION})"
    return DOCUMENT.problem(meta, "")
