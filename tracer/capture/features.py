"""What the running kernel offers the tracer, measured rather than assumed:
each feature is tried (a tiny program loaded, a link made) or looked up where
the kernel publishes it. Used by backend selection and `tracer doctor`."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tracer.btf import KIND_FUNC, KIND_TYPEDEF, VMLINUX_BTF, Btf, BtfError
from tracer.capture import bpf_syscall
from tracer.capture.kfuncs import FunctionLocator, KernelFunction, read_kallsyms

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
# Whether the kernel loads fentry programs at all is tried on one of these
# (built into vmlinux and exported, so in its BTF wherever there is BTF);
# which functions can be traced is then tried per function (kernel_function).
FENTRY_PROBE_FUNCTIONS = ("netif_receive_skb", "nf_hook_slow")


def _has_events(path: Path) -> bool:
    try:
        return (path / "events").is_dir()
    except PermissionError:  # tracefs is root's (0700): unreadable, as if absent
        return False


def ensure_tracefs() -> Path | None:
    """The tracefs mount (mounting it at /sys/kernel/tracing if needed), or
    None; None too for a user who may not read it."""
    for path in TRACEFS_CANDIDATES:
        if _has_events(path):
            return path
    if os.geteuid() != 0:
        return None  # mounting needs root
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["mount", "-t", "tracefs", "tracefs", str(TRACEFS_CANDIDATES[0])],
            check=True, capture_output=True, timeout=10,
        )
    return TRACEFS_CANDIDATES[0] if _has_events(TRACEFS_CANDIDATES[0]) else None


@dataclass
class Feature:
    ok: bool
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class KernelFeatures:
    """Lazily measured features of the running kernel (root needed for most)."""

    release: str = field(default_factory=platform.release)
    # function -> where fentry loads on it, or why not (kernel_function)
    _fentry_tried: dict[str, KernelFunction | str] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def btf(self) -> Btf | None:
        try:
            return Btf.load(VMLINUX_BTF)
        except BtfError:
            return None

    @cached_property
    def btf_feature(self) -> Feature:
        if self.btf is None:
            return Feature(False, f"{VMLINUX_BTF} missing (CONFIG_DEBUG_INFO_BTF is off)")
        return Feature(True, str(VMLINUX_BTF))

    @cached_property
    def bpf(self) -> Feature:
        why = bpf_syscall.probe_bpf()
        return Feature(why is None, why or "bpf() works")

    @cached_property
    def tracefs(self) -> Feature:
        path = ensure_tracefs()
        if path is None and os.geteuid() != 0:
            return Feature(False, "not readable without root")
        return Feature(path is not None, str(path) if path else "tracefs not mounted and mount failed")

    @cached_property
    def kprobes(self) -> Feature:
        if KPROBE_PMU.is_dir():
            return Feature(True, "kprobe PMU present")
        tracefs = ensure_tracefs()
        if tracefs is not None and (tracefs / "kprobe_events").exists():
            return Feature(True, f"{tracefs}/kprobe_events")
        if tracefs is None and os.geteuid() != 0:
            return Feature(False, "no kprobe PMU; kprobe_events (tracefs) not readable without root")
        return Feature(False, "no kprobe PMU and no kprobe_events (CONFIG_KPROBES is off)")

    @cached_property
    def symbols(self) -> dict[str, str | None]:
        """Text symbols of the kernel -> their module (None: vmlinux); empty if unreadable."""
        return read_kallsyms()

    @cached_property
    def kallsyms(self) -> frozenset[str]:
        """Text symbols of the kernel (empty if unreadable)."""
        return frozenset(self.symbols)

    def btf_function_id(self, name: str) -> int | None:
        return None if self.btf is None else self.btf.find(name, (KIND_FUNC,))

    @cached_property
    def fentry(self) -> Feature:
        if self.btf is None:
            return Feature(False, "needs BTF")
        func = next((f for f in FENTRY_PROBE_FUNCTIONS if self.btf_function_id(f) is not None), None)
        if func is None:
            return Feature(False, "no probe-able function in BTF")
        why = bpf_syscall.probe_fentry(self.btf_function_id(func))  # type: ignore[arg-type]
        return Feature(why is None, why or "fentry program loads")

    @cached_property
    def _locator(self) -> FunctionLocator | None:
        return None if self.btf is None else FunctionLocator(self.btf, self.symbols)

    def kernel_function(self, name: str) -> KernelFunction | str:
        """Where fentry would attach to `name` (vmlinux or module BTF), tried
        with a load of an empty program there; or why it cannot."""
        tried = self._fentry_tried
        if name not in tried:
            found = self._locator.locate(name) if self._locator else "needs BTF"
            if isinstance(found, KernelFunction):
                why = bpf_syscall.probe_fentry(found.btf_id, found.module)
                if why is not None:
                    found = f"{found.describe()}: {why}"
            tried[name] = found
        return tried[name]

    @cached_property
    def netfilter_link(self) -> Feature:
        why = bpf_syscall.probe_netfilter_link()
        return Feature(why is None, why or "netfilter program links (6.4+)")

    @cached_property
    def ringbuf(self) -> Feature:
        why = bpf_syscall.probe_ringbuf()
        return Feature(why is None, why or "BPF_MAP_TYPE_RINGBUF (5.8+)")

    def raw_tracepoint(self, name: str) -> Feature:
        if self.btf is not None and self.btf.find(f"btf_trace_{name}", (KIND_TYPEDEF,)) is not None:
            return Feature(True, f"raw tracepoint {name}")
        return Feature(False, f"no raw tracepoint {name} in BTF")

    @cached_property
    def tp_btf_loads(self) -> Feature:
        """Whether BTF-typed raw tracepoint programs load at all (5.5+; they
        are BPF_PROG_TYPE_TRACING like fentry, but need no trampoline: on
        this project's 6.18 machines fentry is refused and tp_btf loads)."""
        btf = self.btf
        typedef = btf.find("btf_trace_netif_receive_skb", (KIND_TYPEDEF,)) if btf is not None else None
        if typedef is None:
            return Feature(False, "needs BTF with the raw tracepoint netif_receive_skb")
        why = bpf_syscall.probe_tp_btf(typedef)
        return Feature(why is None, why or "tp_btf program loads")

    def tp_btf(self, name: str) -> int | str:
        """The BTF id of raw tracepoint `name`'s btf_trace_ typedef, which a
        tp_btf program on it is loaded against; or why there is none."""
        if not self.tp_btf_loads:
            return self.tp_btf_loads.detail
        assert self.btf is not None
        typedef = self.btf.find(f"btf_trace_{name}", (KIND_TYPEDEF,))
        return f"no raw tracepoint {name} in BTF" if typedef is None else typedef

    def tracepoint_format(self, category: str, name: str) -> Path | None:
        tracefs = ensure_tracefs()
        if tracefs is None:
            return None
        fmt = tracefs / "events" / category / name / "format"
        return fmt if fmt.exists() else None

    def tracepoint(self, category: str, name: str) -> Feature:
        fmt = self.tracepoint_format(category, name)
        if fmt is None:
            return Feature(False, f"no tracepoint {category}:{name} (or no tracefs)")
        return Feature(True, f"tracepoint {category}:{name}")

    def kprobe_function(self, candidates: tuple[str, ...]) -> Feature:
        """First candidate the kernel can kprobe (present in kallsyms, not
        renamed by the compiler to a .isra/.constprop clone)."""
        if not self.kprobes:
            return Feature(False, self.kprobes.detail)
        syms = self.kallsyms
        for fn in candidates:
            if fn in syms:
                return Feature(True, fn)
        return Feature(False, f"none of {', '.join(candidates)} in /proc/kallsyms")

    def fentry_function(self, candidates: tuple[str, ...]) -> Feature:
        """First candidate an fentry program loads on (in vmlinux's BTF or its
        module's); the detail is its name (kernel_function() has the rest)."""
        if not self.fentry:
            return Feature(False, self.fentry.detail)
        reasons = []
        for fn in candidates:
            found = self.kernel_function(fn)
            if isinstance(found, KernelFunction):
                return Feature(True, fn)
            reasons.append(found)
        return Feature(False, "; ".join(reasons))


def parse_tracepoint_format(path: Path) -> dict[str, tuple[int, int]]:
    """field name -> (offset, size) from a tracefs format file."""
    fields = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(
            p.strip().split(":", 1) for p in line.split(";") if ":" in p
        )
        decl = parts["field"].strip()
        name = decl.split()[-1].split("[")[0].lstrip("*")
        fields[name] = (int(parts["offset"]), int(parts["size"]))
    return fields

