"""Compile the BPF C for a set of backends with BCC, load it, and attach it.

This is the only module (with tracer/capture/session.py, which uses it) that
imports BCC. Settings reach the C as -D macros: the offsets from BTF, the
backend of each probe point, the mode, the filters and the map sizes.

BCC treats only functions and map accesses in its main source text as BPF
programs (it does not rewrite included files), so the source is every bpf/
header the selected families include (each after the headers it includes;
their include guards make the #include lines no-ops) followed by each
family, with #line markers so compiler messages name the real files.

fentry/fexit programs are not BCC's KFUNC_PROBEs: BCC 0.26 resolves those in
vmlinux BTF only, while the NAT function is in nf_nat.ko on distro kernels.
They are plain functions to BCC (BPF_PROG, no kfunc__ prefix, so BCC does
not load them); their bytecode, whose map references BCC has already turned
into map fds, is loaded here against the function's BTF id in vmlinux's or
the module's BTF and attached with raw bpf() calls (bpf_syscall.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracer.btf import Btf
from tracer.capture import bpf_syscall
from tracer.capture.abi import be16_as_loaded, be32_as_loaded
from tracer.capture.backends import Backend, ProgramTarget
from tracer.capture.kheaders import find_kernel_headers
from tracer.capture.offsets import kernel_offsets
from tracer.errors import EnvironmentProblem, KernelFeatureError, PrivilegeError, TracerError

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"

# Where the netfilter programs go: enter just before the NAT hook, exit just
# after it (NF_IP_PRI_NAT_DST = -100 in PRE_ROUTING and LOCAL_OUT,
# NF_IP_PRI_NAT_SRC = 100 in POST_ROUTING and LOCAL_IN; include/uapi/linux/
# netfilter_ipv4.h). Conntrack (-200) has run by then, so the skb has its ct.
# Two BPF programs may not share a priority on one hook (EBUSY, net/netfilter/
# core.c nf_hook_entries_grow, since 6.4), so a second tracer in the same
# namespace takes the next free priority, still between the neighbouring
# hooks: mangle (-150) / NAT / filter (0) on the DNAT side, security (50) /
# NAT / conntrack helpers (300) on the SNAT side.
_DNAT_SIDE = (range(-101, -150, -1), range(-99, 0))
_SNAT_SIDE = (range(99, 50, -1), range(101, 300))
NAT_HOOK_BRACKETS = (
    (bpf_syscall.NF_INET_PRE_ROUTING, *_DNAT_SIDE),
    (bpf_syscall.NF_INET_LOCAL_OUT, *_DNAT_SIDE),
    (bpf_syscall.NF_INET_POST_ROUTING, *_SNAT_SIDE),
    (bpf_syscall.NF_INET_LOCAL_IN, *_SNAT_SIDE),
)
HOOK_NAMES = {0: "prerouting", 1: "input", 3: "output", 4: "postrouting"}


def link_at_free_priority(prog_fd: int, hook: int, priorities: range) -> tuple[int, int]:
    for priority in priorities:
        try:
            return bpf_syscall.link_create_netfilter(prog_fd, hook, priority), priority
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
    raise KernelFeatureError(
        f"no free netfilter priority next to the NAT hook ({HOOK_NAMES[hook]}): "
        "too many BPF programs already bracket it"
    )


def load_tracing(bpf: object, target: ProgramTarget) -> int:
    """Load one fentry/fexit/tp_btf program from BCC's compiled bytecode
    against its target's BTF id (vmlinux's or its module's). Returns the
    program fd; the kernel's refusal is a KernelFeatureError with the
    verifier's words."""
    insns = bpf.dump_func(target.program.encode())  # type: ignore[attr-defined]
    try:
        return bpf_syscall.tracing_load(
            insns, target.btf_id, kind=target.kind, btf_module=target.btf_module,
            name=target.program.encode(),
        )
    except (OSError, LookupError) as exc:
        where = f"{target.function} [{target.btf_module or 'vmlinux'}]"
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KernelFeatureError(f"{target.kind} program {target.program} on {where} "
                                 f"not loaded: {why}") from exc


def _attach_target(prog: LoadedProgram, target: ProgramTarget) -> None:
    bpf = prog.bpf
    function, program = target.function.encode(), target.program.encode()
    if target.kind == "kprobe":
        bpf.attach_kprobe(event=function, fn_name=program)  # type: ignore[attr-defined]
        prog.attachments.append(("kprobe", function, program))
    elif target.kind == "kretprobe":
        bpf.attach_kretprobe(event=function, fn_name=program)  # type: ignore[attr-defined]
        prog.attachments.append(("kretprobe", function, program))
    elif target.kind in ("fentry", "fexit", "tp_btf"):
        fd = load_tracing(bpf, target)
        prog.prog_fds.append(fd)
        try:
            prog.links.append(bpf_syscall.tracing_attach(fd))
        except OSError as exc:
            raise KernelFeatureError(
                f"{target.kind} on {target.function} did not attach: {exc.strerror}") from exc
    else:
        raise TracerError(f"no attach rule for probe kind {target.kind}")


@dataclass
class ProgramSettings:
    mode: str = "events"  # or "hist"
    ringbuf_bytes: int = 16 << 20
    svc_keys_max: int = 4096
    netns_max: int = 1024
    flows_max: int = 65536
    scope_netns: bool = True
    filter_proto: int | None = None
    filter_client: str | None = None  # IPv4 dotted
    filter_endpoint: str | None = None
    filter_port: int | None = None
    wakeup_every: int = 1024
    # Fault injection for tests: NAT entry records one packet in N, so that
    # exit meets packets whose entry it cannot find (bpf/nat.bpf.h).
    nat_entry_one_in: int = 1
    # skbs of one receive list the kprobe/fentry list programs follow (bpf/
    # rx.bpf.c); load_and_attach lowers it where the verifier refuses the loop.
    rx_list_max: int = 64

    def macros(self) -> dict[str, int | str | None]:
        out: dict[str, int | str | None] = {
            "RINGBUF_PAGES": max(1, self.ringbuf_bytes // 4096),
            "SVC_KEYS_MAX": self.svc_keys_max,
            "NETNS_MAX": self.netns_max,
            "FLOWS_MAX": self.flows_max,
            "WAKEUP_EVERY": self.wakeup_every,
            "RX_LIST_MAX": self.rx_list_max,
        }
        if self.nat_entry_one_in > 1:
            out["NAT_ENTRY_ONE_IN"] = self.nat_entry_one_in
        if self.mode == "hist":
            out["MODE_HIST"] = None
        if self.scope_netns:
            out["SCOPE_NETNS"] = None
        if self.filter_proto is not None:
            out["FILTER_PROTO"] = self.filter_proto
        if self.filter_client:
            out["FILTER_CLIENT"] = hex(be32_as_loaded(self.filter_client))
        if self.filter_endpoint:
            out["FILTER_ENDPOINT"] = hex(be32_as_loaded(self.filter_endpoint))
        if self.filter_port is not None:
            out["FILTER_PORT"] = hex(be16_as_loaded(self.filter_port))
        if self.filter_client or self.filter_endpoint or self.filter_port is not None:
            out["TRACK_FLOWS"] = None
        return out


_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"', re.MULTILINE)


def local_includes(name: str) -> list[str]:
    """The bpf/ files that bpf/<name> includes with #include "...", in order."""
    return _LOCAL_INCLUDE.findall((BPF_DIR / name).read_text())


def headers_first(files: list[str]) -> list[str]:
    """files and every bpf/ header they include, directly or not, each after
    the headers it includes (depth first, in include order). An include loop
    has no such order: TracerError."""
    order: list[str] = []
    path: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in path:
            loop = " -> ".join([*path[path.index(name):], name])
            raise TracerError(f"include loop in bpf/: {loop}")
        path.append(name)
        for included in local_includes(name):
            visit(included)
        path.pop()
        order.append(name)

    for name in files:
        visit(name)
    return order


def compose_source(backends: list[Backend]) -> str:
    families = sorted({f"{b.family}.bpf.c" for b in backends})
    files = [f for f in headers_first(families) if f not in families] + families
    parts = []
    for name in files:
        path = BPF_DIR / name
        parts.append(f'#line 1 "{path}"\n{path.read_text()}\n')
    return "".join(parts)


# Backends whose programs get the skb (and the hook state) as BTF-typed
# pointers, and nothing else: if every program is one of them, the C reads
# their fields with plain loads (KERNEL_PTRS_BTF, bpf/kernel_fields.bpf.h).
BTF_TYPED_BACKENDS = frozenset({"tp_btf", "netfilter"})


def cflags_for(backends: list[Backend], settings: ProgramSettings, offsets: dict[str, int]) -> list[str]:
    macros: dict[str, int | str | None] = {**offsets, **settings.macros()}
    for b in backends:
        macros.update(b.macros)
    if backends and all(b.name in BTF_TYPED_BACKENDS for b in backends):
        macros["KERNEL_PTRS_BTF"] = None
    flags = [f"-I{BPF_DIR}"]
    for key, value in macros.items():
        flags.append(f"-D{key}" if value is None else f"-D{key}={value}")
    # BCC adds -O2; warnings about the kernel's own 6.1 headers are noise.
    flags.append("-Wno-macro-redefined")
    return flags


@dataclass
class LoadedProgram:
    bpf: object  # bcc.BPF
    backends: dict[str, Backend]
    settings: ProgramSettings
    compile_s: float = 0.0
    first_attach_s: float | None = None
    all_attached_s: float | None = None
    # fds of links (netfilter, fentry/fexit) and of programs loaded outside
    # BCC (fentry/fexit): closing them detaches and frees
    links: list[int] = field(default_factory=list)
    prog_fds: list[int] = field(default_factory=list)
    # (kind, target, fn_name) of every BCC attachment, for detach()
    attachments: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    # netfilter hook -> (enter, exit) priorities actually used
    nat_priorities: dict[str, tuple[int, int]] = field(default_factory=dict)

    def table(self, name: str):
        return self.bpf[name.encode()]  # type: ignore[index]

    def detach(self) -> None:
        """Stop the probes but keep the maps, so what is queued can still be read."""
        for fd in self.links + self.prog_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.links.clear()
        self.prog_fds.clear()
        bpf = self.bpf
        for kind, target, fn in reversed(self.attachments):
            with contextlib.suppress(Exception):
                if kind == "raw_tracepoint":
                    bpf.detach_raw_tracepoint(tp=target)  # type: ignore[attr-defined]
                elif kind == "tracepoint":
                    bpf.detach_tracepoint(tp=target, fn_name=fn)  # type: ignore[attr-defined]
                elif kind == "kprobe":
                    bpf.detach_kprobe(event=target, fn_name=fn)  # type: ignore[attr-defined]
                elif kind == "kretprobe":
                    bpf.detach_kretprobe(event=target, fn_name=fn)  # type: ignore[attr-defined]
        self.attachments.clear()

    def close(self) -> None:
        self.detach()
        with contextlib.suppress(Exception):
            self.bpf.cleanup()  # type: ignore[attr-defined]


def _bcc():
    try:
        import bcc
    except ImportError as exc:
        raise EnvironmentProblem(
            "BCC is not importable: install Debian's python3-bpfcc and run the tracer "
            "from a venv made with --system-site-packages (scripts/setup.sh does both)"
        ) from exc
    return bcc


def compile_program(
    backends: list[Backend], settings: ProgramSettings, btf: Btf | None = None
) -> tuple[object, float]:
    """Compile; BCC loads nothing yet (programs load when attached)."""
    if os.geteuid() != 0:
        raise PrivilegeError("capturing needs root (BPF programs and netfilter hooks)")
    headers = find_kernel_headers()
    if not headers.own_kernel:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    bcc = _bcc()
    offsets = kernel_offsets(btf or Btf.load())
    text = compose_source(backends)
    cflags = cflags_for(backends, settings, offsets)
    t0 = time.monotonic()
    try:
        bpf = bcc.BPF(text=text.encode(), cflags=cflags)
    except Exception as exc:  # BCC raises bare Exception for compile errors
        raise TracerError(f"BPF compile failed: {exc} (see the compiler output above)") from exc
    return bpf, time.monotonic() - t0


# The smallest receive-list bound worth loading: GRO hands lists of
# net.core.gro_normal_batch (8) skbs to the stack.
RX_LIST_MIN = 8
# What the kernel says (E2BIG) when the verifier gave up on a program's
# complexity (1M instructions processed, BPF_COMPLEXITY_LIMIT_INSNS).
_TOO_COMPLEX = "Argument list too long"


def _uses_rx_list(backends: dict[str, Backend]) -> bool:
    return any("_list_" in p.program for b in backends.values() for p in b.programs)


def load_and_attach(
    backends: dict[str, Backend],
    settings: ProgramSettings,
    btf: Btf | None = None,
    t_start: float | None = None,
) -> LoadedProgram:
    """Compile, load, attach every backend. Netfilter links are created in the
    calling thread's network namespace.

    The kprobe and fentry receive-list programs walk a list in a bounded
    loop, which older verifiers explore iteration by iteration: Debian's 6.1
    refuses the 64-skb loop once the packet parser reads ICMP quotes (more
    than 1M instructions processed). Then the bound is halved until the
    verifier accepts it, down to RX_LIST_MIN; skbs past it are counted as
    lost (never silently), and the bound used is in the settings returned."""
    while True:
        try:
            return _load_and_attach(backends, settings, btf, t_start)
        except KernelFeatureError as exc:
            if (_TOO_COMPLEX not in str(exc) or not _uses_rx_list(backends)
                    or settings.rx_list_max // 2 < RX_LIST_MIN):
                raise
            settings = replace(settings, rx_list_max=settings.rx_list_max // 2)


def _load_and_attach(
    backends: dict[str, Backend],
    settings: ProgramSettings,
    btf: Btf | None,
    t_start: float | None,
) -> LoadedProgram:
    t_start = time.monotonic() if t_start is None else t_start
    bpf, compile_s = compile_program(list(backends.values()), settings, btf)
    prog = LoadedProgram(bpf=bpf, backends=backends, settings=settings, compile_s=compile_s)

    def attached() -> None:
        now = time.monotonic() - t_start
        if prog.first_attach_s is None:
            prog.first_attach_s = now
        prog.all_attached_s = now

    try:
        for point, b in backends.items():
            target = b.target.encode()
            if b.name == "raw_tracepoint":
                fn = f"trc_{point}_raw".encode()
                bpf.attach_raw_tracepoint(tp=target, fn_name=fn)
                prog.attachments.append(("raw_tracepoint", target, fn))
            elif b.name == "tracepoint":
                fn = f"trc_{point}_tp".encode()
                bpf.attach_tracepoint(tp=target, fn_name=fn)
                prog.attachments.append(("tracepoint", target, fn))
            elif b.name in ("kprobe", "fentry", "tp_btf"):
                for target in b.programs:
                    _attach_target(prog, target)
            elif b.name == "netfilter":
                enter = bpf.load_func(b"trc_nat_nf_enter", bpf_syscall.BPF_PROG_TYPE_NETFILTER,
                                      attach_type=bpf_syscall.BPF_NETFILTER)
                leave = bpf.load_func(b"trc_nat_nf_exit", bpf_syscall.BPF_PROG_TYPE_NETFILTER,
                                      attach_type=bpf_syscall.BPF_NETFILTER)
                for hook, before, after in NAT_HOOK_BRACKETS:
                    fd_in, p_in = link_at_free_priority(enter.fd, hook, before)
                    prog.links.append(fd_in)
                    fd_out, p_out = link_at_free_priority(leave.fd, hook, after)
                    prog.links.append(fd_out)
                    prog.nat_priorities[HOOK_NAMES[hook]] = (p_in, p_out)
            else:
                raise TracerError(f"no attach rule for backend {b.name} of {point}")
            attached()
    except TracerError:
        prog.close()
        raise
    except Exception as exc:
        prog.close()
        raise KernelFeatureError(f"attaching probes failed: {exc}") from exc
    return prog
