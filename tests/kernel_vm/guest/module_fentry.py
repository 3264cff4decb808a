"""fentry/fexit on a function that lives in a kernel module, for BCC 0.26.

BCC 0.26 resolves KFUNC_PROBE targets in vmlinux BTF only
(libbpf_find_vmlinux_btf_id): on Debian's 6.1 kernel nf_nat_inet_fn is in
nf_nat.ko, so `KFUNC_PROBE(nf_nat_inet_fn, ...)` fails with "nf_nat_inet_fn is
not found in vmlinux BTF". The kernel itself can do it (since 5.11) when
BPF_PROG_LOAD names the module's BTF object (attach_btf_obj_fd) and the
function's id in that split BTF (attach_btf_id).

So: BCC compiles the program (written with BPF_PROG, which is what
KFUNC_PROBE expands to, under a name BCC does not auto-attach), we take its
bytecode - map fds are already in it - and load and attach it with three raw
bpf() calls. No BCC import here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from pathlib import Path

SYS_BPF = 321  # x86_64
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_GET_FD_BY_ID = 19
BPF_BTF_GET_NEXT_ID = 23
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25

BTF_KIND_FUNC = 12
SYS_BTF = Path("/sys/kernel/btf")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


class _ProgLoadAttr(ctypes.Structure):
    # union bpf_attr, BPF_PROG_LOAD part, as in 6.1's include/uapi/linux/bpf.h
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _BtfInfo(ctypes.Structure):
    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("name", ctypes.c_uint64),
        ("name_len", ctypes.c_uint32),
        ("kernel_btf", ctypes.c_uint32),
    ]


class _RawTpAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


# Bytes that follow the 12-byte struct btf_type, per kind (kernel's btf.c).
def _extra_bytes(kind: int, vlen: int) -> int:
    per_member = {3: 0, 4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    fixed = {1: 4, 3: 12, 14: 4, 17: 4}
    return fixed.get(kind, 0) + per_member.get(kind, 0) * vlen


def _btf_sections(data: bytes) -> tuple[bytes, bytes]:
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise ValueError("not BTF")
    types = data[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    return types, strings


def _iter_types(types: bytes):
    off = 0
    while off < len(types):
        name_off, info, _size = struct.unpack_from("<III", types, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        yield name_off, kind
        off += 12 + _extra_bytes(kind, vlen)


def vmlinux_func_names() -> set[str]:
    """Every FUNC in vmlinux BTF: what BCC 0.26's KFUNC_PROBE can target."""
    types, strings = _btf_sections((SYS_BTF / "vmlinux").read_bytes())
    return {
        strings[off : strings.index(b"\0", off)].decode()
        for off, kind in _iter_types(types)
        if kind == BTF_KIND_FUNC
    }


def module_func_btf_id(module: str, func: str) -> int:
    """Type id of FUNC `func` in /sys/kernel/btf/<module> (split on vmlinux BTF:
    its ids continue after vmlinux's last id, its string offsets after vmlinux's
    string section)."""
    base_types, base_strings = _btf_sections((SYS_BTF / "vmlinux").read_bytes())
    base_count = 1 + sum(1 for _ in _iter_types(base_types))  # id 0 is void
    types, strings = _btf_sections((SYS_BTF / module).read_bytes())
    want = func.encode()
    for index, (name_off, kind) in enumerate(_iter_types(types)):
        if kind != BTF_KIND_FUNC:
            continue
        rel = name_off - len(base_strings)
        if rel >= 0 and strings[rel : rel + len(want) + 1] == want + b"\0":
            return base_count + index
    raise LookupError(f"no FUNC {func} in the BTF of module {module}")


def module_btf_fd(module: str) -> int:
    """fd of the kernel BTF object named `module` (caller closes it)."""
    attr = _IdAttr(0)
    while True:
        try:
            _bpf(BPF_BTF_GET_NEXT_ID, attr)
        except FileNotFoundError:
            raise LookupError(f"no kernel BTF object named {module}") from None
        btf_id = attr.next_id
        fd = _bpf(BPF_BTF_GET_FD_BY_ID, _IdAttr(btf_id))
        name = ctypes.create_string_buffer(64)
        info = _BtfInfo(name=ctypes.addressof(name), name_len=64)
        _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
        if info.kernel_btf and name.value.decode() == module:
            return fd
        os.close(fd)
        attr = _IdAttr(btf_id)


def attach_module_tracing(
    bytecode: bytes, module: str, func: str, *, fexit: bool, name: str = "tracer_fentry"
) -> tuple[int, int]:
    """Load BCC-compiled `bytecode` as fentry (or fexit) on module:func and
    attach it. Returns (prog_fd, link_fd); closing link_fd detaches."""
    btf_id = module_func_btf_id(module, func)
    obj_fd = module_btf_fd(module)
    insns = ctypes.create_string_buffer(bytecode, len(bytecode))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 20)

    def load(log_level: int) -> int:
        attr = _ProgLoadAttr(
            prog_type=BPF_PROG_TYPE_TRACING,
            insn_cnt=len(bytecode) // 8,
            insns=ctypes.addressof(insns),
            license=ctypes.addressof(license_),
            log_level=log_level,
            log_size=len(log) if log_level else 0,
            log_buf=ctypes.addressof(log) if log_level else 0,
            prog_name=name.encode()[:15],
            expected_attach_type=BPF_TRACE_FEXIT if fexit else BPF_TRACE_FENTRY,
            attach_btf_id=btf_id,
            attach_btf_obj_fd=obj_fd,
        )
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        prog_fd = load(0)
    except OSError as exc:
        # Load again with the verifier log, only to say why it failed.
        with contextlib.suppress(OSError):
            os.close(load(1))
        tail = log.value.decode(errors="replace").strip().splitlines()[-5:]
        raise OSError(exc.errno, f"{exc.strerror}; verifier: {' | '.join(tail)}") from None
    finally:
        os.close(obj_fd)
    link_fd = _bpf(BPF_RAW_TRACEPOINT_OPEN, _RawTpAttr(0, prog_fd))
    return prog_fd, link_fd
