"""The few bpf(2) commands BCC 0.26 has no Python API for, called directly:
BPF_LINK_CREATE for netfilter links, and tiny program/map loads that probe
what the kernel supports. Layouts follow include/uapi/linux/bpf.h."""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_BPF = 321  # x86_64

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_LINK_CREATE = 28

BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_NETFILTER = 32
BPF_TRACE_FENTRY = 24
BPF_NETFILTER = 45

NFPROTO_IPV4 = 2
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD = 0, 1, 2
NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 3, 4

_ATTR_SIZE = 128

# r0 = imm; exit
def _ret_insns(value: int) -> bytes:
    mov_r0 = struct.pack("<BBhi", 0xB7, 0, 0, value)  # BPF_ALU64|BPF_MOV|BPF_K
    exit_ = struct.pack("<BBhi", 0x95, 0, 0, 0)
    return mov_r0 + exit_


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = _libc.syscall(SYS_BPF, cmd, buf, _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def prog_load(
    prog_type: int,
    insns: bytes,
    *,
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    name: bytes = b"trc_probe",
) -> int:
    """Load a program; returns its fd (caller closes). Raises OSError."""
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<II", attr, 0, prog_type, len(insns) // 8)
    struct.pack_into("<QQ", attr, 8, ctypes.addressof(insn_buf), ctypes.addressof(license_))
    attr[48:64] = name[:15].ljust(16, b"\0")
    struct.pack_into("<I", attr, 68, expected_attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    return _bpf(BPF_PROG_LOAD, bytes(attr))


def ringbuf_create(size: int = 4096) -> int:
    attr = struct.pack("<IIII", BPF_MAP_TYPE_RINGBUF, 0, 0, size)
    return _bpf(BPF_MAP_CREATE, attr)


def link_create_netfilter(prog_fd: int, hooknum: int, priority: int, pf: int = NFPROTO_IPV4) -> int:
    """Attach a BPF_PROG_TYPE_NETFILTER program at (pf, hook, priority) in the
    calling thread's network namespace. The link lives until its fd is closed
    (or the process exits): nothing can outlive the tracer."""
    attr = struct.pack("<IIII", prog_fd, 0, BPF_NETFILTER, 0)
    attr += struct.pack("<IIiI", pf, hooknum, priority, 0)
    return _bpf(BPF_LINK_CREATE, attr)


def probe_netfilter_link() -> str | None:
    """None if a netfilter program can be loaded and linked here, else why not."""
    try:
        prog = prog_load(BPF_PROG_TYPE_NETFILTER, _ret_insns(1), expected_attach_type=BPF_NETFILTER)
    except OSError as exc:
        return f"netfilter program load: {exc.strerror}"
    try:
        # Lowest priority that is not NF_IP_PRI_LAST, in our own namespace,
        # accepting everything, for the microseconds until the close below.
        link = link_create_netfilter(prog, NF_INET_LOCAL_OUT, 2**31 - 2)
        os.close(link)
        return None
    except OSError as exc:
        return f"netfilter link: {exc.strerror}"
    finally:
        os.close(prog)


def probe_fentry(btf_func_id: int) -> str | None:
    """None if an fentry program attached to BTF function id loads, else why not."""
    try:
        fd = prog_load(
            BPF_PROG_TYPE_TRACING,
            _ret_insns(0),
            expected_attach_type=BPF_TRACE_FENTRY,
            attach_btf_id=btf_func_id,
        )
    except OSError as exc:
        return f"fentry program load: {exc.strerror}"
    os.close(fd)
    return None


def probe_ringbuf() -> str | None:
    try:
        os.close(ringbuf_create())
        return None
    except OSError as exc:
        return f"ring buffer map: {exc.strerror}"


def probe_bpf() -> str | None:
    try:
        os.close(prog_load(BPF_PROG_TYPE_SOCKET_FILTER, _ret_insns(0)))
        return None
    except OSError as exc:
        return f"bpf(): {exc.strerror}"
