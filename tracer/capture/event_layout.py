"""Python's view of struct tracer_event (bpf/tracer.h), as a numpy dtype, and
its bulk decoding into the capture file's Arrow columns.

Decoding works on whole arrays of events at once: the ring buffer hands over
thousands of fixed-size records per read and every column is converted with
one vectorized operation, never one Python call per event.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from tracer.capture_schema import HOOKS, NAT_KINDS, PROBES, SCHEMA

# (name, numpy type, offset) in struct tracer_event. Fields in network byte
# order are declared big-endian ('>') so numpy does the byte swapping.
EVENT_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("ts_ns", "<u8", 0),
    ("skb", "<u8", 8),
    ("ct", "<u8", 16),
    ("netns_ino", "<u4", 24),
    ("ifindex", "<u4", 28),
    ("ifname", "S16", 32),
    ("saddr", ">u4", 48),
    ("daddr", ">u4", 52),
    ("nat_saddr", ">u4", 56),
    ("nat_daddr", ">u4", 60),
    ("seq", ">u4", 64),
    ("ack", ">u4", 68),
    ("nat_ns", "<u4", 72),
    ("drop_reason", "<u4", 76),
    ("sport", ">u2", 80),
    ("dport", ">u2", 82),
    ("nat_sport", ">u2", 84),
    ("nat_dport", ">u2", 86),
    ("ip_id", ">u2", 88),
    ("len", ">u2", 90),
    ("cpu", "<u2", 92),
    ("probe", "u1", 94),
    ("hook", "u1", 95),
    ("proto", "u1", 96),
    ("ttl", "u1", 97),
    ("tcp_flags", "u1", 98),
    ("nat_kind", "u1", 99),
    ("nat_first", "u1", 100),
    ("ip_hlen", "u1", 101),
    ("tcp_hlen", "u1", 102),
)
EVENT_SIZE = 104

EVENT_DTYPE = np.dtype(
    {
        "names": [n for n, _, _ in EVENT_FIELDS],
        "formats": [t for _, t, _ in EVENT_FIELDS],
        "offsets": [o for _, _, o in EVENT_FIELDS],
        "itemsize": EVENT_SIZE,
    }
)

# A ring buffer record: 8-byte header (length with BUSY/DISCARD bits, page
# offset), then the event; records are 8-byte aligned (kernel/bpf/ringbuf.c).
RINGBUF_HDR = 8
RECORD_SIZE = (RINGBUF_HDR + EVENT_SIZE + 7) & ~7
RECORD_DTYPE = np.dtype(
    {"names": ["hdr_len", "ev"], "formats": ["<u4", EVENT_DTYPE], "offsets": [0, 8],
     "itemsize": RECORD_SIZE}
)

HOOK_NONE = 255

# Dictionary values for small enumerations, index = C value.
_PROBE_DICT = pa.array(["", *PROBES])
_HOOK_DICT = pa.array([*HOOKS, ""])
_NAT_KIND_DICT = pa.array(["", *NAT_KINDS])


def _dict_column(indices: np.ndarray, values: list[str] | pa.Array) -> pa.DictionaryArray:
    dictionary = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), dictionary)


def _ipv4_column(values: np.ndarray) -> pa.DictionaryArray:
    uniq, inverse = np.unique(values, return_inverse=True)
    return _dict_column(inverse, [str(ipaddress.IPv4Address(int(v))) for v in uniq])


def _mapped_column(values: np.ndarray, names: Mapping[int, str], default: str = "") -> pa.DictionaryArray:
    uniq, inverse = np.unique(values, return_inverse=True)
    return _dict_column(inverse, [names.get(int(v), default) for v in uniq])


class EventDecoder:
    """Turns arrays of EVENT_DTYPE into Arrow tables with tracer.capture_schema.SCHEMA."""

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

    def to_table(self, ev: np.ndarray) -> pa.Table:
        n = len(ev)
        ts = ev["ts_ns"].astype(np.int64)
        probe = ev["probe"]
        hook = ev["hook"].astype(np.int32)
        hook_idx = np.where(hook < len(HOOKS), hook, len(HOOKS))
        is_nat = probe == 3
        is_drop = probe == 4
        ifname_uniq, ifname_inv = np.unique(ev["ifname"], return_inverse=True)
        drop_codes = np.where(is_drop, ev["drop_reason"].astype(np.int64), -1)
        drop_names = {k: v for k, v in self.drop_reasons.items()}
        drop_names.update({k: f"reason_{k}" for k in np.unique(drop_codes).tolist()
                           if k >= 0 and k not in drop_names})
        columns = {
            "ts_ns": pa.array(ts),
            "time_ns": pa.array(ts + self.realtime_offset_ns),
            "node": _dict_column(np.zeros(n, np.int32), [self.node]),
            "probe": _dict_column(probe, _PROBE_DICT),
            "hook": _dict_column(hook_idx, _HOOK_DICT),
            "netns_ino": pa.array(ev["netns_ino"]),
            "netns": _mapped_column(ev["netns_ino"], self.netns_names),
            "ifindex": pa.array(ev["ifindex"]),
            "ifname": _dict_column(
                ifname_inv, [b.split(b"\0", 1)[0].decode(errors="replace") for b in ifname_uniq]
            ),
            "skb": pa.array(ev["skb"]),
            "ct": pa.array(ev["ct"]),
            "cpu": pa.array(ev["cpu"]),
            "proto": pa.array(ev["proto"]),
            "saddr": _ipv4_column(ev["saddr"]),
            "daddr": _ipv4_column(ev["daddr"]),
            "sport": pa.array(ev["sport"].astype(np.uint16)),
            "dport": pa.array(ev["dport"].astype(np.uint16)),
            "ip_id": pa.array(ev["ip_id"].astype(np.uint16)),
            "ttl": pa.array(ev["ttl"]),
            "len": pa.array(ev["len"].astype(np.uint16)),
            "tcp_flags": pa.array(ev["tcp_flags"]),
            "ip_hlen": pa.array(ev["ip_hlen"]),
            "tcp_hlen": pa.array(ev["tcp_hlen"]),
            "seq": pa.array(ev["seq"].astype(np.uint32)),
            "ack": pa.array(ev["ack"].astype(np.uint32)),
            "nat_kind": _dict_column(np.where(is_nat, ev["nat_kind"], 0), _NAT_KIND_DICT),
            "nat_first": pa.array(ev["nat_first"] != 0),
            "nat_saddr": _nat_ipv4(ev["nat_saddr"], is_nat),
            "nat_daddr": _nat_ipv4(ev["nat_daddr"], is_nat),
            "nat_sport": pa.array(ev["nat_sport"].astype(np.uint16)),
            "nat_dport": pa.array(ev["nat_dport"].astype(np.uint16)),
            "nat_ns": pa.array(ev["nat_ns"]),
            "drop_reason": _mapped_column(drop_codes, drop_names),
        }
        return pa.Table.from_pydict(columns, schema=SCHEMA)


def _nat_ipv4(values: np.ndarray, is_nat: np.ndarray) -> pa.DictionaryArray:
    """Addresses after NAT; '' for events that are not NAT events."""
    uniq, inverse = np.unique(np.where(is_nat, values, 0).astype(np.int64) - (~is_nat),
                              return_inverse=True)
    names = ["" if v < 0 else str(ipaddress.IPv4Address(int(v))) for v in uniq]
    return _dict_column(inverse, names)
