"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux, and the
split BTF of modules in /sys/kernel/btf/<module>).

The tracer compiles its BPF C against whatever kernel headers BCC can find,
which need not be the running kernel's (a 6.18 kernel without a headers
package compiles against Debian 12's 6.1 headers): every struct offset
written in C against those headers could be wrong. So the BPF C never dereferences kernel structs by name; the
offsets it needs come from here, from the running kernel's own BTF, and are
passed to the compiler as macros.

Module BTF (CONFIG_DEBUG_INFO_BTF_MODULES, 5.11+) is "split" BTF on top of
vmlinux's: its type ids continue after vmlinux's last id and its string
offsets after vmlinux's string section, and its types refer to vmlinux types
by their ids. Functions that live in modules (nf_nat_inet_fn in nf_nat.ko on
Debian's 6.1) are only found there.

Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tracer.errors import KernelFeatureError

SYS_BTF = Path("/sys/kernel/btf")
VMLINUX_BTF = SYS_BTF / "vmlinux"

BTF_MAGIC = 0xEB9F

# BTF_KIND_* numbers and the size of the data that follows each kind's
# 12-byte struct btf_type (per vlen item where it has a list).
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION = 1, 2, 3, 4, 5
KIND_ENUM, KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST = 6, 7, 8, 9, 10
KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = 11, 12, 13, 14, 15
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 16, 17, 18, 19

_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_ITEM_EXTRA = {
    KIND_STRUCT: 12,
    KIND_UNION: 12,
    KIND_ENUM: 8,
    KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12,
    KIND_ENUM64: 12,
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


class BtfError(KernelFeatureError):
    pass


class Btf:
    """Types of one BTF blob, indexed by id; names resolved on demand. With a
    base, the blob is split BTF: ids below its first own id, and string
    offsets below the base's string size, are the base's."""

    def __init__(self, data: bytes, base: Btf | None = None):
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._base = base
        # First type id of this blob (id 0, void, belongs to the base-most one).
        self._first_id = base.type_count if base is not None else 1
        # String offsets below this are the base's (libbpf: start_str_off).
        self._str_first = base._str_count if base is not None else 0
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        self._str_count = self._str_first + str_len
        self._offsets = self._index()

    @classmethod
    def load(cls, path: Path = VMLINUX_BTF, base: Btf | None = None) -> Btf:
        try:
            return cls(path.read_bytes(), base)
        except FileNotFoundError as exc:
            if base is not None:
                raise BtfError(
                    f"{path} not found: the module is not loaded or the kernel has no module "
                    "BTF (CONFIG_DEBUG_INFO_BTF_MODULES)"
                ) from exc
            raise BtfError(
                f"{path} not found: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF); "
                "the tracer needs it for struct offsets"
            ) from exc

    @classmethod
    def load_module(cls, module: str, base: Btf) -> Btf:
        """The split BTF of a loaded kernel module, on top of vmlinux's."""
        return cls.load(SYS_BTF / module, base=base)

    @property
    def type_count(self) -> int:
        """One more than the highest type id (this blob's and its base's)."""
        return self._first_id + len(self._offsets)

    @property
    def first_id(self) -> int:
        """The first type id this blob defines (1 for vmlinux)."""
        return self._first_id

    def _index(self) -> list[int]:
        """Byte offset of each of this blob's struct btf_type, in id order
        (index 0 is type id first_id)."""
        data, pos, end = self._data, self._types_start, self._types_end
        unpack = struct.unpack_from
        fixed, per_item = _FIXED_EXTRA, _PER_ITEM_EXTRA
        offsets: list[int] = []
        append = offsets.append
        while pos < end:
            append(pos)
            info = unpack("<I", data, pos + 4)[0]
            kind = (info >> 24) & 0x1F
            pos += 12 + fixed.get(kind, 0) + per_item.get(kind, 0) * (info & 0xFFFF)
        return offsets

    def _locate(self, type_id: int) -> tuple[bytes, int]:
        """(blob, byte offset of the struct btf_type) of any id this BTF knows."""
        if type_id >= self._first_id:
            index = type_id - self._first_id
            if index >= len(self._offsets):
                raise BtfError(f"type id {type_id} out of range")
            return self._data, self._offsets[index]
        if self._base is None:
            raise BtfError(f"type id {type_id} out of range")
        return self._base._locate(type_id)

    # -- raw access -------------------------------------------------------
    def _name(self, name_off: int) -> str:
        if name_off < self._str_first:
            assert self._base is not None
            return self._base._name(name_off)
        start = self._str_start + name_off - self._str_first
        end = self._data.index(b"\0", start, self._str_end)
        return self._data[start:end].decode()

    def _header(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(name_off, kind, vlen, kind_flag, size_or_type) of a type id."""
        data, pos = self._locate(type_id)
        name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def _items(self, type_id: int) -> tuple[bytes, int]:
        """(blob, byte offset) of what follows a type's 12-byte header."""
        data, pos = self._locate(type_id)
        return data, pos + 12

    def kind(self, type_id: int) -> int:
        return self._header(type_id)[1]

    def name(self, type_id: int) -> str:
        return self._name(self._header(type_id)[0])

    @cached_property
    def _by_name(self) -> dict[tuple[int, str], int]:
        """(kind, name) -> first type id of this blob's own types. Built once,
        only for kinds looked up by name."""
        wanted = {KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FUNC, KIND_TYPEDEF}
        out: dict[tuple[int, str], int] = {}
        data, unpack = self._data, struct.unpack_from
        for index, pos in enumerate(self._offsets):
            name_off, info = unpack("<II", data, pos)
            kind = (info >> 24) & 0x1F
            if name_off and kind in wanted:
                key = (kind, self._name(name_off))
                # A forward-declared-then-defined struct appears once with
                # vlen > 0; keep the first complete definition.
                if key not in out or (info & 0xFFFF and not self._header(out[key])[2]):
                    out[key] = self._first_id + index
        return out

    def find(self, name: str, kinds: tuple[int, ...], *, own_only: bool = False) -> int | None:
        """Type id of a named type: this blob's own first, then its base's
        (unless own_only: e.g. a function that must be the module's)."""
        for kind in kinds:
            type_id = self._by_name.get((kind, name))
            if type_id is not None:
                return type_id
        if self._base is not None and not own_only:
            return self._base.find(name, kinds)
        return None

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while type_id and self.kind(type_id) in _MODIFIERS:
            type_id = self._header(type_id)[4]
        return type_id

    def size(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        _, kind, _, _, size_or_type = self._header(type_id)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return size_or_type
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            data, pos = self._items(type_id)
            elem, _index, nelems = struct.unpack_from("<III", data, pos)
            return self.size(elem) * nelems
        raise BtfError(f"type {type_id} (kind {kind}) has no size")

    def members(self, type_id: int) -> list[Member]:
        type_id = self.resolve(type_id)
        _, kind, vlen, kind_flag, _ = self._header(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"type {type_id} is not a struct or union")
        data, pos = self._items(type_id)
        out = []
        for i in range(vlen):
            name_off, mtype, offset = struct.unpack_from("<III", data, pos + 12 * i)
            if kind_flag:
                bit_offset, bitfield_size = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bitfield_size = offset, 0
            out.append(Member(self._name(name_off) if name_off else "", mtype, bit_offset, bitfield_size))
        return out

    # -- what the tracer asks ---------------------------------------------
    def struct_id(self, name: str) -> int:
        type_id = self.find(name, (KIND_STRUCT, KIND_UNION))
        if type_id is None:
            raise BtfError(f"struct {name} not in the kernel's BTF")
        return type_id

    def _find_member(self, type_id: int, field: str) -> tuple[int, Member] | None:
        """Bit offset and member for field, looking through anonymous
        structs/unions (sk_buff's header fields sit in an anonymous
        struct_group since 5.19, commit 03f61041c179)."""
        for m in self.members(type_id):
            if m.name == field:
                return m.bit_offset, m
            if not m.name:
                inner = self.resolve(m.type_id)
                if self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, field)
                    if found is not None:
                        return m.bit_offset + found[0], found[1]
        return None

    def field(self, struct_name: str, path: str) -> tuple[int, int]:
        """Byte offset and byte size of a dotted field path, e.g.
        field("net_device", "nd_net.net"). Bitfields are refused."""
        type_id = self.struct_id(struct_name)
        total_bits = 0
        member: Member | None = None
        for part in path.split("."):
            if member is not None:
                type_id = self.resolve(member.type_id)
            found = self._find_member(type_id, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no field {path} in the kernel's BTF")
            bits, member = found
            total_bits += bits
        assert member is not None
        if member.bitfield_size or total_bits % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield")
        return total_bits // 8, self.size(member.type_id)

    def offsetof(self, struct_name: str, path: str) -> int:
        return self.field(struct_name, path)[0]

    def enum(self, name: str) -> dict[int, str]:
        type_id = self.find(name, (KIND_ENUM, KIND_ENUM64))
        if type_id is None:
            raise BtfError(f"enum {name} not in the kernel's BTF")
        _, kind, vlen, _, _ = self._header(type_id)
        data, pos = self._items(type_id)
        out = {}
        for i in range(vlen):
            if kind == KIND_ENUM:
                name_off, val = struct.unpack_from("<Ii", data, pos + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", data, pos + 12 * i)
                val = lo | (hi << 32)
            out[val] = self._name(name_off)
        return out

    def has_function(self, name: str) -> bool:
        return self.find(name, (KIND_FUNC,)) is not None

    def raw_tracepoint_args(self, tracepoint: str) -> list[str] | None:
        """Type names of the arguments a raw tracepoint passes (ctx->args[i]),
        from the kernel's btf_trace_<name> typedef: a pointer to a function
        whose first parameter is the tracepoint's private data, not passed to
        BPF. (vmlinux BTF keeps no parameter names there, only types.)"""
        type_id = self.find(f"btf_trace_{tracepoint}", (KIND_TYPEDEF,))
        if type_id is None:
            return None
        ptr = self._header(type_id)[4]
        if self.kind(ptr) != KIND_PTR:
            return None
        proto = self._header(ptr)[4]
        if self.kind(proto) != KIND_FUNC_PROTO:
            return None
        _, _, vlen, _, _ = self._header(proto)
        data, pos = self._items(proto)
        types = [struct.unpack_from("<II", data, pos + 8 * i)[1] for i in range(vlen)]
        return [self.type_name(t) for t in types[1:]]

    def type_name(self, type_id: int) -> str:
        """C-ish name of a type: 'struct sk_buff *', 'enum skb_drop_reason', 'void *'."""
        if type_id == 0:
            return "void"
        _, kind, _, _, ref = self._header(type_id)
        if kind == KIND_PTR:
            return self.type_name(ref) + " *"
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG):
            return self.type_name(ref)
        prefix = {KIND_STRUCT: "struct ", KIND_UNION: "union ", KIND_ENUM: "enum ",
                  KIND_ENUM64: "enum "}.get(kind, "")
        return prefix + self.name(type_id)
