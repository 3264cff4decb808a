"""`tracer doctor`: what this kernel and machine offer the tracer, and which
backend each probe point would use. Capture can run only if every probe point
has a backend and BPF, BTF, the ring buffer and headers for BCC are there."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from tracer.capture.backends import POINTS, explain
from tracer.capture.features import KernelFeatures
from tracer.capture.kheaders import find_kernel_headers
from tracer.errors import EnvironmentProblem, PrivilegeError, TracerError

# What a user who is not root is told, beside the report of what could be
# checked without root (BTF, headers, BCC, iptables).
NOT_ROOT = ("doctor needs root to try bpf(), the ring buffer and each probe backend; "
            "the report has what it could check without (try: sudo tracer doctor)")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass
class DoctorReport:
    kernel: str
    checks: list[Check] = field(default_factory=list)
    backends: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)

    @property
    def chosen(self) -> dict[str, str | None]:
        return {
            point: next((name for name, why in rows if why is None), None)
            for point, rows in self.backends.items()
        }

    @property
    def can_capture(self) -> bool:
        return all(c.ok for c in self.checks if c.required) and all(self.chosen.values())

    @property
    def root(self) -> bool:
        return all(c.ok for c in self.checks if c.name == "root")

    @property
    def exit_code(self) -> int:
        """0 if a capture can run; else the documented code of what stops it:
        4 for something root would not fix, 3 if only root is missing (the
        checks that need root were then not made: NOT_ROOT says so)."""
        if self.can_capture:
            return 0
        if any(not c.ok for c in self.checks if c.required and c.name != "root"):
            return EnvironmentProblem.exit_code
        return PrivilegeError.exit_code if not self.root else EnvironmentProblem.exit_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "can_capture": self.can_capture,
            "root": self.root,
            "checks": [c.__dict__ for c in self.checks],
            "backends": {p: [{"backend": n, "available": why is None, "why_not": why} for n, why in rows]
                         for p, rows in self.backends.items()},
            "chosen": self.chosen,
        }

    def render(self) -> str:
        lines = [f"kernel {self.kernel}"]
        for c in self.checks:
            mark = "ok  " if c.ok else ("MISS" if c.required else "no  ")
            lines.append(f"  [{mark}] {c.name:<22} {c.detail}")
        lines.append("probe points (best backend first; * = would be used):")
        for point, rows in self.backends.items():
            chosen = self.chosen[point]
            parts = []
            for name, why in rows:
                if why is None:
                    parts.append(f"*{name}" if name == chosen else name)
                else:
                    parts.append(f"-{name} ({why})")
            lines.append(f"  {point:<5} " + "; ".join(parts))
        lines.append("capture can run" if self.can_capture else "capture cannot run here")
        return "\n".join(lines)


def _iptables_backend() -> Check:
    exe = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if exe is None:
        return Check("iptables", False, "not installed (Debian package iptables)", required=False)
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("iptables", False, str(exc), required=False)
    backend = "nf_tables" if "nf_tables" in out else "legacy" if "legacy" in out else "unknown"
    legacy = shutil.which("iptables-legacy-save") or shutil.which("iptables-legacy-save", path="/usr/sbin")
    return Check("iptables", True, f"{out} (backend {backend}; legacy rules also read: "
                 f"{'yes' if legacy else 'no'})", required=False)


def run_doctor() -> DoctorReport:
    kf = KernelFeatures()
    report = DoctorReport(kernel=platform.release())
    root = os.geteuid() == 0
    report.checks.append(Check("root", root, "yes" if root else "run as root: BPF needs it"))
    report.checks.append(Check("BTF", kf.btf_feature.ok, kf.btf_feature.detail))
    if root:
        report.checks.append(Check("bpf()", kf.bpf.ok, kf.bpf.detail))
        report.checks.append(Check("ring buffer", kf.ringbuf.ok, kf.ringbuf.detail))
    report.checks.append(Check("tracefs", kf.tracefs.ok, kf.tracefs.detail, required=False))
    report.checks.append(Check("kprobes", kf.kprobes.ok, kf.kprobes.detail, required=False))
    if root:
        report.checks.append(Check("fentry", kf.fentry.ok, kf.fentry.detail, required=False))
        report.checks.append(Check("BTF tracepoints", kf.tp_btf_loads.ok, kf.tp_btf_loads.detail,
                                   required=False))
        report.checks.append(Check("netfilter links", kf.netfilter_link.ok, kf.netfilter_link.detail,
                                   required=False))
    try:
        headers = find_kernel_headers()
        report.checks.append(Check("headers for BCC", True, headers.origin))
    except TracerError as exc:
        report.checks.append(Check("headers for BCC", False, str(exc)))
    try:
        import bcc  # noqa: F401

        report.checks.append(Check("BCC", True, "python3-bpfcc importable"))
    except ImportError:
        report.checks.append(Check("BCC", False, "not importable: install python3-bpfcc"))
    report.checks.append(_iptables_backend())
    if root and kf.btf is not None:
        report.backends = explain(kf, POINTS)
    else:
        report.backends = {p: [("(needs root and BTF to probe)", "not probed")] for p in POINTS}
    return report
