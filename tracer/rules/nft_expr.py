"""nf_tables expressions and the attribute numbers of tables, chains, sets
and rules (linux/netfilter/nf_tables.h), encoded as the kernel reads them.
Only what the trace table needs."""

from __future__ import annotations

from tracer.rules.nfnetlink import attr, attr_be32, attr_str, attr_u8, nested

# Message types (enum nf_tables_msg_types).
NFT_MSG_NEWTABLE = 0
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
NFT_MSG_NEWSET = 9
NFT_MSG_NEWSETELEM = 12
NFT_MSG_TRACE = 17

NFPROTO_IPV4 = 2

# Tables.
NFTA_TABLE_NAME = 1
NFTA_TABLE_FLAGS = 2
NFT_TABLE_F_OWNER = 0x2  # Linux 5.12: the table dies with its netlink socket

# Chains.
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_OUT = 3
NF_ACCEPT = 1

# Sets.
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_SET_KEY_TYPE = 4
NFTA_SET_KEY_LEN = 5
NFTA_SET_ID = 10
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_LIST_ELEM = 1
NFTA_DATA_VALUE = 1

# nft's datatype ids (src/datatype.h) and how it packs a concatenation's type:
# each part shifted left by TYPE_BITS (6). Only `nft list` reads this.
TYPE_IPADDR = 7
TYPE_INET_PROTOCOL = 12
TYPE_INET_SERVICE = 13
CONCAT_TYPE_BITS = 6

# Rules and expressions.
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2

# 32-bit registers: a concatenation is loaded into consecutive ones, each
# part padded to 4 bytes.
NFT_REG32_00 = 8

NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_PAYLOAD_TRANSPORT_HEADER = 2

NFTA_META_DREG, NFTA_META_KEY, NFTA_META_SREG = 1, 2, 3
NFT_META_NFTRACE = 12
NFT_META_L4PROTO = 16

NFTA_CT_DREG, NFTA_CT_KEY, NFTA_CT_DIRECTION = 1, 2, 3
NFT_CT_PROTO_SRC = 11
NFT_CT_PROTO_DST = 12
NFT_CT_DST_IP = 20
IP_CT_DIR_ORIGINAL = 0

NFTA_LOOKUP_SET, NFTA_LOOKUP_SREG, NFTA_LOOKUP_SET_ID = 1, 2, 4

NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2


def expression(name: str, *data: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, attr_str(NFTA_EXPR_NAME, name), nested(NFTA_EXPR_DATA, *data))


def payload(dreg: int, base: int, offset: int, length: int) -> bytes:
    return expression("payload", attr_be32(NFTA_PAYLOAD_DREG, dreg), attr_be32(NFTA_PAYLOAD_BASE, base),
                      attr_be32(NFTA_PAYLOAD_OFFSET, offset), attr_be32(NFTA_PAYLOAD_LEN, length))


def meta_get(dreg: int, key: int) -> bytes:
    return expression("meta", attr_be32(NFTA_META_KEY, key), attr_be32(NFTA_META_DREG, dreg))


def meta_set(key: int, sreg: int) -> bytes:
    return expression("meta", attr_be32(NFTA_META_KEY, key), attr_be32(NFTA_META_SREG, sreg))


def ct_original(dreg: int, key: int) -> bytes:
    return expression("ct", attr_be32(NFTA_CT_DREG, dreg), attr_be32(NFTA_CT_KEY, key),
                      attr_u8(NFTA_CT_DIRECTION, IP_CT_DIR_ORIGINAL))


def lookup(set_name: str, set_id: int, sreg: int) -> bytes:
    return expression("lookup", attr_str(NFTA_LOOKUP_SET, set_name),
                      attr_be32(NFTA_LOOKUP_SET_ID, set_id), attr_be32(NFTA_LOOKUP_SREG, sreg))


def immediate_value(dreg: int, value: bytes) -> bytes:
    return expression("immediate", attr_be32(NFTA_IMMEDIATE_DREG, dreg),
                      nested(NFTA_IMMEDIATE_DATA, attr(NFTA_DATA_VALUE, value)))


def concat_type(*parts: int) -> int:
    kind = 0
    for part in parts:
        kind = (kind << CONCAT_TYPE_BITS) | part
    return kind
