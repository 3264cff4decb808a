"""Exports a capture as pcapng, one packet per event, for Wireshark and tcpdump.

Events carry header fields, not packet bytes, so each packet is synthesized:
an IPv4 header (version 4, IHL 5, the captured total length, IP ID, TTL,
protocol, addresses; DF and TOS are not captured and written as 0), or for
an IPv6 event a 40-byte IPv6 header (traffic class and flow label 0, payload
length, next header = the transport protocol, hop limit from ``ttl``; the
extension headers the capture counted in ``ip_hlen`` are not captured and
not written, so the packet is shorter than on the wire by their size;
tracer.analysis.pcap_headers), and a TCP
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
Link type: raw IPv4 (228) or raw IPv6 (229) for a capture of one family, as
before; a capture of both is written as Ethernet (1) with zero MACs, since
libpcap (tcpdump) refuses a file whose interfaces differ in link type.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tracer import __version__
from tracer.analysis.addresses import IPV6_BASE, ints_to_strings
from tracer.analysis.events import EventSet, load_events
from tracer.analysis.packets import Packets, assemble
from tracer.analysis.pcap_headers import headers
from tracer.capfile import Capture
from tracer.errors import CaptureFileError
from tracer.safe_output import refuse_overlap, replacing

# Raw IPv4, no link-layer header. Not LINKTYPE_RAW (101): libpcap 1.10 maps
# 101 to DLT_RAW for the first interface only and then rejects the second
# interface block of a multi-interface file ("type 101 different from the type
# of the first interface"); 228 is read by both tcpdump and tshark. 229 is
# raw IPv6. libpcap wants one link type in a file, so a capture of both
# families is written as Ethernet (1): each packet behind a 14-byte header
# with zero MAC addresses (not captured) and the family's EtherType.
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_ETHERNET = 1
_ETHERTYPE = {False: b"\x08\x00", True: b"\x86\xdd"}
SNAPLEN = 262144

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
    return [f"{n}\0{ns}\0{i}" for n, ns, i in zip(
        ev["node"].astype(str), ev["netns"].astype(str), ev["ifname"].astype(str), strict=True)]


def _is_ipv6(ev: pd.DataFrame) -> np.ndarray:
    return (ev["out_src"].to_numpy() >= IPV6_BASE) | (ev["out_dst"].to_numpy() >= IPV6_BASE)


def _linktype(ev: pd.DataFrame) -> int:
    """Raw IPv4 or raw IPv6 for a capture of one family, Ethernet for both."""
    v6 = _is_ipv6(ev)
    if v6.all() and len(v6):
        return LINKTYPE_IPV6
    return LINKTYPE_ETHERNET if v6.any() else LINKTYPE_IPV4


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

    def names(self) -> list[tuple[str, str, str]]:
        return [tuple(key.split("\0")) for key in self.codes]  # type: ignore[misc]

    def codes_of(self, batch: pd.DataFrame) -> list[int]:
        return [self.codes[key] for key in _interface_keys(batch)]


def _packet_blocks(ev: pd.DataFrame, iface_codes: list[int], payload: str,
                   linktype: int = LINKTYPE_IPV4) -> bytes:
    """The Enhanced Packet Blocks of a batch of events (in written order)."""
    hdr, hlen = headers(ev)
    ethernet = linktype == LINKTYPE_ETHERNET
    v6 = _is_ipv6(ev) if ethernet else None
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
        if ethernet:
            data = b"\0" * 12 + _ETHERTYPE[bool(v6[i])] + data
            captured, orig = captured + 14, orig + 14
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
    linktype = _linktype(ev)
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
            for i, (node, netns, ifname) in zip(interfaces.first, interfaces.names(), strict=True):
                name = f"{node}/{netns or ino[i]}/{ifname}"
                f.write(
                    interface_description(
                        name,
                        f"node {node}, netns {netns or '?'} (inode {ino[i]}), "
                        f"{ifname} ifindex {ifindex[i]}",
                        linktype,
                    )
                )
            for a in range(0, len(order), EXPORT_BATCH):
                batch = ev.iloc[order[a : a + EXPORT_BATCH]].reset_index(drop=True)
                f.write(_packet_blocks(batch, interfaces.codes_of(batch), payload, linktype))
    except OSError as exc:
        raise CaptureFileError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    return len(order)
