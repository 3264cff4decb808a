"""Run a command inside Debian's distro kernel, booted under qemu by virtme-ng.

One boot = one command: `run_in_vm` boots the kernel from `ensure_kernel`
with the host's own root filesystem (read-only 9p, as virtme-ng shares
it), runs the command as root in the repository, and returns its exit code and
output. Booting costs 15-25 s under TCG, so callers should put many checks in
one command, e.g. a whole pytest session:

    run_in_vm([".venv/bin/python", "-m", "pytest", "tests/capture", "-m", "not kernel_vm"])

Why files instead of the console: virtme-ng-init needs a udevd on the shared
root filesystem to make /dev/virtio-ports/virtme.*; a host without one (no
systemd-udevd installed) leaves the guest on the serial console for the
script's I/O, and the exit code is lost (vng exits 255). Files work either way.
The command's stdout, stderr and exit status therefore go to files in a private
--rwdir directory; vng's own output is kept only as the console log.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tracer.errors import EnvironmentProblem, PrivilegeError
from tracer.system import require_program
from tracer.testing.distro_kernel import KernelImage, ensure_kernel

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loaded before the command runs, so that their symbols are in /proc/kallsyms
# when probes attach (nf_nat_inet_fn lives in nf_nat.ko) and so that a missing
# module fails the run up front. What the lab and kube-proxy-style rules use:
# netns + veth (+ bridge, VXLAN, IPIP for CNI-like topologies), iptables-nft
# (nf_tables + nft_compat for xt matches), NAT, conntrack, and the xt matches
# and targets of KUBE-* chains (MARK is in xt_mark; -m recent for session
# affinity). br_netfilter is left out on purpose: loading it
# sends bridged frames through iptables, which changes what a bridge lab does;
# modprobe still works inside the VM for whoever wants it.
LAB_MODULES: tuple[str, ...] = (
    "veth",
    "bridge",
    "vxlan",
    "ipip",
    "dummy",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_compat",
    "nft_ct",
    "xt_statistic",
    "xt_comment",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_conntrack",
    "xt_addrtype",
    "xt_mark",
    "xt_multiport",
    "xt_tcpudp",
    "xt_recent",
)

_CONSOLE_TAIL_LINES = 15


class VmError(EnvironmentProblem):
    """The VM could not run the command; carries the console log's path."""

    def __init__(self, message: str, console_log: Path | None = None):
        super().__init__(message)
        self.console_log = console_log


class VmBootError(VmError):
    """qemu/virtme-ng exited before the command finished (no exit status came back)."""


class VmTimeout(VmError):
    """The VM was still running at the deadline and was killed."""


class VmSetupError(VmError):
    """The guest booted but could not be prepared (a kernel module did not load)."""


@dataclass(frozen=True)
class VmResult:
    returncode: int
    stdout: str
    stderr: str
    boot_seconds: float  # host start of vng -> guest script running (kernel + init)
    wall_seconds: float  # host start of vng -> qemu gone
    kernel_release: str  # uname -r inside the VM
    setup_seconds: float = 0.0  # mounts + module loading inside the guest
    console: str = ""  # kernel and virtme-ng-init log (vng --verbose)
    modules_loaded: tuple[str, ...] = field(default_factory=tuple)


def run_in_vm(
    command: str | Sequence[str],
    *,
    rwdirs: Sequence[str | os.PathLike[str]] = (),
    memory: str = "2G",
    cpus: int = 2,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] = REPO_ROOT,
    modules: Sequence[str] = LAB_MODULES,
    kernel: KernelImage | None = None,
    keep_run_dir: bool = False,
) -> VmResult:
    """Boot the distro kernel, run `command` as root in `cwd`, return its result.

    A string is run by bash -c; a list is run as argv. Inside the guest the
    host's paths are the same: the repository (writable through a throwaway
    overlay, so pytest caches and .pyc files never reach the host), its .venv
    (first on PATH), the installed headers. Each of `rwdirs` is shared
    read-write at its own path: the only place where what the command writes
    survives the VM. tracefs, debugfs and bpffs are mounted; `modules` are
    loaded first.

    Raises VmBootError / VmTimeout / VmSetupError when the command did not run
    to completion; a failing command is not an error (see returncode).
    """
    if os.geteuid() != 0:
        raise PrivilegeError("run_in_vm needs root (BPF and netns in the guest run as root)")
    vng = _find_vng()
    require_program("qemu-system-x86_64")
    require_program("busybox")  # virtme-ng builds its initramfs from it
    kernel = kernel or ensure_kernel()
    shared = [Path(d).resolve() for d in rwdirs]
    for d in shared:
        if not d.is_dir():
            raise VmSetupError(f"rwdir {d} does not exist on the host")

    run_dir = Path(tempfile.mkdtemp(prefix="tracer-vm-", dir="/tmp"))
    io = run_dir / "io"
    io.mkdir()
    script = io / "guest.sh"
    script.write_text(_guest_script(io, command, Path(cwd).resolve(), env or {}, modules))
    console_log = run_dir / "console.log"
    argv = _vng_argv(vng, kernel, io, shared, script, memory=memory, cpus=cpus)
    ok = False
    try:
        boot_seconds, wall_seconds = _run_vng(vng, argv, io, console_log, timeout)
        result = _collect(io, console_log, boot_seconds, wall_seconds, modules)
        ok = True
        return result
    finally:
        if ok and not keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def _vng_argv(
    vng: str, kernel: KernelImage, io: Path, shared: Sequence[Path], script: Path, *,
    memory: str, cpus: int,
) -> list[str]:
    """The vng command line: boot `kernel`, share the repository (overlay),
    io and `shared`, run `script`."""
    argv = [
        vng,
        "--run",
        str(kernel.vmlinuz),
        # /dev/kvm may exist while qemu with KVM hangs or fails on MSRs
        # (nested virtualisation): always emulate (TCG).
        "--disable-kvm",
        "--verbose",  # kernel log to stderr = our console log, for diagnosis
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        # virtme-ng-init mounts a tmpfs over /var/cache in the guest, hiding the
        # default kernel cache, and with it the modules tree that
        # /lib/modules/<release> links to: share the unpacked kernel again.
        "--rodir",
        str(kernel.root),
        "--overlay-rwdir",
        str(REPO_ROOT),
        "--rwdir",
        str(io),
    ]
    for d in shared:
        argv += ["--rwdir", str(d)]
    argv += ["--exec", f"bash {shlex.quote(str(script))}"]
    return argv


def _run_vng(
    vng: str, argv: Sequence[str], io: Path, console_log: Path, timeout: float
) -> tuple[float | None, float]:
    """Run vng to its end (VmTimeout past timeout), its output to console_log;
    returns (seconds until the guest script started, or None; wall seconds)."""
    host_env = dict(os.environ)
    # vng starts its helper virtme-run through PATH.
    host_env["PATH"] = f"{Path(vng).parent}:{host_env.get('PATH', '/usr/bin:/bin')}"
    started = time.monotonic()
    boot_seconds = None
    with console_log.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=host_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while proc.poll() is None:
                if boot_seconds is None and (io / "started").exists():
                    boot_seconds = time.monotonic() - started
                if time.monotonic() - started > timeout:
                    _kill_group(proc)
                    raise VmTimeout(
                        f"VM still running after {timeout:.0f}s; killed (console: {console_log})",
                        console_log,
                    )
                time.sleep(0.1)
        except BaseException:
            _kill_group(proc)
            raise
    return boot_seconds, time.monotonic() - started


def _find_vng() -> str:
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file():
        return str(beside)
    found = shutil.which("vng")
    if found is None:
        return require_program("vng")  # raises MissingPackageError
    return found


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop vng and the qemu it started (same session, started by us)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _collect(
    io: Path,
    console_log: Path,
    boot_seconds: float | None,
    wall_seconds: float,
    modules: Sequence[str],
) -> VmResult:
    console = console_log.read_text(errors="replace")
    failed = _read(io / "modules_failed").split()
    if failed:
        raise VmSetupError(
            f"kernel modules did not load in the VM: {', '.join(failed)} "
            f"({_last_line(_read(io / 'setup.log'))}; console: {console_log})",
            console_log,
        )
    rc_text = _read(io / "returncode").strip()
    if not rc_text:
        stage = (
            "after boot, before the command ended"
            if (io / "started").exists()
            else "before the guest ran anything"
        )
        raise VmBootError(
            f"VM stopped {stage} (vng wall {wall_seconds:.0f}s); console ends: "
            f"{_last_line(console)!r} (full log: {console_log})",
            console_log,
        )
    return VmResult(
        returncode=int(rc_text),
        stdout=_read(io / "stdout"),
        stderr=_read(io / "stderr"),
        boot_seconds=round(boot_seconds if boot_seconds is not None else wall_seconds, 2),
        wall_seconds=round(wall_seconds, 2),
        kernel_release=_read(io / "kernel_release").strip(),
        setup_seconds=_setup_seconds(io),
        console=console,
        modules_loaded=tuple(m for m in modules if m not in failed),
    )


def _setup_seconds(io: Path) -> float:
    try:
        start = float(_read(io / "uptime_started").split()[0])
        ready = float(_read(io / "uptime_ready").split()[0])
    except (ValueError, IndexError):
        return 0.0
    return round(ready - start, 2)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(empty)"


def _guest_script(
    io: Path,
    command: str | Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    modules: Sequence[str],
) -> str:
    """The bash script virtme-ng-init runs as root once the guest is up."""
    q = shlex.quote
    run = f"bash -c {q(command)}" if isinstance(command, str) else shlex.join(command)
    venv_bin = REPO_ROOT / ".venv" / "bin"
    exports = "\n".join(f"export {k}={q(v)}" for k, v in env.items())
    return f"""\
# Written by tracer.testing.kernel_vm; runs inside the VM as root.
io={q(str(io))}
exec >"$io/setup.log" 2>&1
uname -r > "$io/kernel_release"
cat /proc/uptime > "$io/uptime_started"
: > "$io/started"
# virtme-ng-init mounts debugfs and tracefs but not bpffs; BCC and bpftool want all three.
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
for m in {" ".join(q(m) for m in modules)}; do
    modprobe "$m" || echo "$m" >> "$io/modules_failed"
done
[ -s "$io/modules_failed" ] && exit 1
export PATH={q(str(venv_bin))}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1 TRACER_IN_VM=1
{exports}
cd {q(str(cwd))} || exit 1
cat /proc/uptime > "$io/uptime_ready"
{run} </dev/null >"$io/stdout" 2>"$io/stderr"
echo $? > "$io/returncode"
sync
"""
