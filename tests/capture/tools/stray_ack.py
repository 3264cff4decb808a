"""Send N bare TCP ACKs (no connection behind them) from the lab client to
DST:PORT with a raw socket; run inside the lab-client namespace. Each one is
DNATed to a pod whose listening socket has no such connection and drops it
(reason TCP_FLAGS). Usage, from the repository's root:
python -m tests.capture.tools.stray_ack DST PORT N FIRST_SPORT"""

from __future__ import annotations

import socket
import struct
import sys

from bench.blaster import checksum

SOURCE = "192.168.64.10"


def main() -> None:
    dst, port, count, first_sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    for i in range(count):
        # sport, dport, seq, ack, data offset (5 words), flags ACK, window, csum, urg
        header = struct.pack("!HHIIBBHHH", first_sport + i, port, 1000, 2000, 5 << 4, 0x10, 512, 0, 0)
        pseudo = socket.inet_aton(SOURCE) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header))
        header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
        sock.sendto(header, (dst, 0))


if __name__ == "__main__":
    main()
