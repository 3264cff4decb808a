"""Small helpers around the host: privilege checks, required programs, and
running commands (optionally inside a network namespace) with errors that name
what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from tracer.errors import MissingPackageError, PrivilegeError, TracerError

# Program -> Debian package that provides it. Used to turn "not found" into a
# line that tells the user what to install.
PACKAGE_OF = {
    "ip": "iproute2",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "iptables-legacy-save": "iptables",
    "conntrack": "conntrack",
    "bird": "bird2",
    "birdc": "bird2",
    "nginx": "nginx-light",
    "dnsmasq": "dnsmasq-base",
    "wrk": "wrk",
    "curl": "curl",
    "tcpdump": "tcpdump",
    "tshark": "tshark",
    "bpftool": "bpftool",
    "nft": "nftables",
    "vng": "virtme-ng (pip)",
    "qemu-system-x86_64": "qemu-system-x86",
}


def require_root(what: str = "this command") -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(f"{what} needs root (try: sudo tracer ...)")


def require_program(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise MissingPackageError(program, PACKAGE_OF.get(program, program))
    return path


def run(
    cmd: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 60,
) -> subprocess.CompletedProcess[str]:
    """Run cmd (in netns if given) and capture its output as text.

    A failure raises TracerError carrying the command's own stderr, so the CLI
    can print one line that says what went wrong.
    """
    argv = list(cmd)
    require_program(argv[0])
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise TracerError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise TracerError(f"{' '.join(argv)}: {last}")
    return proc
