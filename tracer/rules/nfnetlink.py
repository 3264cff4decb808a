"""nfnetlink over a raw AF_NETLINK socket: netlink headers and attributes,
nf_tables batches, and the kernel's ACK/error answers turned into typed
errors. Only the stdlib: the message formats are small and fixed (linux/
netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h)."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tracer.errors import EnvironmentProblem, KernelFeatureError, PrivilegeError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1

NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END = 0x11
NFNETLINK_V0 = 0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian on the wire)
_NLATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


# --- attributes -----------------------------------------------------------

def attr(kind: int, payload: bytes) -> bytes:
    body = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return body + b"\0" * (_align(len(body)) - len(body))


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("B", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attribute type (flags stripped) -> payload; a repeated type keeps the last."""
    return dict(iter_attrs(data))


def iter_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break  # malformed: stop rather than loop forever
        yield kind & NLA_TYPE_MASK, data[offset + _NLATTR.size: offset + length]
        offset += _align(length)


def be32(payload: bytes) -> int:
    return struct.unpack(">I", payload[:4])[0]


def be32_signed(payload: bytes) -> int:
    return struct.unpack(">i", payload[:4])[0]


def be64(payload: bytes) -> int:
    return struct.unpack(">Q", payload[:8])[0]


def cstr(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


# --- messages -------------------------------------------------------------

def message(msg_type: int, flags: int, seq: int, family: int, body: bytes,
            res_id: int = 0) -> bytes:
    """One nlmsghdr + nfgenmsg + attributes."""
    payload = _NFGENMSG.pack(family, NFNETLINK_V0, socket.htons(res_id)) + body
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def nft_type(msg: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | msg


@dataclass(frozen=True)
class Message:
    msg_type: int
    flags: int
    seq: int
    family: int
    payload: bytes  # after nfgenmsg (attributes), or the raw body of NLMSG_ERROR


def split_messages(data: bytes) -> Iterator[Message]:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        body = data[offset + _NLMSGHDR.size: offset + length]
        if msg_type in (NLMSG_ERROR, NLMSG_DONE) or len(body) < _NFGENMSG.size:
            yield Message(msg_type, flags, seq, 0, body)
        else:
            family = _NFGENMSG.unpack_from(body)[0]
            yield Message(msg_type, flags, seq, family, body[_NFGENMSG.size:])
        offset += _align(length)


# --- errors ---------------------------------------------------------------

def netlink_error(err: int, what: str) -> Exception:
    """The kernel's answer to one message of ours, as a typed error."""
    text = f"{what}: {os.strerror(err)}"
    if err == errno.EPERM:
        return PrivilegeError(f"{text} (needs CAP_NET_ADMIN in the network namespace)")
    if err == errno.EOPNOTSUPP:
        return KernelFeatureError(f"{text}: this kernel does not support it")
    return EnvironmentProblem(text)


# --- the socket -----------------------------------------------------------

class NfnlSocket:
    """One NETLINK_NETFILTER socket. Made in the caller's (thread's) network
    namespace and bound to it for life, whatever the thread does later."""

    def __init__(self, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except PermissionError as exc:
            raise PrivilegeError("netlink (NETLINK_NETFILTER): needs root") from exc
        self.sock.bind((0, 0))
        self.timeout = timeout
        self.seq = 0
        if rcvbuf:
            self._grow_rcvbuf(rcvbuf)

    def _grow_rcvbuf(self, size: int) -> None:
        # SO_RCVBUFFORCE passes rmem_max (root only); SO_RCVBUF is capped by it.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def subscribe(self, group: int) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def batch(self, parts: Iterable[tuple[int, int, int, bytes, str]]) -> None:
        """Send (msg, flags, family, attributes, what) nf_tables messages as one
        transaction (all or nothing) and wait for the kernel's ACK of each.
        Raises the typed error of the first message the kernel refused."""
        begin_seq = self.next_seq()
        out = [message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq, 0, b"",
                       NFNL_SUBSYS_NFTABLES)]
        waiting: dict[int, str] = {}
        for msg, flags, family, body, what in parts:
            seq = self.next_seq()
            waiting[seq] = what
            out.append(message(nft_type(msg), NLM_F_REQUEST | NLM_F_ACK | flags, seq, family, body))
        out.append(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.next_seq(), 0, b"",
                           NFNL_SUBSYS_NFTABLES))
        self.sock.send(b"".join(out))
        self._wait_acks(waiting)

    def _wait_acks(self, waiting: dict[int, str]) -> None:
        failure: Exception | None = None
        while waiting:
            # After a refusal the kernel aborts the batch and may not answer
            # the rest; a short wait then, the full one before.
            ready, _, _ = select.select([self.sock], [], [], 0.2 if failure else self.timeout)
            if not ready:
                if failure:
                    break
                raise EnvironmentProblem(f"nf_tables: no answer from the kernel within {self.timeout}s")
            for msg in split_messages(self.sock.recv(1 << 20)):
                if msg.msg_type != NLMSG_ERROR or msg.seq not in waiting:
                    continue
                what = waiting.pop(msg.seq)
                err = -struct.unpack_from("=i", msg.payload)[0]
                if err and failure is None:
                    failure = netlink_error(err, what)
        if failure is not None:
            raise failure
