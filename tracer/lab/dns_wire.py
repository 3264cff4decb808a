"""The DNS wire format, as much as the lab's UDP traffic needs (RFC 1035):
build a query, and read a TXT answer back, checking that it is the answer to
that query (transaction id, flags, the question echoed).

Every way an answer can be short or garbled raises BadAnswer with a short
reason (the traffic engine counts it as a failure kind); nothing else
escapes, whatever bytes arrive.
"""

from __future__ import annotations

import struct

from tracer.errors import LabError, UsageError

TYPE_A = 1
TYPE_TXT = 16
CLASS_IN = 1

HEADER = struct.Struct("!HHHHHH")  # id, flags, qd, an, ns, ar counts
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
_OPCODE_MASK = 0x7800
_RCODE_MASK = 0x000F
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

# A name has at most 127 labels; more pointer jumps than that is a loop.
_MAX_JUMPS = 128


class BadAnswer(LabError):
    """A datagram that is not a good answer to our query; args[0] says why."""


def encode_name(name: str) -> bytes:
    """'whoami.lab' -> b'\\x06whoami\\x03lab\\x00'."""
    labels = name.rstrip(".").split(".") if name.rstrip(".") else []
    out = b""
    for label in labels:
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            raise UsageError(f"DNS name {name[:80]!r}: not ASCII") from None
        if not 1 <= len(raw) <= 63:
            raise UsageError(f"DNS name {name[:80]!r}: a label must be 1 to 63 bytes")
        out += bytes([len(raw)]) + raw
    out += b"\x00"
    if len(out) > 255:
        raise UsageError(f"DNS name {name[:80]!r}: longer than 255 bytes")
    return out


def build_query(txid: int, name: str, qtype: int = TYPE_TXT) -> bytes:
    """One question, recursion desired (as a stub resolver asks)."""
    if not 0 <= txid <= 0xFFFF:
        raise UsageError(f"DNS transaction id out of range: {txid}")
    return HEADER.pack(txid, FLAG_RD, 1, 0, 0, 0) + encode_name(name) + _TYPE_CLASS.pack(
        qtype, CLASS_IN
    )


def read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at offset; (name, offset after it)."""
    labels: list[str] = []
    end: int | None = None  # where the name ends in place (before a pointer)
    jumps = 0
    length_so_far = 0
    while True:
        if offset >= len(msg):
            raise BadAnswer("truncated name")
        n = msg[offset]
        if n & 0xC0 == 0xC0:
            if offset + 1 >= len(msg):
                raise BadAnswer("truncated name")
            target = ((n & 0x3F) << 8) | msg[offset + 1]
            jumps += 1
            # Pointers go back to something already read; anything else loops
            # or points at nothing.
            if target >= offset or jumps > _MAX_JUMPS:
                raise BadAnswer("bad name pointer")
            if end is None:
                end = offset + 2
            offset = target
            continue
        if n & 0xC0:
            raise BadAnswer("bad label type")
        if n == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        label = msg[offset + 1 : offset + 1 + n]
        if len(label) < n:
            raise BadAnswer("truncated name")
        length_so_far += n + 1
        if length_so_far > 255:
            raise BadAnswer("name too long")
        labels.append(label.decode("ascii", errors="replace"))
        offset += 1 + n


def _unpack(fmt: struct.Struct, msg: bytes, offset: int, what: str) -> tuple:
    if offset + fmt.size > len(msg):
        raise BadAnswer(f"truncated {what}")
    return fmt.unpack_from(msg, offset)


def _txt_strings(rdata: bytes) -> str:
    """A TXT record's character-strings, joined (RFC 7208 3.3 style)."""
    parts = []
    i = 0
    while i < len(rdata):
        n = rdata[i]
        part = rdata[i + 1 : i + 1 + n]
        if len(part) < n:
            raise BadAnswer("truncated TXT string")
        parts.append(part)
        i += 1 + n
    return b"".join(parts).decode("utf-8", errors="replace")


def parse_txt_answer(msg: bytes, txid: int, name: str) -> tuple[str, ...]:
    """The TXT texts that answer `name` in msg, the reply to query txid."""
    txid_got, flags, qdcount, ancount, _, _ = _unpack(HEADER, msg, 0, "header")
    if txid_got != txid:
        raise BadAnswer("wrong id")
    if not flags & FLAG_QR:
        raise BadAnswer("not a response")
    if flags & _OPCODE_MASK:
        raise BadAnswer("wrong opcode")
    if flags & FLAG_TC:
        raise BadAnswer("truncated (TC)")
    rcode = flags & _RCODE_MASK
    if rcode:
        raise BadAnswer(f"rcode {RCODES.get(rcode, rcode)}")
    if qdcount != 1:
        raise BadAnswer("wrong question count")
    qname, offset = read_name(msg, HEADER.size)
    qtype, qclass = _unpack(_TYPE_CLASS, msg, offset, "question")
    offset += _TYPE_CLASS.size
    want = name.rstrip(".").lower()
    if qname.lower() != want or qtype != TYPE_TXT or qclass != CLASS_IN:
        raise BadAnswer("wrong question")
    texts = []
    for _ in range(ancount):
        owner, offset = read_name(msg, offset)
        rtype, rclass, _ttl, rdlength = _unpack(_RR_FIXED, msg, offset, "record")
        offset += _RR_FIXED.size
        rdata = msg[offset : offset + rdlength]
        if len(rdata) < rdlength:
            raise BadAnswer("truncated record")
        offset += rdlength
        if rtype == TYPE_TXT and rclass == CLASS_IN and owner.lower() == want:
            texts.append(_txt_strings(rdata))
    if not texts:
        raise BadAnswer("no TXT answer")
    return tuple(texts)
