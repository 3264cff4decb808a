"""Exports a capture as pcapng, one packet per event, for Wireshark and tcpdump.

Events carry header fields, not packet bytes, so each packet is synthesized:
an IPv4 header (version 4, IHL 5, the captured total length, IP ID, TTL,
protocol, addresses; DF and TOS are not captured and written as 0), or for
an IPv6 event a 40-byte IPv6 header (traffic class and flow label 0, payload
length, next header = the transport protocol, hop limit from ``ttl``; the
extension headers the capture counted in ``ip_hlen`` are not captured and
not written, so the packet is shorter than on the wire by their size), and a TCP
(20 bytes: ports, seq, ack, flags; window not captured, written as 65535; no
options) or UDP header, with correct checksums over the zero-filled payload.
By default the payload is omitted and the original length kept in the block
(tools show "packet size limited during capture"); ``payload="zeros"`` writes
it zero-filled instead, so checksum validators can check every byte.

A nat event is written as the packet that left the NAT hook (tuple after the
rewrite); its comment says what it was before. Every packet has a comment
(pcapng opt_comment): tracer packet id and hop, node, probe, namespace and
interface, hook, NAT rewrite, NAT hook time, drop reason. There is one
Interface Description Block per (node, netns, interface); timestamps are
``time_ns`` (clock-corrected in merged captures) at nanosecond resolution.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tracer import __version__
from tracer.analysis.addresses import IPV6_BASE, ints_to_strings, ip_object
from tracer.analysis.events import EventSet, load_events
from tracer.analysis.packets import Packets, assemble
from tracer.capfile import Capture
from tracer.errors import CaptureFileError
from tracer.safe_output import refuse_overlap, replacing

# Raw IPv4, no link-layer header. Not LINKTYPE_RAW (101): libpcap 1.10 maps
# 101 to DLT_RAW for the first interface only and then rejects the second
# interface block of a multi-interface file ("type 101 different from the type
# of the first interface"); 228 is read by both tcpdump and tshark. 229 is
# raw IPv6, so an interface that saw both families has an IDB for each.
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
# Bytes of headers written per event at most: IPv6 (40) + TCP with options (60).
MAX_HEADER = 100
SNAPLEN = 262144
TCP_WINDOW = 65535

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 2, 3, 9
_SHB_USERAPPL = 4


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(comment: str) -> bytes:
    options = (
        _option(_OPT_COMMENT, comment.encode())
        + _option(_SHB_USERAPPL, f"tracer {__version__}".encode())
        + _option(_OPT_END, b"")
    )
    return _block(_SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + options)


def interface_description(name: str, description: str, linktype: int = LINKTYPE_IPV4) -> bytes:
    options = (
        _option(_IF_NAME, name.encode())
        + _option(_IF_DESCRIPTION, description.encode())
        + _option(_IF_TSRESOL, bytes([9]))
        + _option(_OPT_END, b"")
    )
    return _block(_IDB, struct.pack("<HHI", linktype, 0, SNAPLEN) + options)


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


def _bracketed(texts: np.ndarray) -> np.ndarray:
    """IPv6 addresses in brackets, as they are written before a port."""
    six = np.char.find(texts.astype(str), ":") >= 0
    return np.where(six, np.char.add(np.char.add("[", texts), "]"), texts) if six.any() else texts


def comments(ev: pd.DataFrame) -> list[str]:
    node = ev["node"].astype(str).to_numpy()
    probe = ev["probe"].astype(str).to_numpy()
    netns = ev["netns"].astype(str).to_numpy()
    ifname = ev["ifname"].astype(str).to_numpy()
    hook = ev["hook"].astype(str).to_numpy()
    kind = ev["nat_kind"].astype(str).to_numpy()
    reason = ev["drop_reason"].astype(str).to_numpy()
    first = ev["nat_first"].to_numpy()
    nat_ns = ev["nat_ns"].to_numpy()
    length = ev["len"].to_numpy()
    packet = ev["packet"].to_numpy() if "packet" in ev else np.zeros(len(ev), dtype=np.int64)
    hop = ev["hop"].to_numpy() if "hop" in ev else np.zeros(len(ev), dtype=np.int64)
    before = [_bracketed(np.asarray(ints_to_strings(ev[c].to_numpy()).astype(str)))
              for c in ("src", "dst")]
    sport, dport = ev["sport"].to_numpy(), ev["dport"].to_numpy()
    out = []
    for i in range(len(ev)):
        text = (
            f"tracer packet {packet[i]} hop {hop[i]}: node={node[i]} probe={probe[i]} "
            f"netns={netns[i]} if={ifname[i]} len={length[i]}"
        )
        if probe[i] == "nat":
            text += (
                f" hook={hook[i]} nat={kind[i]}{' first' if first[i] else ''} "
                f"before={before[0][i]}:{sport[i]}->{before[1][i]}:{dport[i]} nat_ns={nat_ns[i]}"
            )
        elif hook[i]:
            text += f" hook={hook[i]}"
        if reason[i]:
            text += f" drop_reason={reason[i]}"
        out.append(text)
    return out


def _as_packets(
    source: str | Path | Sequence[str | Path] | Capture | EventSet | Packets,
) -> Packets:
    if isinstance(source, Packets):
        return source
    if isinstance(source, EventSet):
        return assemble(source)
    if isinstance(source, Capture):
        from tracer.analysis.events import from_captures

        return assemble(from_captures([source]))
    paths = [source] if isinstance(source, str | Path) else list(source)
    return assemble(load_events(paths))


# Events per batch: headers, comments and blocks are built for this many
# events at a time (~2 KB each while built), so memory stays flat however
# many events the capture holds; the batches' bytes follow each other as
# one pass over all events would write them.
EXPORT_BATCH = 16384


def _sort_order(ev: pd.DataFrame) -> np.ndarray:
    """Positions of the events in (t, packet, hop) order, stable (as
    DataFrame.sort_values(kind="stable")): the order they are written in,
    without copying the frame."""
    return np.lexsort([ev[c].to_numpy() for c in ("hop", "packet", "t")])


def _interface_keys(ev: pd.DataFrame) -> list[str]:
    """node, netns, interface and, for IPv6 events, '6' (their link type differs)."""
    v6 = (ev["out_src"].to_numpy() >= IPV6_BASE) | (ev["out_dst"].to_numpy() >= IPV6_BASE)
    return [f"{n}\0{ns}\0{i}" + ("\0" + "6" if six else "") for n, ns, i, six in zip(
        ev["node"].astype(str), ev["netns"].astype(str), ev["ifname"].astype(str), v6,
        strict=True)]


class _Interfaces:
    """One Interface Description Block per (node, netns, interface), numbered
    by first appearance in written order. Found a batch at a time, so memory
    follows the interfaces, not the events."""

    def __init__(self, ev: pd.DataFrame, order: np.ndarray):
        self.codes: dict[str, int] = {}
        self.first: list[int] = []  # row of ev where each interface first appears
        for a in range(0, len(order), EXPORT_BATCH):
            rows = order[a : a + EXPORT_BATCH]
            for row, key in zip(rows, _interface_keys(ev.iloc[rows]), strict=True):
                if key not in self.codes:
                    self.codes[key] = len(self.codes)
                    self.first.append(int(row))

    def names(self) -> list[tuple[str, str, str, bool]]:
        """(node, netns, interface, IPv6) of each interface, in code order."""
        return [(*key.split("\0")[:3], key.endswith("\0" + "6")) for key in self.codes]  # type: ignore[misc]

    def codes_of(self, batch: pd.DataFrame) -> list[int]:
        return [self.codes[key] for key in _interface_keys(batch)]


def _packet_blocks(ev: pd.DataFrame, iface_codes: list[int], payload: str) -> bytes:
    """The Enhanced Packet Blocks of a batch of events (in written order)."""
    hdr, hlen = headers(ev)
    notes = comments(ev)
    length = ev["len"].to_numpy().astype(np.int64)
    t = ev["t"].to_numpy().astype(np.int64)
    chunks = []
    for i in range(len(ev)):
        captured = int(hlen[i])
        data = hdr[i, :captured].tobytes()
        orig = max(int(length[i]), captured)
        if payload == "zeros":
            data += b"\0" * (orig - captured)
            captured = orig
        ts = int(t[i])
        body = (
            struct.pack("<IIIII", iface_codes[i], (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF,
                        captured, orig)
            + data
            + b"\0" * ((-len(data)) % 4)
            + _option(_OPT_COMMENT, notes[i].encode())
            + _option(_OPT_END, b"")
        )
        chunks.append(_block(_EPB, body))
    return b"".join(chunks)


def export_pcapng(source, out_path: str | Path, *, payload: str = "omit") -> int:
    """Write one pcapng packet per event; returns the number of packets written.
    Streams: EXPORT_BATCH events are turned into packets at a time."""
    if payload not in ("omit", "zeros"):
        raise ValueError("payload must be 'omit' or 'zeros'")
    refuse_overlap(out_path, source if isinstance(source, list | tuple) else [source])
    packets = _as_packets(source)
    ev = packets.events
    order = _sort_order(ev)
    interfaces = _Interfaces(ev, order)
    ino = ev["netns_ino"].to_numpy()
    ifindex = ev["ifindex"].to_numpy()
    comment = (
        "Synthesized by tracer from eBPF events: IPv4 or IPv6 and TCP/UDP headers rebuilt from "
        "captured fields (TCP window and options, DF and TOS not captured: window 65535, no "
        "options, 0; IPv6 flow label and extension headers neither: 0, none); "
        + ("payload omitted, original length kept" if payload == "omit" else "payload zero-filled")
    )
    out_path = Path(out_path)
    try:
        with replacing(out_path) as f:  # 0600, complete or not at all (tracer.safe_output)
            f.write(section_header(comment))
            for i, (node, netns, ifname, v6) in zip(interfaces.first, interfaces.names(),
                                                     strict=True):
                name = f"{node}/{netns or ino[i]}/{ifname}"
                f.write(
                    interface_description(
                        name,
                        f"node {node}, netns {netns or '?'} (inode {ino[i]}), "
                        f"{ifname} ifindex {ifindex[i]}" + (", IPv6" if v6 else ""),
                        LINKTYPE_IPV6 if v6 else LINKTYPE_IPV4,
                    )
                )
            for a in range(0, len(order), EXPORT_BATCH):
                batch = ev.iloc[order[a : a + EXPORT_BATCH]].reset_index(drop=True)
                f.write(_packet_blocks(batch, interfaces.codes_of(batch), payload))
    except OSError as exc:
        raise CaptureFileError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    return len(order)
