"""NFT_MSG_TRACE messages (group NFNLGRP_NFTRACE) -> TraceEvent: which rule
of which chain a traced packet met, with what verdict, and the packet's IPv4
tuple from the headers the kernel copies into the message.

The kernel puts no timestamp in a trace message: ts is CLOCK_MONOTONIC when
the tracer read it, so it is late by the socket's queueing and only orders
events; the trace id, not ts, says which events belong to one packet."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from tracer.rules.nfnetlink import (
    be32,
    be32_signed,
    be64,
    cstr,
    parse_attrs,
)

NFTA_TRACE_TABLE = 1
NFTA_TRACE_CHAIN = 2
NFTA_TRACE_RULE_HANDLE = 3
NFTA_TRACE_TYPE = 4
NFTA_TRACE_VERDICT = 5
NFTA_TRACE_ID = 6
NFTA_TRACE_NETWORK_HEADER = 8
NFTA_TRACE_TRANSPORT_HEADER = 9
NFTA_TRACE_IIF = 10
NFTA_TRACE_OIF = 12
NFTA_TRACE_MARK = 14
NFTA_TRACE_NFPROTO = 15
NFTA_TRACE_POLICY = 16
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2

TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
# Netfilter verdicts (NF_*, low byte) and nf_tables' own (NFT_*, negative).
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop",
            -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
TERMINAL = frozenset({"drop", "accept", "stolen", "queue", "stop"})
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class TraceEvent:
    ts: int  # CLOCK_MONOTONIC ns when read (no kernel timestamp exists)
    trace_id: int  # one packet (the kernel hashes the skb): groups its events
    type: str  # "rule", "return" or "policy"
    family: int  # NFPROTO_* of the table
    table: str
    chain: str
    handle: int | None  # the rule's handle (type "rule" only)
    verdict: str | None  # "accept", "drop", "jump", "goto", "return", "continue", ...
    target: str | None  # the chain of a jump/goto
    policy: str | None  # the base chain's policy (type "policy")
    iif: int | None
    oif: int | None
    mark: int | None
    nfproto: int | None
    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None
    ip_id: int | None = None  # with seq: which packet, to match the capture's events
    seq: int | None = None

    @property
    def terminal(self) -> bool:
        """This event ends the packet's walk of its base chain."""
        return self.type == "policy" or self.verdict in TERMINAL


def verdict_name(code: int) -> str:
    if code >= 0:
        code &= 0xFF  # NF_QUEUE carries its queue number in the upper bits
    return VERDICTS.get(code, str(code))


def _verdict(payload: bytes) -> tuple[str | None, str | None]:
    fields = parse_attrs(payload)
    code = fields.get(NFTA_VERDICT_CODE)
    chain = fields.get(NFTA_VERDICT_CHAIN)
    return (verdict_name(be32_signed(code)) if code else None,
            cstr(chain) if chain is not None else None)


def _ipv4_tuple(network: bytes | None, transport: bytes | None) -> dict[str, object]:
    if not network or len(network) < 20 or network[0] >> 4 != 4:
        return {}
    proto = network[9]
    out: dict[str, object] = {"src": str(ipaddress.IPv4Address(network[12:16])),
                              "dst": str(ipaddress.IPv4Address(network[16:20])), "proto": proto,
                              "ip_id": struct.unpack(">H", network[4:6])[0]}
    if transport and len(transport) >= 4 and proto in (6, 17, 132):
        out["sport"], out["dport"] = struct.unpack(">HH", transport[:4])
        if proto == 6 and len(transport) >= 14:
            out["tcp_flags"] = transport[13]
            out["seq"] = struct.unpack(">I", transport[4:8])[0]
    return out


def _optional(fields: dict[int, bytes], kind: int) -> int | None:
    payload = fields.get(kind)
    return be32(payload) if payload else None


def decode_trace(family: int, payload: bytes, ts: int) -> TraceEvent:
    """One NFT_MSG_TRACE message's attributes (after nfgenmsg)."""
    fields = parse_attrs(payload)
    verdict, target = _verdict(fields[NFTA_TRACE_VERDICT]) if NFTA_TRACE_VERDICT in fields else (None, None)
    policy = _optional(fields, NFTA_TRACE_POLICY)
    handle = fields.get(NFTA_TRACE_RULE_HANDLE)
    return TraceEvent(
        ts=ts,
        trace_id=_optional(fields, NFTA_TRACE_ID) or 0,
        type=TRACE_TYPES.get(_optional(fields, NFTA_TRACE_TYPE) or 0, "unknown"),
        family=family,
        table=cstr(fields.get(NFTA_TRACE_TABLE, b"")),
        chain=cstr(fields.get(NFTA_TRACE_CHAIN, b"")),
        handle=be64(handle) if handle else None,
        verdict=verdict,
        target=target,
        policy=verdict_name(policy) if policy is not None else None,
        iif=_optional(fields, NFTA_TRACE_IIF),
        oif=_optional(fields, NFTA_TRACE_OIF),
        mark=_optional(fields, NFTA_TRACE_MARK),
        nfproto=_optional(fields, NFTA_TRACE_NFPROTO),
        **_ipv4_tuple(fields.get(NFTA_TRACE_NETWORK_HEADER), fields.get(NFTA_TRACE_TRANSPORT_HEADER)),
    )
