"""tracer.btf against a hand-built BTF blob (exact layout known) and against
the running kernel's own BTF (every machine of this project has it)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tracer.btf import (
    KIND_ENUM,
    KIND_FUNC,
    KIND_FUNC_PROTO,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    Btf,
    BtfError,
)


class BlobBuilder:
    """Just enough of the BTF format to describe test types. With a base
    builder, it builds split BTF the way the kernel lays out module BTF: ids
    and string offsets continue after the base's."""

    def __init__(self, base: BlobBuilder | None = None) -> None:
        self.strings = b"\0"
        self.types = b""
        self.count = base.count if base else 0
        self.str_first = len(base.strings) if base else 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = self.str_first + len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
            kind_flag: int = 0) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def int_(self, name: str, size: int) -> int:
        return self.add(name, KIND_INT, 0, size, struct.pack("<I", size * 8))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]], union=False) -> int:
        extra = b"".join(struct.pack("<III", self.s(n), t, bits) for n, t, bits in members)
        return self.add(name, KIND_UNION if union else KIND_STRUCT, len(members), size, extra)

    def blob(self) -> bytes:
        hdr_len = 24
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(self.types),
                           len(self.types), len(self.strings)) + self.types + self.strings


@pytest.fixture
def toy() -> Btf:
    b = BlobBuilder()
    u16 = b.int_("u16", 2)
    u32 = b.int_("u32", 4)
    u64 = b.int_("u64", 8)
    ptr = b.add("", KIND_PTR, 0, u64)
    # struct inner { u32 inum; }  /  struct net { u64 pad; struct inner ns; }
    inner = b.struct_("ns_common", 4, [("inum", u32, 0)])
    b.struct_("net", 12, [("pad", u64, 0), ("ns", inner, 64)])
    # struct sk_buff { void *next; union { struct { u16 network_header; u16 mac; }; u32 all; }; u64 data; }
    anon_s = b.struct_("", 4, [("network_header", u16, 0), ("mac_header", u16, 16)])
    anon_u = b.struct_("", 4, [("", anon_s, 0), ("all", u32, 0)], union=True)
    b.struct_("sk_buff", 24, [("next", ptr, 0), ("", anon_u, 64), ("data", u64, 128)])
    b.add("skb_drop_reason", KIND_ENUM, 2, 4,
          struct.pack("<Ii", b.s("SKB_NOT_DROPPED_YET"), 0) + struct.pack("<Ii", b.s("SKB_CONSUMED"), 1))
    proto = b.add("", KIND_FUNC_PROTO, 2, 0, struct.pack("<II", 0, ptr) + struct.pack("<II", 0, u32))
    b.add("nf_nat_inet_fn", KIND_FUNC, 0, proto)
    fp = b.add("", KIND_PTR, 0, proto)
    b.add("btf_trace_toy", KIND_TYPEDEF, 0, fp)
    return Btf(b.blob())


def test_offsets_through_anonymous_members(toy):
    assert toy.field("sk_buff", "network_header") == (8, 2)
    assert toy.field("sk_buff", "mac_header") == (10, 2)
    assert toy.field("sk_buff", "data") == (16, 8)
    assert toy.field("net", "ns.inum") == (8, 4)


def test_missing_things_are_typed_errors(toy):
    with pytest.raises(BtfError, match="no field"):
        toy.field("sk_buff", "nope")
    with pytest.raises(BtfError, match="not in the kernel's BTF"):
        toy.field("nf_conn", "status")


def test_enum_functions_and_raw_tracepoint_args(toy):
    assert toy.enum("skb_drop_reason") == {0: "SKB_NOT_DROPPED_YET", 1: "SKB_CONSUMED"}
    assert toy.has_function("nf_nat_inet_fn")
    assert not toy.has_function("nf_nat_ipv4_fn")
    assert toy.raw_tracepoint_args("toy") == ["u32"]


def test_not_btf():
    with pytest.raises(BtfError):
        Btf(b"\0" * 64)


def test_running_kernel_fields_are_sane():
    btf = Btf.load()
    # Sizes the BPF programs rely on, whatever the offsets are.
    assert btf.field("sk_buff", "head")[1] == 8
    assert btf.field("sk_buff", "network_header")[1] == 2
    assert btf.field("net_device", "name")[1] == 16
    assert btf.field("net", "ns.inum")[1] == 4
    reasons = btf.enum("skb_drop_reason")
    assert reasons[0] == "SKB_NOT_DROPPED_YET"


def test_missing_file_says_what_to_enable(tmp_path: Path):
    with pytest.raises(BtfError, match="CONFIG_DEBUG_INFO_BTF"):
        Btf.load(tmp_path / "vmlinux")


def test_split_btf_continues_ids_and_strings_of_its_base():
    base = BlobBuilder()
    u32 = base.int_("u32", 4)
    ptr = base.add("", KIND_PTR, 0, u32)
    base.struct_("sk_buff", 8, [("len", u32, 0), ("mark", u32, 32)])
    vmlinux = Btf(base.blob())
    assert vmlinux.type_count == 4 and vmlinux.first_id == 1

    mod = BlobBuilder(base)
    # struct nf_nat_thing { u32 a; struct sk_buff skb; } and a module function
    # taking a pointer, both pointing at base types by id.
    skb = vmlinux.struct_id("sk_buff")
    thing = mod.struct_("nf_nat_thing", 12, [("a", u32, 0), ("skb", skb, 32)])
    proto = mod.add("", KIND_FUNC_PROTO, 1, 0, struct.pack("<II", mod.s("skb"), ptr))
    fn = mod.add("nf_nat_inet_fn", KIND_FUNC, 0, proto)
    split = Btf(mod.blob(), base=vmlinux)

    assert split.first_id == 4 and split.type_count == 7
    assert (thing, fn) == (4, 6)
    assert split.find("nf_nat_inet_fn", (KIND_FUNC,), own_only=True) == fn
    assert vmlinux.find("nf_nat_inet_fn", (KIND_FUNC,)) is None
    # Lookups fall through to the base unless own_only.
    assert split.find("sk_buff", (KIND_STRUCT,)) == skb
    assert split.find("sk_buff", (KIND_STRUCT,), own_only=True) is None
    # Members and names resolve across the two blobs.
    assert split.field("nf_nat_thing", "skb.mark") == (8, 4)
    assert split.type_name(split.resolve(ptr)) == "u32 *"
    assert split.name(fn) == "nf_nat_inet_fn" and split.name(skb) == "sk_buff"
    with pytest.raises(BtfError, match="out of range"):
        split.kind(7)


def test_module_btf_of_the_running_kernel_if_any():
    """On kernels with module BTF, every module's blob parses on top of
    vmlinux's and its first id follows vmlinux's last (this project's 6.18
    machines build everything in: then there is nothing to check)."""
    from tracer.btf import SYS_BTF

    vmlinux = Btf.load()
    for path in sorted(SYS_BTF.iterdir())[:20]:
        if path.name == "vmlinux":
            continue
        mod = Btf.load_module(path.name, vmlinux)
        assert mod.first_id == vmlinux.type_count
