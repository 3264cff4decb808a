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

from tracer.btf import KIND_FUNC, VMLINUX_BTF, Btf, BtfError
from tracer.capture import bpf_syscall

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")


def ensure_tracefs() -> Path | None:
    """The tracefs mount (mounting it at /sys/kernel/tracing if needed), or None."""
    for path in TRACEFS_CANDIDATES:
        if (path / "events").is_dir():
            return path
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["mount", "-t", "tracefs", "tracefs", str(TRACEFS_CANDIDATES[0])],
            check=True, capture_output=True, timeout=10,
        )
    return TRACEFS_CANDIDATES[0] if (TRACEFS_CANDIDATES[0] / "events").is_dir() else None


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
        return Feature(path is not None, str(path) if path else "tracefs not mounted and mount failed")

    @cached_property
    def kprobes(self) -> Feature:
        if KPROBE_PMU.is_dir():
            return Feature(True, "kprobe PMU present")
        tracefs = ensure_tracefs()
        if tracefs is not None and (tracefs / "kprobe_events").exists():
            return Feature(True, f"{tracefs}/kprobe_events")
        return Feature(False, "no kprobe PMU and no kprobe_events (CONFIG_KPROBES is off)")

    @cached_property
    def kallsyms(self) -> frozenset[str]:
        """Text symbols of the kernel (empty if unreadable)."""
        names = set()
        try:
            with open("/proc/kallsyms") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tT":
                        names.add(parts[2])
        except OSError:
            pass
        return frozenset(names)

    def btf_function_id(self, name: str) -> int | None:
        return None if self.btf is None else self.btf.find(name, (KIND_FUNC,))

    @cached_property
    def fentry(self) -> Feature:
        if self.btf is None:
            return Feature(False, "needs BTF")
        func = self.btf_function_id("nf_nat_inet_fn") or self.btf_function_id("__netif_receive_skb_core")
        if func is None:
            return Feature(False, "no probe-able function in BTF")
        why = bpf_syscall.probe_fentry(func)
        return Feature(why is None, why or "fentry program loads")

    @cached_property
    def netfilter_link(self) -> Feature:
        why = bpf_syscall.probe_netfilter_link()
        return Feature(why is None, why or "netfilter program links (6.4+)")

    @cached_property
    def ringbuf(self) -> Feature:
        why = bpf_syscall.probe_ringbuf()
        return Feature(why is None, why or "BPF_MAP_TYPE_RINGBUF (5.8+)")

    def raw_tracepoint(self, name: str) -> Feature:
        if self.btf is not None and self.btf.find(f"btf_trace_{name}", (8,)) is not None:
            return Feature(True, f"raw tracepoint {name}")
        return Feature(False, f"no raw tracepoint {name} in BTF")

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
        if not self.fentry:
            return Feature(False, self.fentry.detail)
        for fn in candidates:
            if self.btf_function_id(fn) is not None:
                return Feature(True, fn)
        return Feature(False, f"none of {', '.join(candidates)} in BTF")


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


def is_root() -> bool:
    return os.geteuid() == 0
