"""Network namespaces: resolve a name or path, enter one (setns). Python 3.11
has no os.setns, so this calls libc's setns(2)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from tracer.errors import UsageError

CLONE_NEWNET = 0x40000000
# ioctl on a namespace file: which kind of namespace it is (Linux 4.11+,
# linux/nsfs.h _IO(0xb7, 0x3)); any other file answers ENOTTY.
NS_GET_NSTYPE = 0xB703
NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def resolve(name_or_path: str) -> Path:
    """'lab-node-a' -> /run/netns/lab-node-a; a path is taken as it is. It
    must be a network namespace (not any file that exists, which setns
    would refuse only later, and not '', which would mean the host)."""
    if not name_or_path:
        raise UsageError("--netns: empty name (leave the option out for this host's namespace)")
    path = Path(name_or_path)
    if "/" not in name_or_path:
        path = NETNS_RUN_DIR / name_or_path
    try:
        # Namespace files are regular (empty) files: anything else is not
        # opened at all, since opening a FIFO or a device can block or act.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"--netns {_shown(name_or_path)}: not a network namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise UsageError(f"--netns {_shown(name_or_path)}: {exc.strerror}") from exc
        known = ", ".join(sorted(p.name for p in NETNS_RUN_DIR.glob("*"))) or "none"
        raise UsageError(f"no network namespace {_shown(name_or_path)} (known: {known})") from exc
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None  # ENOTTY: not a namespace file at all
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise UsageError(f"--netns {_shown(name_or_path)}: not a network namespace")
    return path


def _shown(text: str, most: int = 80) -> str:
    """The name as the user gave it, cut short: a line, not a screenful."""
    return repr(text if len(text) <= most else text[:most] + "...")


def inode(path: str | os.PathLike[str]) -> int:
    return os.stat(path).st_ino


def current_inode() -> int:
    return inode("/proc/thread-self/ns/net")


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the body with the calling thread inside the namespace at path.

    Only the calling thread moves (setns on CLONE_NEWNET is per thread);
    sockets and BPF netfilter links made inside stay bound to that namespace.
    """
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(back)
    finally:
        os.close(target)
        os.close(back)


def enter(path: str | os.PathLike[str]) -> None:
    """Move the calling thread into the namespace for good (until exit)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        setns(fd)
    finally:
        os.close(fd)
