"""The capture file's vocabulary and columns: one row per event. Shared by
the writer (capture engine) and every reader (analysis, notebooks); imports
neither BCC nor anything kernel-side, so analysis runs anywhere.

A capture is a directory:

    <capture>/part-000000.parquet   one file per ~second of capture, each complete
    <capture>/part-000001.parquet   (written under a dot-name, then renamed)
    <capture>/part-000002-000061.parquet  a segment: parts 2..61 merged
                                    (tracer.capfile.rolling; names: parts.py)
    <capture>/_tracer_meta.json     metadata, rewritten atomically every second
                                    (tracer.capfile.meta)

pandas reads it as ``pd.read_parquet("<capture>")`` and DuckDB as
``SELECT * FROM read_parquet('<capture>/*.parquet')``; both ignore the
metadata file (pyarrow skips names starting with '_' or '.'). A capture killed
with SIGKILL loses at most the part being filled, about its last second.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_NAME = "tracer-capture"
# 2 added the tunnel columns (encap, outer_saddr, outer_daddr), 3 the ICMP
# error columns (icmp_type, icmp_code, quoted_*); readers fill them in for
# older captures (ADDED_COLUMNS).
FORMAT_VERSION = 3
PART_GLOB = "part-*.parquet"

# Probe points, as users see them.
PROBES = ("rx", "tx", "nat", "drop")
# Netfilter hooks, by NF_INET_* number (include/uapi/linux/netfilter.h).
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
# What a NAT event did. "rev_snat" is a reply un-masqueraded in PREROUTING
# (destination restored to the client); "rev_dnat" is a reply whose source is
# restored from the pod to the Service VIP in POSTROUTING/INPUT.
NAT_KINDS = ("dnat", "snat", "rev_dnat", "rev_snat")
# Tunnels whose inner packet an event describes (bpf/encap.bpf.h): Calico's
# VXLAN mode (vxlan.calico, UDP 4789) and IPIP mode (tunl0, IPv4 protocol 4).
ENCAPS = ("vxlan", "ipip")
# IP protocols by the names users give them (--proto, --flow, a Service's
# ports) and the numbers the proto column stores.
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}
PROTO_NAMES = {number: name for name, number in PROTO_NUMBERS.items()}

_str = pa.dictionary(pa.int32(), pa.string())

# (name, arrow type, meaning). Order is the file's column order.
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("ts_ns", pa.int64(), "CLOCK_MONOTONIC of the capturing node, ns (bpf_ktime_get_ns)"),
    ("time_ns", pa.int64(), "UTC wall clock, ns since the epoch: ts_ns + the capture's clock offset"),
    ("node", _str, "node that captured the event"),
    ("probe", _str, "probe point: rx, tx, nat, drop"),
    ("hook", _str, "netfilter hook of a nat event (prerouting, input, output, postrouting), else ''"),
    ("netns_ino", pa.uint32(), "inode of the network namespace the packet was in"),
    ("netns", _str, "name of that namespace where known (lab-node-a, lab-pod-..., host), else ''"),
    ("ifindex", pa.uint32(), "interface index (within netns)"),
    ("ifname", _str, "interface name"),
    ("skb", pa.uint64(), "kernel address of the sk_buff: packet identity within one node, reused"),
    ("ct", pa.uint64(), "kernel address of the conntrack entry (0 if none): connection identity on one node"),
    ("cpu", pa.uint16(), "CPU the event ran on"),
    ("proto", pa.uint8(), "IP protocol number (6 tcp, 17 udp, 1 icmp)"),
    ("saddr", _str, "IPv4 source (for nat events: before the rewrite)"),
    ("daddr", _str, "IPv4 destination (for nat events: before the rewrite)"),
    ("sport", pa.uint16(), "source port (0 if none)"),
    ("dport", pa.uint16(), "destination port (0 if none)"),
    ("ip_id", pa.uint16(), "IPv4 identification"),
    ("ttl", pa.uint8(), "IPv4 TTL"),
    ("len", pa.uint16(), "IPv4 total length, bytes"),
    ("tcp_flags", pa.uint8(), "TCP flags byte (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32)"),
    ("ip_hlen", pa.uint8(), "IPv4 header length, bytes"),
    ("tcp_hlen", pa.uint8(), "TCP header length (data offset), bytes; 0 if not TCP. "
     "Payload = len - ip_hlen - tcp_hlen"),
    ("seq", pa.uint32(), "TCP sequence number"),
    ("ack", pa.uint32(), "TCP acknowledgement number"),
    ("nat_kind", _str, "nat events: dnat, snat, rev_dnat, rev_snat; else ''"),
    ("nat_first", pa.bool_(),
     "nat events: this packet ran the NAT rules (new binding: first packet of the connection)"),
    ("nat_saddr", _str, "nat events: source after the rewrite"),
    ("nat_daddr", _str, "nat events: destination after the rewrite"),
    ("nat_sport", pa.uint16(), "nat events: source port after"),
    ("nat_dport", pa.uint16(), "nat events: destination port after"),
    ("nat_ns", pa.uint32(), "nat events: time the NAT hook took for this packet, ns"),
    ("drop_reason", _str, "drop events: the kernel's skb_drop_reason name, else ''"),
    ("encap", _str,
     "tunnel the packet was in at this point (vxlan, ipip), else ''. The columns above are then "
     "the inner packet's: its tuple, IP ID, TTL, length, TCP fields; ct is 0 (the kernel's entry "
     "is the tunnel flow's)"),
    ("outer_saddr", _str, "encapsulated packets: outer IPv4 source (the sending node), else ''"),
    ("outer_daddr", _str, "encapsulated packets: outer IPv4 destination (the receiving node), else ''"),
    ("icmp_type", pa.uint8(),
     "ICMP errors: type (3 destination unreachable, 11 time exceeded, 12 parameter problem), else 0"),
    ("icmp_code", pa.uint8(), "ICMP errors: code (type 3: 1 host, 3 port unreachable, 4 fragmentation "
     "needed, 10/13 administratively prohibited ...), else 0"),
    ("quoted_saddr", _str, "ICMP errors: source of the packet the error quotes (the offending packet, "
     "as its sender saw it; for nat events as the hook left it), else ''"),
    ("quoted_daddr", _str, "ICMP errors: destination of the quoted packet, else ''"),
    ("quoted_sport", pa.uint16(), "ICMP errors: source port of the quoted packet (TCP, UDP), else 0"),
    ("quoted_dport", pa.uint16(), "ICMP errors: destination port of the quoted packet, else 0"),
    ("quoted_proto", pa.uint8(),
     "ICMP errors: IP protocol of the quoted packet; 0 when there is none or it was unreadable"),
)

SCHEMA = pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS])
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
# Columns later versions added -> (version, value they have in older captures).
ADDED_COLUMNS: dict[str, tuple[int, str]] = {
    "encap": (2, ""),
    "outer_saddr": (2, ""),
    "outer_daddr": (2, ""),
    "icmp_type": (3, "0"),
    "icmp_code": (3, "0"),
    "quoted_saddr": (3, ""),
    "quoted_daddr": (3, ""),
    "quoted_sport": (3, "0"),
    "quoted_dport": (3, "0"),
    "quoted_proto": (3, "0"),
}


def _is_text(typ: pa.DataType) -> bool:
    """A string column as Arrow may hand it back: dictionary-encoded with any
    index width (pandas writes int8 for few categories) or plain."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def part_problems(found: pa.Schema, version: int) -> list[str]:
    """What keeps a part's columns from being the format's (version
    ``version``): a column missing (the ADDED_COLUMNS of a later version
    excepted), or of another type. Columns the format does not name are
    left alone. Empty: the part is readable as SCHEMA."""
    problems = []
    missing = [
        name for name in COLUMN_NAMES
        if name not in found.names and not (name in ADDED_COLUMNS and version < ADDED_COLUMNS[name][0])
    ]
    if missing:
        problems.append(f"no column {', '.join(missing)}")
    for want in SCHEMA:
        where = found.get_all_field_indices(want.name)
        if len(where) > 1:
            problems.append(f"column {want.name} appears {len(where)} times")
            continue
        typ = found.field(where[0]).type if where else want.type
        if typ != want.type and not (_is_text(want.type) and _is_text(typ)):
            problems.append(
                f"column {want.name} is {_type_name(typ)}, the format has {_type_name(want.type)}"
            )
    return problems


def _type_name(typ: pa.DataType) -> str:
    return "string" if _is_text(typ) else str(typ)
