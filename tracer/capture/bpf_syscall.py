"""The few bpf(2) commands BCC 0.26 has no Python API for, called directly:
BPF_LINK_CREATE for netfilter links; loading fentry/fexit programs against a
function in a kernel module's BTF and attaching them (BCC 0.26 looks fentry
targets up in vmlinux BTF only); loading and attaching BTF-typed raw
tracepoint programs (tp_btf, which BCC 0.26 does not know); and tiny program/map loads that probe what
the kernel supports. Layouts follow include/uapi/linux/bpf.h."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_BPF = 321  # x86_64

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_BTF_GET_FD_BY_ID = 19
BPF_BTF_GET_NEXT_ID = 23
BPF_LINK_CREATE = 28

BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_NETFILTER = 32
BPF_TRACE_RAW_TP = 23
BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_NETFILTER = 45

NFPROTO_IPV4 = 2
NF_INET_PRE_ROUTING, NF_INET_LOCAL_IN, NF_INET_FORWARD = 0, 1, 2
NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 3, 4

_ATTR_SIZE = 128

# r0 = imm; exit
def ret_insns(value: int) -> bytes:
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


def _bpf_out(cmd: int, attr: bytes, fmt: str, offset: int) -> int:
    """A command whose answer the kernel writes back into the attr (e.g. the
    next_id of BPF_*_GET_NEXT_ID)."""
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    if _libc.syscall(SYS_BPF, cmd, buf, _ATTR_SIZE) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(struct.unpack_from(fmt, buf.raw, offset)[0])


def prog_load(
    prog_type: int,
    insns: bytes,
    *,
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    attach_btf_obj_fd: int = 0,
    name: bytes = b"trc_probe",
    log: ctypes.Array[ctypes.c_char] | None = None,
) -> int:
    """Load a program; returns its fd (caller closes). Raises OSError. With
    `log`, the verifier writes its log there (log_level 1)."""
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<II", attr, 0, prog_type, len(insns) // 8)
    struct.pack_into("<QQ", attr, 8, ctypes.addressof(insn_buf), ctypes.addressof(license_))
    if log is not None:
        struct.pack_into("<IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
    attr[48:64] = name[:15].ljust(16, b"\0")
    struct.pack_into("<I", attr, 68, expected_attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    # attach_btf_obj_fd (5.11+, commit 290248a5b7d8): the BTF object the id
    # belongs to, for functions in modules; 0 means vmlinux.
    struct.pack_into("<I", attr, 112, attach_btf_obj_fd)
    return _bpf(BPF_PROG_LOAD, bytes(attr))


def prog_load_explained(prog_type: int, insns: bytes, **kw: int | bytes) -> int:
    """prog_load; when the kernel refuses, load again with the verifier log
    only to say why (the OSError then carries the log's last lines)."""
    try:
        return prog_load(prog_type, insns, **kw)  # type: ignore[arg-type]
    except OSError as exc:
        log = ctypes.create_string_buffer(1 << 20)
        with contextlib.suppress(OSError):
            os.close(prog_load(prog_type, insns, log=log, **kw))  # type: ignore[arg-type]
        tail = [ln for ln in log.value.decode(errors="replace").splitlines() if ln.strip()][-6:]
        why = exc.strerror + (f"; verifier: {' | '.join(tail)}" if tail else "")
        raise OSError(exc.errno, why) from None


def kernel_btf_fd(name: str) -> int:
    """fd of the kernel's BTF object `name` ("vmlinux" or a module's name), for
    attach_btf_obj_fd; caller closes it. Raises LookupError if there is none."""
    btf_id = 0
    while True:
        try:
            btf_id = _bpf_out(BPF_BTF_GET_NEXT_ID, struct.pack("<I", btf_id), "<I", 4)
        except FileNotFoundError:  # ENOENT: past the last id
            raise LookupError(f"no kernel BTF object named {name}") from None
        try:
            fd = _bpf(BPF_BTF_GET_FD_BY_ID, struct.pack("<I", btf_id))
        except FileNotFoundError:  # gone since (module unloaded): go on
            continue
        name_buf = ctypes.create_string_buffer(64)
        # struct bpf_btf_info: btf, btf_size, id, name, name_len, kernel_btf (5.11+)
        info = ctypes.create_string_buffer(
            struct.pack("<QIIQII", 0, 0, 0, ctypes.addressof(name_buf), 64, 0), 32)
        try:
            _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, 32, ctypes.addressof(info)))
        except OSError:
            os.close(fd)
            raise
        if struct.unpack_from("<I", info.raw, 28)[0] and name_buf.value.decode() == name:
            return fd
        os.close(fd)


TRACING_ATTACH_TYPES = {"fentry": BPF_TRACE_FENTRY, "fexit": BPF_TRACE_FEXIT, "tp_btf": BPF_TRACE_RAW_TP}


def tracing_load(
    insns: bytes, btf_id: int, *, kind: str, btf_module: str | None = None, name: bytes = b"trc_fentry"
) -> int:
    """Load bytecode as a BPF_PROG_TYPE_TRACING program of `kind` (fentry,
    fexit: on the function with BTF id `btf_id`; tp_btf: on the raw
    tracepoint whose btf_trace_<name> typedef has that id) in vmlinux's BTF or
    `btf_module`'s; returns the program fd."""
    obj_fd = kernel_btf_fd(btf_module) if btf_module else 0
    try:
        return prog_load_explained(
            BPF_PROG_TYPE_TRACING, insns, expected_attach_type=TRACING_ATTACH_TYPES[kind],
            attach_btf_id=btf_id, attach_btf_obj_fd=obj_fd, name=name,
        )
    finally:
        if obj_fd:
            os.close(obj_fd)


def tracing_attach(prog_fd: int) -> int:
    """Attach a loaded fentry/fexit/tp_btf program where it was loaded for
    (BPF_RAW_TRACEPOINT_OPEN with no name, 5.5+). Returns the link fd; closing
    it (or the process dying) detaches."""
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", 0, prog_fd))


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
        prog = prog_load(BPF_PROG_TYPE_NETFILTER, ret_insns(1), expected_attach_type=BPF_NETFILTER)
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


def probe_fentry(btf_func_id: int, btf_module: str | None = None) -> str | None:
    """None if an fentry program on that BTF function (of vmlinux, or of a
    module) loads, else why not. Load only: nothing is attached."""
    try:
        fd = tracing_load(ret_insns(0), btf_func_id, kind="fentry", btf_module=btf_module,
                          name=b"trc_probe")
    except LookupError as exc:
        return str(exc)
    except OSError as exc:
        return f"fentry program load: {exc.strerror}"
    os.close(fd)
    return None


def probe_tp_btf(btf_typedef_id: int) -> str | None:
    """None if a BTF-typed raw tracepoint program loads on the tracepoint
    whose btf_trace_<name> typedef has that id, else why not. Load only."""
    try:
        fd = tracing_load(ret_insns(0), btf_typedef_id, kind="tp_btf", name=b"trc_probe")
    except OSError as exc:
        return f"tp_btf program load: {exc.strerror}"
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
        os.close(prog_load(BPF_PROG_TYPE_SOCKET_FILTER, ret_insns(0)))
        return None
    except OSError as exc:
        return f"bpf(): {exc.strerror}"
