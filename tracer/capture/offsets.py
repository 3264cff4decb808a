"""Kernel struct offsets for the BPF C, read from the running kernel's BTF and
handed to the compiler as -D macros (see bpf/kernel_fields.bpf.h for why)."""

from __future__ import annotations

from tracer.btf import Btf, BtfError

# macro -> (struct, field path, expected size in bytes or None)
FIELDS: dict[str, tuple[str, str, int | None]] = {
    "OFF_SKB_HEAD": ("sk_buff", "head", 8),
    "OFF_SKB_DATA": ("sk_buff", "data", 8),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header", 2),
    "OFF_SKB_DEV": ("sk_buff", "dev", 8),
    "OFF_SKB_NFCT": ("sk_buff", "_nfct", 8),
    "OFF_SKB_PROTOCOL": ("sk_buff", "protocol", 2),
    "OFF_SKB_SK": ("sk_buff", "sk", 8),
    # skbs of a received list are linked through skb->list (4.19+)
    "OFF_SKB_LIST": ("sk_buff", "list", 16),
    "OFF_DEV_IFINDEX": ("net_device", "ifindex", 4),
    "OFF_DEV_NAME": ("net_device", "name", 16),
    "OFF_DEV_ND_NET": ("net_device", "nd_net.net", 8),
    "OFF_NET_INUM": ("net", "ns.inum", 4),
    "OFF_CT_STATUS": ("nf_conn", "status", 8),
    "OFF_HOOK_STATE_HOOK": ("nf_hook_state", "hook", 1),
    "OFF_HOOK_STATE_NET": ("nf_hook_state", "net", 8),
    "OFF_SOCK_NET": ("sock_common", "skc_net.net", 8),
}


def kernel_offsets(btf: Btf) -> dict[str, int]:
    """Every OFF_* macro, checked for the size the C reads it with."""
    out = {}
    for macro, (struct_name, path, size) in FIELDS.items():
        offset, actual = btf.field(struct_name, path)
        if size is not None and actual != size:
            raise BtfError(
                f"{struct_name}.{path} is {actual} bytes in this kernel, the tracer reads {size}"
            )
        out[macro] = offset
    # The connection's two tuples, nf_conn.tuplehash[IP_CT_DIR_ORIGINAL] and
    # [IP_CT_DIR_REPLY] (an array of struct nf_conntrack_tuple_hash): the
    # original one before any NAT, the reply one as the answer will look.
    base = btf.offsetof("nf_conn", "tuplehash")
    tuple_hash = btf.size(btf.struct_id("nf_conntrack_tuple_hash"))
    out["OFF_CT_ORIG_TUPLE"] = base + btf.offsetof("nf_conntrack_tuple_hash", "tuple")
    out["OFF_CT_REPLY_TUPLE"] = out["OFF_CT_ORIG_TUPLE"] + tuple_hash
    for macro, path, size in (("TUPLE_SRC_IP", "src.u3.ip", 4), ("TUPLE_SRC_PORT", "src.u.all", 2),
                              ("TUPLE_DST_IP", "dst.u3.ip", 4), ("TUPLE_DST_PORT", "dst.u.all", 2),
                              ("TUPLE_PROTO", "dst.protonum", 1)):
        offset, actual = btf.field("nf_conntrack_tuple", path)
        if actual != size:
            raise BtfError(f"nf_conntrack_tuple.{path} is {actual} bytes, the tracer reads {size}")
        out[macro] = offset
    return out


def drop_reason_names(btf: Btf) -> dict[int, str]:
    """enum skb_drop_reason value -> short name ("NO_SOCKET"); empty before 5.17."""
    try:
        values = btf.enum("skb_drop_reason")
    except BtfError:
        return {}
    out = {}
    for value, name in values.items():
        for prefix in ("SKB_DROP_REASON_", "SKB_"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[value] = name
    return out
