"""``--flow`` selections: which packets a user means by a tuple.

Syntax: ``[SRC][->DST][/PROTO]`` where SRC and DST are ``IP``, ``IP:PORT``,
``:PORT`` or ``*`` (anything), and PROTO is tcp, udp, icmp or a number. IP is
IPv4 or IPv6; an IPv6 address with a port is bracketed (``[2001:db8::1]:80``),
without one it may be bare:

    192.168.64.10:43210->192.168.64.57:8088/tcp    one connection, as the client sees it
    192.168.64.10->192.168.64.57:8088              any client port
    ->192.168.64.57:8088                           anything to the Service VIP
    10.217.121.8:80                                no arrow: this endpoint on either side
    /udp                                           every UDP packet
    [fd00:10:96::1]:80->[fd00:10:217::8]:80/tcp    IPv6

A packet matches when any of its hops carries the tuple, before or after NAT,
so a flow written from the client's side also selects the DNATed and
masqueraded hops of the same packets. Replies match too (the tuple reversed)
unless ``bidirectional`` is off: a flow is a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracer.analysis.addresses import endpoint, int_to_ip, ip_to_int, proto_name
from tracer.capfile import PROTO_NUMBERS
from tracer.errors import UsageError


@dataclass(frozen=True)
class Endpoint:
    addr: int | None = None  # None: any
    port: int | None = None

    def text(self) -> str:
        a = "*" if self.addr is None else int_to_ip(self.addr)
        return a if self.port is None else endpoint(a, self.port)


@dataclass(frozen=True)
class FlowSpec:
    src: Endpoint = Endpoint()
    dst: Endpoint = Endpoint()
    proto: int | None = None
    directed: bool = True  # False: no arrow, src may be either side

    def __str__(self) -> str:
        body = f"{self.src.text()}->{self.dst.text()}" if self.directed else self.src.text()
        return body + (f"/{proto_name(self.proto)}" if self.proto is not None else "")


def _split(text: str, whole: str) -> tuple[str, str, bool]:
    """(address text, port text, whether a port was given) of IP, IP:PORT,
    :PORT, [IPV6] or [IPV6]:PORT; a bare IPv6 address (more than one ':')
    has no port."""
    if text.startswith("["):
        addr_text, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"--flow {whole!r}: expected [IPV6]:PORT, got {text!r}")
        return addr_text, rest[1:], bool(rest)
    if text.count(":") > 1:
        return text, "", False
    addr_text, sep, port_text = text.rpartition(":")
    return (addr_text, port_text, True) if sep else (text, "", False)


def _endpoint(text: str, whole: str) -> Endpoint:
    text = text.strip()
    if text in ("", "*"):
        return Endpoint()
    addr_text, port_text, has_port = _split(text, whole)
    addr = None
    if addr_text not in ("", "*"):
        try:
            addr = ip_to_int(addr_text)
        except ValueError:
            raise UsageError(
                f"--flow {whole!r}: {addr_text!r} is not an IPv4 or IPv6 address"
            ) from None
    port = None
    if has_port:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise UsageError(f"--flow {whole!r}: port {port_text!r} is not a number 0-65535")
        port = int(port_text)
    return Endpoint(addr, port)


def parse_flow(text: str) -> FlowSpec:
    """Parse a --flow argument; malformed input raises UsageError naming the problem."""
    whole = text
    if not text or not text.strip():
        raise UsageError(
            "--flow: empty (expected e.g. 192.168.64.10:43210->192.168.64.57:8088/tcp)"
        )
    text = text.strip()
    proto = None
    if "/" in text:
        text, _, proto_text = text.rpartition("/")
        proto_text = proto_text.strip().lower()
        if proto_text in PROTO_NUMBERS:
            proto = PROTO_NUMBERS[proto_text]
        elif proto_text.isdigit() and int(proto_text) < 256:
            proto = int(proto_text)
        else:
            raise UsageError(
                f"--flow {whole!r}: unknown protocol {proto_text!r} (tcp, udp, sctp, icmp or 0-255)"
            )
    if text.count("->") > 1:
        raise UsageError(f"--flow {whole!r}: more than one '->'")
    if "->" in text:
        left, _, right = text.partition("->")
        return FlowSpec(_endpoint(left, whole), _endpoint(right, whole), proto, True)
    if "-" in text or ">" in text:
        raise UsageError(f"--flow {whole!r}: expected SRC->DST")
    return FlowSpec(_endpoint(text, whole), Endpoint(), proto, False)


def _side(ev: pd.DataFrame, addr_col: str, port_col: str, ep: Endpoint) -> np.ndarray:
    ok = np.ones(len(ev), dtype=bool)
    if ep.addr is not None:
        ok &= ev[addr_col].to_numpy() == ep.addr
    if ep.port is not None:
        ok &= ev[port_col].to_numpy() == ep.port
    return ok


def event_mask(ev: pd.DataFrame, flow: FlowSpec, bidirectional: bool = True) -> np.ndarray:
    """Events whose tuple (before or after their NAT rewrite) matches the flow."""
    mask = np.zeros(len(ev), dtype=bool)
    for prefix in ("", "out_"):
        s = (f"{prefix}src" if prefix else "src", f"{prefix}sport")
        d = (f"{prefix}dst" if prefix else "dst", f"{prefix}dport")
        if not flow.directed:
            mask |= _side(ev, *s, flow.src) | _side(ev, *d, flow.src)
            continue
        mask |= _side(ev, *s, flow.src) & _side(ev, *d, flow.dst)
        if bidirectional:
            mask |= _side(ev, *s, flow.dst) & _side(ev, *d, flow.src)
    if flow.proto is not None:
        mask &= ev["proto"].to_numpy() == flow.proto
    return mask


def select_packets(events: pd.DataFrame, flow: FlowSpec, bidirectional: bool = True) -> np.ndarray:
    """Packet ids (sorted) with at least one hop matching the flow."""
    mask = event_mask(events, flow, bidirectional)
    return np.unique(events["packet"].to_numpy()[mask])
