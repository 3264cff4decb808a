"""Bulk decoding of struct tracer_event records (their layout: abi.py) into
the capture file's Arrow columns.

Decoding works on whole arrays of events at once: the ring buffer hands over
thousands of fixed-size records per read and every column is converted with
one vectorized operation, never one Python call per event.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from tracer.capfile import ENCAPS, HOOKS, NAT_KINDS, PROBES, SCHEMA
from tracer.capture.abi import EVENT_FIELDS, PROBE_DROP, PROBE_NAT

# Events are gathered out of the ring in chunks of at most this many records
# (~1.7 MB): pulling 31 strided fields out of a chunk that sits in the CPU's
# L2 cache is ~8x faster than out of a whole second of events in RAM.
GATHER_CHUNK = 16384


class EventColumns:
    """A batch of events as one native-order numpy array per field, filled
    chunk by chunk (from the ring buffer's memory or from a record array).
    Decoding wants columns; the records arrive as rows."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.n = 0
        self._arrays = {name: np.empty(capacity, _NATIVE[name]) for name in _NATIVE}

    @classmethod
    def from_events(cls, ev: np.ndarray) -> EventColumns:
        cols = cls(len(ev))
        for i in range(0, len(ev), GATHER_CHUNK):
            cols.append(ev[i : i + GATHER_CHUNK])
        return cols

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def append(self, ev: np.ndarray) -> None:
        """ev: EVENT_DTYPE records, any stride (a view of the ring is fine)."""
        a, b = self.n, self.n + len(ev)
        for name, arr in self._arrays.items():
            arr[a:b] = ev[name]  # byte-swaps the '>' fields on the way
        self.n = b

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name][: self.n]


_NATIVE = {name: np.dtype(t).newbyteorder("=") for name, t, _ in EVENT_FIELDS}

# Arrow columns are built from numpy buffers with Array.from_buffers, never
# with pa.array(): that checks every input for pandas objects and so imports
# pandas (~0.15 s) on the capture path, and it converts where a view suffices.
_ARROW_TYPES = {
    np.dtype(np.int64): pa.int64(), np.dtype(np.uint64): pa.uint64(),
    np.dtype(np.int32): pa.int32(), np.dtype(np.uint32): pa.uint32(),
    np.dtype(np.uint16): pa.uint16(), np.dtype(np.uint8): pa.uint8(),
}


def _numeric(values: np.ndarray, dtype: type | None = None) -> pa.Array:
    """An Arrow column over values (zero-copy when already contiguous and of
    the wanted type)."""
    arr = np.ascontiguousarray(values, dtype=dtype or values.dtype.newbyteorder("="))
    return pa.Array.from_buffers(_ARROW_TYPES[arr.dtype], len(arr), [None, pa.py_buffer(arr)])


def _bools(values: np.ndarray) -> pa.Array:
    bits = np.packbits(values, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def string_array(values: list[str]) -> pa.Array:
    """pa.array(values, pa.string()) without pa.array (see _ARROW_TYPES)."""
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _dict_column(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(_numeric(indices, np.int32), values)


def _encoded(values: pa.Array, name: Callable[[Any], str]) -> pa.DictionaryArray:
    """Dictionary-encode values by hashing (Arrow; no sort, unlike
    np.unique) and name only the few distinct ones in Python."""
    enc = values.dictionary_encode()
    names = [name(v) for v in enc.dictionary.to_pylist()]
    if len(set(names)) == len(names):
        return pa.DictionaryArray.from_arrays(enc.indices, string_array(names))
    # Distinct values with one name (two unnamed namespaces are both ''):
    # a dictionary must not repeat itself (pandas refuses the categories).
    first: dict[str, int] = {}
    remap = np.array([first.setdefault(n, len(first)) for n in names], np.int32)
    indices = remap[np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)]
    return pa.DictionaryArray.from_arrays(_numeric(indices, np.int32), string_array(list(first)))


def _ipv4(v: int) -> str:
    return "" if v < 0 else str(ipaddress.IPv4Address(v))


# Dictionary values for small enumerations, index = C value.
_PROBE_DICT = string_array(["", *PROBES])
_HOOK_DICT = string_array([*HOOKS, ""])
_NAT_KIND_DICT = string_array(["", *NAT_KINDS])
_ENCAP_DICT = string_array(["", *ENCAPS])


class EventDecoder:
    """Turns events (EVENT_DTYPE records or EventColumns) into Arrow tables
    with tracer.capfile.SCHEMA."""

    def __init__(
        self,
        node: str,
        realtime_offset_ns: int,
        netns_names: Mapping[int, str] | None = None,
        drop_reasons: Mapping[int, str] | None = None,
    ):
        self.node = node
        self.realtime_offset_ns = realtime_offset_ns
        self.netns_names: dict[int, str] = dict(netns_names or {})
        self.drop_reasons: dict[int, str] = dict(drop_reasons or {})
        self._node_dict = string_array([node])

    def _drop_name(self, code: int) -> str:
        return "" if code < 0 else self.drop_reasons.get(code, f"reason_{code}")

    @staticmethod
    def _tunnel_columns(c: EventColumns) -> dict[str, pa.Array]:
        """encap and the outer addresses ('' for packets in no tunnel)."""
        encap = c["encap"]
        tunnelled = encap != 0
        outer = {
            name: _encoded(_numeric(np.where(tunnelled, c[name].astype(np.int64), -1)), _ipv4)
            for name in ("outer_saddr", "outer_daddr")
        }
        return {"encap": _dict_column(np.where(encap <= len(ENCAPS), encap, 0), _ENCAP_DICT),
                **outer}

    @staticmethod
    def _icmp_columns(c: EventColumns) -> dict[str, pa.Array]:
        """The quoted packet's addresses ('' where nothing was quoted)."""
        quoted = c["quoted_proto"] != 0
        return {
            name: _encoded(_numeric(np.where(quoted, c[name].astype(np.int64), -1)), _ipv4)
            for name in ("quoted_saddr", "quoted_daddr")
        }

    def to_table(self, ev: np.ndarray | EventColumns) -> pa.Table:
        """One vectorized operation per column: numeric fields become Arrow
        arrays without a copy, strings are dictionary-encoded by hashing, and
        only the distinct values (a handful per batch) are formatted."""
        c = ev if isinstance(ev, EventColumns) else EventColumns.from_events(ev)
        n = len(c)
        ts = c["ts_ns"].view(np.int64)
        probe, hook, nat_kind = c["probe"], c["hook"], c["nat_kind"]
        is_nat = probe == PROBE_NAT
        is_drop = probe == PROBE_DROP
        netns_ino = _numeric(c["netns_ino"])
        # Addresses of non-NAT events are -1 before encoding: they read ''.
        nat_saddr = np.where(is_nat, c["nat_saddr"].astype(np.int64), -1)
        nat_daddr = np.where(is_nat, c["nat_daddr"].astype(np.int64), -1)
        drop_codes = np.where(is_drop, c["drop_reason"].astype(np.int64), -1)
        columns = {
            "ts_ns": _numeric(ts),
            "time_ns": _numeric(ts + self.realtime_offset_ns),
            "node": _dict_column(np.zeros(n, np.int32), self._node_dict),
            "probe": _dict_column(np.where(probe <= len(PROBES), probe, 0), _PROBE_DICT),
            "hook": _dict_column(np.minimum(hook, len(HOOKS)), _HOOK_DICT),
            "netns_ino": netns_ino,
            "netns": _encoded(netns_ino, lambda v: self.netns_names.get(v, "")),
            "ifindex": _numeric(c["ifindex"]),
            "ifname": _encoded(
                pa.Array.from_buffers(pa.binary(16), n, [None, pa.py_buffer(c["ifname"])]),
                lambda b: b.split(b"\0", 1)[0].decode(errors="replace")),
            "nat_kind": _dict_column(np.where(is_nat & (nat_kind <= len(NAT_KINDS)), nat_kind, 0),
                                     _NAT_KIND_DICT),
            "nat_first": _bools(c["nat_first"] != 0),
            "saddr": _encoded(_numeric(c["saddr"]), _ipv4),
            "daddr": _encoded(_numeric(c["daddr"]), _ipv4),
            "nat_saddr": _encoded(_numeric(nat_saddr), _ipv4),
            "nat_daddr": _encoded(_numeric(nat_daddr), _ipv4),
            "drop_reason": _encoded(_numeric(drop_codes), self._drop_name),
            **self._tunnel_columns(c),
            **self._icmp_columns(c),
        }
        for name in _PLAIN:
            columns[name] = _numeric(c[name])
        return pa.Table.from_arrays([columns[name] for name in SCHEMA.names], schema=SCHEMA)


# Columns stored as the kernel wrote them (after byte order).
_PLAIN = ("skb", "ct", "cpu", "proto", "sport", "dport", "ip_id", "ttl", "len", "tcp_flags",
          "ip_hlen", "tcp_hlen", "seq", "ack", "nat_sport", "nat_dport", "nat_ns",
          "icmp_type", "icmp_code", "quoted_sport", "quoted_dport", "quoted_proto")
