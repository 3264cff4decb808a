"""Every value that crosses between the BPF programs and Python: Python's face
of bpf/tracer.h, and the only one.

Constants keep the C names without the TRACER_ prefix (TRACER_STAT_LOST is
STAT_LOST here), so tests/capture/test_abi.py can compile bpf/tracer.h with
gcc and hold every #define and every field of struct tracer_event against
this module, by name. The event's field meanings are in the header; what the
decoded columns mean is the capture file's business (tracer.capfile).
"""

from __future__ import annotations

import socket

import numpy as np

from tracer.capfile import ENCAPS, NAT_KINDS, PROBES

# Probe points: TRACER_PROBE_* is the 1-based index in capfile.PROBES, which
# is also the order in which every list of points (--probes, doctor,
# lost_by_probe) is given.
POINTS = PROBES
PROBE_RX, PROBE_TX, PROBE_NAT, PROBE_DROP = (POINTS.index(p) + 1 for p in ("rx", "tx", "nat", "drop"))
PROBE_NR = len(POINTS) + 1

# TRACER_NAT_*: 1-based index in capfile.NAT_KINDS, 0 for none.
NAT_NONE = 0
NAT_DNAT, NAT_SNAT, NAT_REV_DNAT, NAT_REV_SNAT = (
    NAT_KINDS.index(k) + 1 for k in ("dnat", "snat", "rev_dnat", "rev_snat"))

# TRACER_ENCAP_*: 1-based index in capfile.ENCAPS, 0 for a packet in no tunnel.
ENCAP_NONE = 0
ENCAP_VXLAN, ENCAP_IPIP = (ENCAPS.index(k) + 1 for k in ("vxlan", "ipip"))

# The hook of events that are not NAT events (NF_INET_* otherwise).
HOOK_NONE = 255

# Counters of the per-CPU array "stats" (summed over CPUs).
STAT_EVENTS = 0
STAT_LOST = 1
STAT_FLOW_OVERFLOW = 2
STAT_IPV6_SKIPPED = 3
STAT_NON_IP = 4
STAT_NAT_UNPAIRED = 5
STAT_PARSE_ERROR = 6
STAT_NAT_UNTIMED = 7
STAT_LOST_BASE = 8  # + PROBE_*: events lost per probe point
STAT_ICMP_UNQUOTED = 14  # ICMP errors whose quoted packet was unreadable
STAT_NR = 16

# ICMP types whose errors the capture follows to the packet they quote.
ICMP_DEST_UNREACH = 3
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12

# The per-CPU array "nat_hist": ((hook * 2) + first) * HIST_SLOTS + slot.
HIST_HOOKS = 5
HIST_SLOTS = 32
HIST_NR = HIST_HOOKS * 2 * HIST_SLOTS

# Values of the "svc_keys" map (struct tracer_svc_key -> role bits).
ROLE_FRONTEND = 1
ROLE_ENDPOINT = 2

# struct tracer_event: (name, numpy type, offset). Fields in network byte
# order are declared big-endian ('>') so numpy does the byte swapping.
EVENT_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("ts_ns", "<u8", 0),
    ("skb", "<u8", 8),
    ("ct", "<u8", 16),
    ("netns_ino", "<u4", 24),
    ("ifindex", "<u4", 28),
    ("ifname", "S16", 32),
    ("saddr", ">u4", 48),
    ("daddr", ">u4", 52),
    ("nat_saddr", ">u4", 56),
    ("nat_daddr", ">u4", 60),
    ("seq", ">u4", 64),
    ("ack", ">u4", 68),
    ("nat_ns", "<u4", 72),
    ("drop_reason", "<u4", 76),
    ("sport", ">u2", 80),
    ("dport", ">u2", 82),
    ("nat_sport", ">u2", 84),
    ("nat_dport", ">u2", 86),
    ("ip_id", ">u2", 88),
    ("len", ">u2", 90),
    ("cpu", "<u2", 92),
    ("probe", "u1", 94),
    ("hook", "u1", 95),
    ("proto", "u1", 96),
    ("ttl", "u1", 97),
    ("tcp_flags", "u1", 98),
    ("nat_kind", "u1", 99),
    ("nat_first", "u1", 100),
    ("ip_hlen", "u1", 101),
    ("tcp_hlen", "u1", 102),
    ("encap", "u1", 103),
    ("outer_saddr", ">u4", 104),
    ("outer_daddr", ">u4", 108),
    ("quoted_saddr", ">u4", 112),
    ("quoted_daddr", ">u4", 116),
    ("quoted_sport", ">u2", 120),
    ("quoted_dport", ">u2", 122),
    ("icmp_type", "u1", 124),
    ("icmp_code", "u1", 125),
    ("quoted_proto", "u1", 126),
    ("pad", "u1", 127),
)
EVENT_SIZE = 128

EVENT_DTYPE = np.dtype(
    {
        "names": [n for n, _, _ in EVENT_FIELDS],
        "formats": [t for _, t, _ in EVENT_FIELDS],
        "offsets": [o for _, _, o in EVENT_FIELDS],
        "itemsize": EVENT_SIZE,
    }
)

# struct tracer_svc_key: (name, numpy type, offset).
SVC_KEY_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("addr", ">u4", 0),
    ("port", ">u2", 4),
    ("proto", "u1", 6),
    ("pad", "u1", 7),
)
SVC_KEY_SIZE = 8

# A ring buffer record: 8-byte header (length with BUSY/DISCARD bits, page
# offset), then the event; records are 8-byte aligned (kernel/bpf/ringbuf.c).
RINGBUF_HDR = 8
RECORD_SIZE = (RINGBUF_HDR + EVENT_SIZE + 7) & ~7
RECORD_DTYPE = np.dtype(
    {"names": ["hdr_len", "ev"], "formats": ["<u4", EVENT_DTYPE], "offsets": [0, 8],
     "itemsize": RECORD_SIZE}
)


# Addresses and ports stay in network byte order on the BPF side: a map key
# or a compile-time constant compared with one is the number the C sees when
# it loads those bytes as a u32/u16 on a little-endian CPU (x86-64, arm64).
def be32_as_loaded(ip: str) -> int:
    """An IPv4 address as a network-order u32 loaded on little-endian."""
    return int.from_bytes(socket.inet_aton(ip), "little")


def be16_as_loaded(port: int) -> int:
    """A port as a network-order u16 loaded on little-endian."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")
