"""The table the tracer owns: it sets `meta nftrace` on the Service's packets
and nothing else, so the kernel reports every rule they walk.

    table ip tracer_<pid> {                      # flags owner
        set keys { type ipv4_addr . inet_proto . inet_service; }
        chain prerouting { type filter hook prerouting priority -150; policy accept;
            ct original ip daddr . meta l4proto . ct original proto-dst @keys meta nftrace set 1
            ip daddr . meta l4proto . th dport @keys meta nftrace set 1
            ip saddr . meta l4proto . th sport @keys meta nftrace set 1
        }
        chain output { ...the same at hook output... }
    }

Priority -150 is after conntrack (-200), so `ct original` names the
connection's first destination (the Service's VIP:port, before DNAT at
-100) in BOTH directions; conntrack attaches the (unconfirmed) entry to
the very first packet already, the plain address rules are a second net for
untracked packets. It is created with NFT_TABLE_F_OWNER over the caller's
socket: the kernel deletes it when that socket closes, even on SIGKILL, and
refuses any other socket's change to it. Nothing here touches another table.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from tracer.errors import KernelFeatureError
from tracer.rules import nft_expr as x
from tracer.rules.nfnetlink import (
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NfnlSocket,
    attr_be32,
    attr_str,
    nested,
)

Key = tuple[str, int, int]  # (IPv4 address, port, IP protocol number), as service_filter's
SET_NAME = "keys"
SET_ID = 1
KEY_LEN = 12  # three 32-bit registers
PRIORITY = -150
HOOKS = (("prerouting", x.NF_INET_PRE_ROUTING), ("output", x.NF_INET_LOCAL_OUT))
NFTA_SET_ELEM_LIST_SET_ID = 4
NFT_MSG_DELSETELEM = 14

R0, R1, R2 = x.NFT_REG32_00, x.NFT_REG32_00 + 1, x.NFT_REG32_00 + 2


def key_bytes(key: Key) -> bytes:
    """The 12-byte set key: address, protocol, port, each padded to 4 bytes
    as the registers hold them."""
    addr, port, proto = key
    return ipaddress.IPv4Address(addr).packed + struct.pack("B3x", proto) + struct.pack(">H2x", port)


def _match_rules() -> list[bytes]:
    """The three lookups, each loading (address, protocol, port) into R0..R2."""
    l4 = x.meta_get(R1, x.NFT_META_L4PROTO)
    net, th = x.NFT_PAYLOAD_NETWORK_HEADER, x.NFT_PAYLOAD_TRANSPORT_HEADER
    return [
        x.ct_original(R0, x.NFT_CT_DST_IP) + l4 + x.ct_original(R2, x.NFT_CT_PROTO_DST),
        x.payload(R0, net, 16, 4) + l4 + x.payload(R2, th, 2, 2),
        x.payload(R0, net, 12, 4) + l4 + x.payload(R2, th, 0, 2),
    ]


def _trace_on() -> bytes:
    return x.immediate_value(R0, b"\x01") + x.meta_set(x.NFT_META_NFTRACE, R0)


def _elements(table: str, keys: Iterable[Key]) -> bytes:
    items = [
        x.nested(x.NFTA_LIST_ELEM, nested(x.NFTA_SET_ELEM_KEY, x.attr(x.NFTA_DATA_VALUE, key_bytes(k))))
        for k in sorted(set(keys))
    ]
    if not items:
        return b""
    return (attr_str(x.NFTA_SET_ELEM_LIST_TABLE, table) + attr_str(x.NFTA_SET_ELEM_LIST_SET, SET_NAME)
            + attr_be32(NFTA_SET_ELEM_LIST_SET_ID, SET_ID)
            + nested(x.NFTA_SET_ELEM_LIST_ELEMENTS, *items))


def create_batch(table: str, keys: Iterable[Key]) -> list[tuple[int, int, int, bytes, str]]:
    """The messages of one transaction that makes the whole table."""
    ip = x.NFPROTO_IPV4
    parts = [(x.NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, ip,
              attr_str(x.NFTA_TABLE_NAME, table) + attr_be32(x.NFTA_TABLE_FLAGS, x.NFT_TABLE_F_OWNER),
              f"create table ip {table} (flags owner)")]
    key_type = x.concat_type(x.TYPE_IPADDR, x.TYPE_INET_PROTOCOL, x.TYPE_INET_SERVICE)
    parts.append((x.NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, ip,
                  attr_str(x.NFTA_SET_TABLE, table) + attr_str(x.NFTA_SET_NAME, SET_NAME)
                  + attr_be32(x.NFTA_SET_FLAGS, 0) + attr_be32(x.NFTA_SET_KEY_TYPE, key_type)
                  + attr_be32(x.NFTA_SET_KEY_LEN, KEY_LEN) + attr_be32(x.NFTA_SET_ID, SET_ID),
                  f"create set {SET_NAME} in ip {table}"))
    elements = _elements(table, keys)
    if elements:
        parts.append((x.NFT_MSG_NEWSETELEM, NLM_F_CREATE, ip, elements, f"add keys to ip {table}"))
    for chain, hooknum in HOOKS:
        hook = nested(x.NFTA_CHAIN_HOOK, attr_be32(x.NFTA_HOOK_HOOKNUM, hooknum),
                      attr_be32(x.NFTA_HOOK_PRIORITY, PRIORITY))
        parts.append((x.NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, ip,
                      attr_str(x.NFTA_CHAIN_TABLE, table) + attr_str(x.NFTA_CHAIN_NAME, chain) + hook
                      + attr_be32(x.NFTA_CHAIN_POLICY, x.NF_ACCEPT) + attr_str(x.NFTA_CHAIN_TYPE, "filter"),
                      f"create chain {chain} in ip {table}"))
        for match in _match_rules():
            body = match + x.lookup(SET_NAME, SET_ID, R0) + _trace_on()
            parts.append((x.NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, ip,
                          attr_str(x.NFTA_RULE_TABLE, table) + attr_str(x.NFTA_RULE_CHAIN, chain)
                          + nested(x.NFTA_RULE_EXPRESSIONS, body),
                          f"add rule to ip {table} {chain}"))
    return parts


def create(sock: NfnlSocket, table: str, keys: Iterable[Key]) -> None:
    """Make the table over sock (which then owns it). A kernel older than
    5.12 refuses the owner flag: that is a KernelFeatureError, since without
    it a killed tracer would leave the table behind."""
    try:
        sock.batch(create_batch(table, keys))
    except KernelFeatureError as exc:  # EOPNOTSUPP: unknown table flag
        raise KernelFeatureError(
            f"--rules needs nf_tables owner tables (NFT_TABLE_F_OWNER, Linux 5.12+): {exc}"
        ) from exc


def replace_keys(sock: NfnlSocket, table: str, keys: Iterable[Key]) -> None:
    """Swap the set's keys in one transaction (endpoints came or went): an
    element-less DELSETELEM flushes the set."""
    flush = attr_str(x.NFTA_SET_ELEM_LIST_TABLE, table) + attr_str(x.NFTA_SET_ELEM_LIST_SET, SET_NAME)
    parts = [(NFT_MSG_DELSETELEM, 0, x.NFPROTO_IPV4, flush, f"flush keys of ip {table}")]
    elements = _elements(table, keys)
    if elements:
        parts.append((x.NFT_MSG_NEWSETELEM, NLM_F_CREATE, x.NFPROTO_IPV4, elements,
                      f"add keys to ip {table}"))
    sock.batch(parts)


def delete(sock: NfnlSocket, table: str) -> None:
    sock.batch([(x.NFT_MSG_DELTABLE, 0, x.NFPROTO_IPV4, attr_str(x.NFTA_TABLE_NAME, table),
                 f"delete table ip {table}")])
