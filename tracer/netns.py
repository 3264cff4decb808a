"""Network namespaces: resolve a name or path, enter one (setns). Python 3.11
has no os.setns, so this calls libc's setns(2)."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

from tracer.errors import UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def resolve(name_or_path: str) -> Path:
    """'lab-node-a' -> /run/netns/lab-node-a; a path is taken as it is."""
    path = Path(name_or_path)
    if "/" not in name_or_path:
        path = NETNS_RUN_DIR / name_or_path
    if not path.exists():
        known = ", ".join(sorted(p.name for p in NETNS_RUN_DIR.glob("*"))) or "none"
        raise UsageError(f"no network namespace {name_or_path!r} (known: {known})")
    return path


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
