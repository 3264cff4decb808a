"""IPv4 addresses as 32-bit integers, converted a column at a time.

Capture files store addresses as dictionary-encoded strings (pandas
``category``): a capture has a handful of distinct addresses and a million
rows, so each distinct string is parsed once and the integer codes are looked
up with numpy indexing."""

from __future__ import annotations

import functools
import ipaddress

import numpy as np
import pandas as pd

from tracer.capfile import PROTO_NAMES


def ip_to_int(text: str) -> int:
    """'10.0.0.1' -> 167772161; '' (no address) -> 0."""
    if not text:
        return 0
    return int(ipaddress.IPv4Address(text))


@functools.lru_cache(maxsize=65536)
def _format_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value)) if value else ""


def int_to_ip(value: int) -> str:
    return _format_ip(int(value))


def column_to_int(series: pd.Series) -> np.ndarray:
    """A column of IPv4 strings (categorical or not) as uint32; missing -> 0."""
    if not isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype("category")
    categories = series.cat.categories
    table = np.array([ip_to_int(str(c)) for c in categories] + [0], dtype=np.uint32)
    codes = series.cat.codes.to_numpy()
    # Code -1 (missing) indexes the trailing 0.
    return table[codes]


def ints_to_strings(values: np.ndarray) -> pd.Categorical:
    """uint32 addresses -> categorical of dotted quads (each distinct value formatted once)."""
    uniques, inverse = np.unique(np.asarray(values, dtype=np.uint32), return_inverse=True)
    labels = [int_to_ip(v) for v in uniques]
    # Categories must be unique; 0 formats as '' and nothing else does.
    return pd.Categorical.from_codes(inverse.reshape(-1), categories=pd.Index(labels))


def proto_name(number: int) -> str:
    return PROTO_NAMES.get(int(number), str(int(number)))


def endpoint(addr: int | str, port: int, proto: int = 6) -> str:
    """'10.0.0.1:80', or the bare address for protocols without ports."""
    text = addr if isinstance(addr, str) else int_to_ip(addr)
    if int(proto) in (6, 17) or port:
        return f"{text}:{int(port)}"
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
