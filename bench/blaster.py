"""A deterministic event generator for the capture-throughput benchmark.

Run inside a lab pod's network namespace, it sends TCP segments from the
pod's own address to its own nginx port (the Service's targetPort) through a
raw socket, paced to a given packet rate, with sendmmsg so Python costs one
call per batch. Every packet takes one fixed path through the pod's loopback,
and each probe point of the tracer sees it exactly once:

    tx    net_dev_queue on lo
    rx    netif_receive_skb on lo
    drop  kfree_skb, reason TCP_CSUM: the TCP checksum is wrong on purpose,
          so tcp_v4_rcv drops the segment before any socket lookup and
          nothing answers it. (A valid RST to the listener would be dropped
          too, as TCP_RESET, but after the socket lookup the kernel has
          cleared skb->dev, and the tracer's drop probe, which scopes drops
          by the device's namespace, does not see those drops.)

Every packet matches the Service filter (pod IP:targetPort is an endpoint
key), and nothing else is sent, so the offered events are exactly
3 x packets sent, counted here independently of the tracer. The pod netns
has no netfilter hooks, so no NAT events and no conntrack cost.

    ip netns exec lab-pod-... python bench/blaster.py --addr 10.217.120.72 \
        --port 80 --rate 300000 --packets 900000

Prints one JSON line: packets sent, seconds, errors.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import struct
import time

EVENTS_PER_PACKET = 3  # tx, rx, drop (see above)
BATCH = 256

_libc = ctypes.CDLL(None, use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def bad_segment(addr: str, sport: int, dport: int) -> bytes:
    """IPv4 + TCP RST from addr:sport to addr:dport whose TCP checksum is off by one."""
    src = dst = socket.inet_aton(addr)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x04, 0, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    wrong = checksum(pseudo + tcp) ^ 1
    tcp = tcp[:16] + struct.pack("!H", wrong) + tcp[18:]
    # id 0: the kernel fills it in; tot_len and checksum too (IP_HDRINCL, raw(7)).
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, socket.IPPROTO_TCP,
                     0, src, dst)
    return ip + tcp


def blast(addr: str, port: int, rate: float, packets: int, sport: int = 40000) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    data = bad_segment(addr, sport, port)
    pkt = ctypes.create_string_buffer(data, len(data))  # no trailing NUL
    dest = ctypes.create_string_buffer(
        struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + socket.inet_aton(addr) + bytes(8)
    )
    iov = _Iovec(ctypes.cast(pkt, ctypes.c_void_p), len(data))
    vec = (_Mmsghdr * BATCH)()
    for m in vec:
        m.hdr.name = ctypes.cast(dest, ctypes.c_void_p)
        m.hdr.namelen = 16
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    fd = sock.fileno()
    sendmmsg = _libc.sendmmsg
    sent = 0
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    while sent < packets:
        # Pace: never ahead of rate; a late sender catches up in full batches.
        ahead = sent / rate - (time.perf_counter() - t0)
        if ahead > 0:
            time.sleep(ahead)
        n = sendmmsg(fd, vec, min(BATCH, packets - sent), 0)
        if n < 0:
            name = os.strerror(ctypes.get_errno())
            errors[name] = errors.get(name, 0) + 1
            if errors[name] > 1000:
                break
            continue
        sent += n
    elapsed = time.perf_counter() - t0
    sock.close()
    return {"packets": sent, "seconds": round(elapsed, 4),
            "packets_per_s": round(sent / elapsed, 1) if elapsed else 0.0, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="the pod's own address")
    p.add_argument("--port", type=int, default=80, help="a port the pod listens on")
    p.add_argument("--rate", type=float, required=True, help="packets per second")
    p.add_argument("--packets", type=int, required=True)
    a = p.parse_args(argv)
    print(json.dumps(blast(a.addr, a.port, a.rate, a.packets)), flush=True)


if __name__ == "__main__":
    main()
