"""The IP and transport headers of the pcapng export (tracer.analysis.pcap),
synthesized a column at a time from the events' fields: IPv4 (20 bytes) or
IPv6 (40 bytes, no extension headers) and TCP (its captured header length,
options written as NOPs) or UDP, with correct checksums over a zero payload."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracer.analysis.addresses import IPV6_BASE, ip_object

TCP_WINDOW = 65535
# Bytes of headers written per event at most: IPv6 (40) + TCP with options (60).
MAX_HEADER = 100


def _fold(total: np.ndarray) -> np.ndarray:
    total = total.astype(np.uint64)
    for _ in range(3):
        total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return total


def _words32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return (x >> np.uint64(16)) + (x & np.uint64(0xFFFF))


# Header layouts (network byte order), filled a column at a time.
_IP_HEADER = np.dtype(
    [
        ("vihl", "u1"),
        ("tos", "u1"),
        ("tot", ">u2"),
        ("id", ">u2"),
        ("frag", ">u2"),
        ("ttl", "u1"),
        ("proto", "u1"),
        ("csum", ">u2"),
        ("src", ">u4"),
        ("dst", ">u4"),
    ]
)
_TCP_HEADER = np.dtype(
    [
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("seq", ">u4"),
        ("ack", ">u4"),
        ("off", "u1"),
        ("flags", "u1"),
        ("win", ">u2"),
        ("csum", ">u2"),
        ("urg", ">u2"),
    ]
)
_UDP_HEADER = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("len", ">u2"), ("csum", ">u2")])
_IP6_HEADER = np.dtype(
    [
        ("vtcfl", ">u4"),
        ("plen", ">u2"),
        ("next", "u1"),
        ("hlim", "u1"),
        ("src", "u1", (16,)),
        ("dst", "u1", (16,)),
    ]
)


def _checksums(
    f: dict[str, np.ndarray], tot: np.ndarray, tcp_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(IPv4 header checksum, TCP or UDP checksum) of the headers as written:
    total length tot, TCP header of tcp_len bytes (options NOPs), no payload
    bytes summed (the payload is omitted or zeros)."""
    src, dst, proto = f["src"], f["dst"], f["proto"]
    ip_sum = (
        np.uint64(0x4500)
        + tot
        + f["ip_id"]
        + ((f["ttl"] << np.uint64(8)) | proto)
        + _words32(src)
        + _words32(dst)
    )
    ip_csum = (~_fold(ip_sum)) & np.uint64(0xFFFF)
    seg_len = tot - np.uint64(20)
    pseudo = _words32(src) + _words32(dst) + proto + seg_len
    return ip_csum, _l4_checksum(f, pseudo, seg_len, tcp_len)


def _l4_checksum(
    f: dict[str, np.ndarray], pseudo: np.ndarray, seg_len: np.ndarray, tcp_len: np.ndarray
) -> np.ndarray:
    """TCP or UDP checksum over the pseudo-header's sum (either family's)
    and the transport header as written."""
    proto, sport, dport = f["proto"], f["sport"], f["dport"]
    tcp_sum = (
        pseudo
        + sport
        + dport
        + _words32(f["seq"])
        + _words32(f["ack"])
        + (((tcp_len >> np.uint64(2)) << np.uint64(12)) | f["flags"])
        + np.uint64(TCP_WINDOW)
        + ((tcp_len - np.uint64(20)) >> np.uint64(1)) * np.uint64(0x0101)  # NOP options
    )
    udp_sum = pseudo + sport + dport + seg_len
    is_tcp, is_udp = proto == 6, proto == 17
    l4_csum = (~_fold(np.where(is_tcp, tcp_sum, udp_sum))) & np.uint64(0xFFFF)
    return np.where(is_udp & (l4_csum == 0), np.uint64(0xFFFF), l4_csum)  # UDP: 0 means "none"


def _ipv6_parts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(16 address bytes per key, sum of its eight 16-bit words), computed
    once per distinct address."""
    uniques, inverse = np.unique(keys, return_inverse=True)
    packed = np.array(
        [list(ip_object(int(k)).packed) if k >= IPV6_BASE else [0] * 16 for k in uniques],
        dtype=np.uint8,
    ).reshape(-1, 16)
    sums = (packed[:, 0::2].astype(np.uint64) << np.uint64(8)).sum(axis=1) + packed[:, 1::2].astype(
        np.uint64).sum(axis=1)
    inverse = inverse.reshape(-1)
    return packed[inverse], sums[inverse]


def _ipv6_headers(f: dict[str, np.ndarray], payload: np.ndarray, tcp_len: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(IPv6 headers, TCP or UDP checksums) of IPv6 events: upper-layer
    length ``payload`` (RFC 8200 8.1 pseudo-header)."""
    src, src_sum = _ipv6_parts(f["src"])
    dst, dst_sum = _ipv6_parts(f["dst"])
    pseudo = src_sum + dst_sum + _words32(payload) + f["proto"]
    ip6 = np.zeros(len(payload), _IP6_HEADER)
    ip6["vtcfl"], ip6["plen"], ip6["next"], ip6["hlim"] = 0x60000000, payload, f["proto"], f["ttl"]
    ip6["src"], ip6["dst"] = src, dst
    return ip6, _l4_checksum(f, pseudo, payload, tcp_len)


def headers(ev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of IP + L4 header per event as a 2-D uint8 array of MAX_HEADER
    columns, header length per event). Fields from the tuple *after* each
    event. TCP headers keep their captured length (tcp_hlen): the option
    bytes, not captured, are written as NOPs so readers see the true payload
    length. IPv6 events (address keys >= IPV6_BASE) get an IPv6 header."""
    n = len(ev)

    def u(column: str) -> np.ndarray:
        return ev[column].to_numpy().astype(np.uint64)

    f = {
        "src": u("out_src"),
        "dst": u("out_dst"),
        "sport": u("out_sport"),
        "dport": u("out_dport"),
        "proto": u("proto"),
        "ip_id": u("ip_id"),
        "ttl": u("ttl"),
        "seq": u("seq"),
        "ack": u("ack"),
        "flags": u("tcp_flags"),
    }
    src, dst, sport, dport, proto = f["src"], f["dst"], f["sport"], f["dport"], f["proto"]
    is_tcp, is_udp = proto == 6, proto == 17
    hlen = u("tcp_hlen") if "tcp_hlen" in ev else np.zeros(n, np.uint64)
    tcp_len = np.where((hlen >= 20) & (hlen <= 60), hlen & ~np.uint64(3), 20).astype(np.uint64)
    l4_len = np.where(is_tcp, tcp_len, np.where(is_udp, 8, 0)).astype(np.uint64)
    # The header we write must fit inside the total length it announces.
    tot = np.maximum(u("len"), np.uint64(20) + l4_len)
    seg_len = tot - np.uint64(20)
    ip_csum, l4_csum = _checksums(f, tot, tcp_len)
    v6 = (src >= np.uint64(IPV6_BASE)) | (dst >= np.uint64(IPV6_BASE))
    l3_len = np.where(v6, 40, 20).astype(np.int64)
    ip6 = None
    if v6.any():
        # IPv6: len is the payload length + 40 and ip_hlen counts the
        # extension headers, which are not written: what follows the
        # 40-byte header is len - ip_hlen bytes.
        iph = np.maximum(u("ip_hlen")[v6], np.uint64(40)) if "ip_hlen" in ev else np.uint64(40)
        plen = np.maximum(u("len")[v6], iph + l4_len[v6]) - iph
        ip6, l4_csum[v6] = _ipv6_headers({k: a[v6] for k, a in f.items()}, plen, tcp_len[v6])
        seg_len[v6] = plen

    ip = np.zeros(n, _IP_HEADER)
    ip["vihl"], ip["tot"], ip["id"], ip["ttl"], ip["proto"] = 0x45, tot, f["ip_id"], f["ttl"], proto
    # (IPv6 rows: their IPv4 header is not written.)
    ip["csum"], ip["src"], ip["dst"] = ip_csum, src & np.uint64(0xFFFFFFFF), dst & np.uint64(0xFFFFFFFF)
    tcp = np.zeros(n, _TCP_HEADER)
    tcp["sport"], tcp["dport"], tcp["seq"], tcp["ack"] = sport, dport, f["seq"], f["ack"]
    tcp["off"], tcp["flags"], tcp["win"], tcp["csum"] = (
        (tcp_len >> np.uint64(2)) << np.uint64(4), f["flags"], TCP_WINDOW, l4_csum)
    udp = np.zeros(n, _UDP_HEADER)
    udp["sport"], udp["dport"], udp["len"], udp["csum"] = sport, dport, seg_len, l4_csum
    out = np.zeros((n, MAX_HEADER), dtype=np.uint8)
    v4 = ~v6
    out[v4, :20] = ip.view(np.uint8).reshape(n, 20)[v4]
    if ip6 is not None:
        out[v6, :40] = ip6.view(np.uint8).reshape(-1, 40)
    for l3, rows in ((20, v4), (40, v6)):
        out[rows & is_tcp, l3 : l3 + 20] = tcp.view(np.uint8).reshape(n, 20)[rows & is_tcp]
        out[rows & is_udp, l3 : l3 + 8] = udp.view(np.uint8).reshape(n, 8)[rows & is_udp]
    col = np.arange(MAX_HEADER)[None, :]
    options = is_tcp[:, None] & (col >= (l3_len + 20)[:, None]) & (
        col < (l3_len + tcp_len.astype(np.int64))[:, None])
    out[options] = 1  # TCP option NOP
    return out, (l3_len + l4_len.astype(np.int64)).astype(np.int64)
