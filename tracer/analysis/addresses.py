"""Addresses of both families as int64 keys, converted a column at a time.

Capture files store addresses as dictionary-encoded strings (pandas
``category``): a capture has a handful of distinct addresses and a million
rows, so each distinct string is parsed once and the integer codes are looked
up with numpy indexing.

The key of an address (what every analysis column ``src``, ``dst``,
``nat_src`` ... holds, dtype int64):

- no address (''): 0;
- IPv4: its 32-bit value, exactly as before IPv6 existed, so IPv4 joins,
  merges, groupbys and hashes cost what they did;
- IPv6: ``IPV6_BASE + n`` (>= 2**32), n the order in which this process first
  met the address (a process-wide registry, ``ip_to_int``). The same address
  always gets the same key within a process, so keys of different captures
  loaded together compare equal; across processes they differ, and nothing
  stores them: files and JSON carry the text (``int_to_ip``).

Why not 128 bits: two uint64 columns (or Python ints in object columns)
would double every join key and every tuple key built from addresses, and
slow IPv4 down; one int64 keeps ``(key << 16) | port`` and
``(key << 24) | (port << 8) | proto`` (tracer.analysis.outcomes) inside 63
bits because the registry holds at most ``MAX_IPV6`` addresses (2**30: a
capture has thousands). A key's family is ``key >= IPV6_BASE``; there is no
per-row family column. A frame without IPv6 keeps its key columns uint32
(``key_dtype``), so IPv4 analysis moves exactly the bytes it always did.
Arithmetic on keys (masks, ranges) means nothing for
IPv6: prefix checks go through ``Networks``, which handles both families."""

from __future__ import annotations

import functools
import ipaddress
import threading

import numpy as np
import pandas as pd

from tracer.capfile import PROTO_NAMES

IPV6_BASE = 1 << 32
MAX_IPV6 = 1 << 30

_v6_keys: dict[int, int] = {}  # int(IPv6Address) -> key
_v6_values: list[int] = []  # key - IPV6_BASE -> int(IPv6Address)
_v6_lock = threading.Lock()


def _v6_key(value: int) -> int:
    key = _v6_keys.get(value)
    if key is not None:
        return key
    with _v6_lock:
        key = _v6_keys.get(value)
        if key is None:
            if len(_v6_values) >= MAX_IPV6:
                raise ValueError(f"more than {MAX_IPV6} distinct IPv6 addresses")
            key = IPV6_BASE + len(_v6_values)
            _v6_values.append(value)
            _v6_keys[value] = key
    return key


def ip_to_int(text: str) -> int:
    """'10.0.0.1' -> 167772161; '2001:db8::1' -> its key (>= IPV6_BASE);
    '' (no address) -> 0. Anything else raises ValueError."""
    if not text:
        return 0
    address = ipaddress.ip_address(text.strip())
    if address.version == 4:
        return int(address)
    return _v6_key(int(address))


def is_ipv6(keys: np.ndarray) -> np.ndarray:
    """Per key of an array: is it an IPv6 address's."""
    return np.asarray(keys) >= IPV6_BASE


def family(key: int) -> int:
    """4 or 6 (0 for no address)."""
    return 0 if not key else 6 if key >= IPV6_BASE else 4


def ip_object(key: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    key = int(key)
    if key >= IPV6_BASE:
        return ipaddress.IPv6Address(_v6_values[key - IPV6_BASE])
    return ipaddress.IPv4Address(key)


@functools.lru_cache(maxsize=65536)
def _format_ip(value: int) -> str:
    return str(ip_object(value)) if value else ""


def int_to_ip(value: int) -> str:
    """A key as text: '10.0.0.1', '2001:db8::1' (RFC 5952), '' for 0."""
    return _format_ip(int(value))


def _categorical(series: pd.Series) -> pd.Series:
    return series if isinstance(series.dtype, pd.CategoricalDtype) else series.astype("category")


def key_dtype(columns: list[pd.Series]) -> type:
    """The narrowest dtype for these address columns' keys: uint32 when all
    are IPv4 (the frame is then exactly what it was before IPv6: half the
    bytes to copy in every take and merge), int64 when any is IPv6."""
    for series in columns:
        if any(ip_to_int(str(c)) >= IPV6_BASE for c in _categorical(series).cat.categories):
            return np.int64
    return np.uint32


def column_to_int(series: pd.Series, dtype: type = np.int64) -> np.ndarray:
    """A column of address strings (categorical or not) as keys; missing -> 0.
    dtype uint32 only for IPv4 columns (key_dtype)."""
    series = _categorical(series)
    categories = series.cat.categories
    table = np.array([ip_to_int(str(c)) for c in categories] + [0], dtype=dtype)
    codes = series.cat.codes.to_numpy()
    # Code -1 (missing) indexes the trailing 0.
    return table[codes]


def ints_to_strings(values: np.ndarray) -> pd.Categorical:
    """Keys -> categorical of their texts (each distinct value formatted once)."""
    uniques, inverse = np.unique(np.asarray(values, dtype=np.int64), return_inverse=True)
    labels = [int_to_ip(v) for v in uniques]
    # Categories must be unique; 0 formats as '' and nothing else does.
    return pd.Categorical.from_codes(inverse.reshape(-1), categories=pd.Index(labels))


class Networks:
    """Prefixes of both families (pod CIDRs, loadBalancerSourceRanges):
    membership of a key or of a column of keys. IPv4 prefixes are checked
    with masks on the keys; IPv6 ones on the distinct IPv6 keys only."""

    def __init__(self, texts=()):
        self.v4: list[tuple[int, int]] = []
        self.v6: list[ipaddress.IPv6Network] = []
        self.texts: tuple[str, ...] = ()
        bad = []
        for text in texts or ():
            try:
                net = ipaddress.ip_network(str(text).strip(), strict=False)
            except ValueError:
                bad.append(str(text))
                continue
            if net.version == 4:
                self.v4.append((int(net.network_address), int(net.netmask)))
            else:
                self.v6.append(net)
            self.texts += (str(net),)
        self.unreadable = tuple(bad)

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def __eq__(self, other) -> bool:
        return isinstance(other, Networks) and self.texts == other.texts

    def __hash__(self) -> int:
        return hash(self.texts)

    def __repr__(self) -> str:
        return f"Networks({list(self.texts)!r})"

    def contains(self, key: int | None) -> bool:
        if key is None or not key:
            return False
        key = int(key)
        if key < IPV6_BASE:
            return any((key & mask) == net for net, mask in self.v4)
        address = ip_object(key)
        return any(address in net for net in self.v6)

    def contains_column(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64)
        out = np.zeros(len(keys), dtype=bool)
        v4 = (keys > 0) & (keys < IPV6_BASE)
        for net, mask in self.v4:
            out |= v4 & ((keys & mask) == net)
        if self.v6:
            v6 = keys >= IPV6_BASE
            uniques = np.unique(keys[v6])
            inside = uniques[[self.contains(int(k)) for k in uniques]] if len(uniques) else uniques
            out |= v6 & np.isin(keys, inside)
        return out


# ICMPv6 carries IPv6's errors; the capture's vocabulary (PROTO_NAMES) may
# not name it yet.
_MORE_PROTO_NAMES = {58: "icmp6"}


def proto_name(number: int) -> str:
    number = int(number)
    return PROTO_NAMES.get(number) or _MORE_PROTO_NAMES.get(number) or str(number)


def endpoint(addr: int | str, port: int, proto: int = 6) -> str:
    """'10.0.0.1:80', '[2001:db8::1]:80' (RFC 3986: an IPv6 address is
    bracketed where a port follows), or the bare address for protocols
    without ports."""
    text = addr if isinstance(addr, str) else int_to_ip(addr)
    if int(proto) in (6, 17) or port:
        return f"[{text}]:{int(port)}" if ":" in text else f"{text}:{int(port)}"
    return text


def tuple_text(saddr, sport, daddr, dport, proto=6) -> str:
    return f"{endpoint(saddr, sport, proto)} -> {endpoint(daddr, dport, proto)}"


TCP_FLAG_LETTERS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20))


def tcp_flags_text(flags: int) -> str:
    """tcpdump-style flag letters: 'S', 'S.', 'P.', 'F.'; '.' stands for ACK."""
    flags = int(flags)
    text = "".join(letter for letter, bit in TCP_FLAG_LETTERS if flags & bit and letter != "A")
    if flags & 0x10:
        text += "."
    return text or "none"
