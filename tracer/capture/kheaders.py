"""Find kernel headers for BCC without touching /lib/modules.

BCC refuses to compile without a kernel build tree. When the running kernel
has its own (/lib/modules/$(uname -r)/build), BCC finds it. On this project's
machines the kernel is a custom 6.18 with no headers, so the tracer builds a
directory of symlinks that merges a Debian linux-headers-*-common tree with its
-amd64 tree (BCC wants kconfig.h from the former and the generated headers
from the latter in one place) under /var/cache/tracer, and points
BCC_KERNEL_SOURCE at it. The headers only satisfy the compiler: struct
offsets come from BTF (tracer/capture/offsets.py).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import EnvironmentProblem

CACHE_DIR = Path(os.environ.get("TRACER_CACHE", "/var/cache/tracer"))
SRC_DIR = Path("/usr/src")


@dataclass(frozen=True)
class KernelHeaders:
    path: Path      # what BCC gets (BCC_KERNEL_SOURCE), or the kernel's own build dir
    origin: str     # "running kernel" or "linux-headers-<ver>-<flavour> (merged)"
    own_kernel: bool


def _debian_pairs(src: Path = SRC_DIR) -> list[tuple[str, Path, Path]]:
    """(version, arch tree, common tree) for every complete Debian headers install."""
    pairs = []
    for arch_tree in src.glob("linux-headers-*-amd64"):
        m = re.fullmatch(r"linux-headers-(.+)-amd64", arch_tree.name)
        if not m or m.group(1).endswith(("-cloud", "-rt")):
            continue
        common = src / f"linux-headers-{m.group(1)}-common"
        if common.is_dir() and (arch_tree / "include" / "generated").is_dir():
            pairs.append((m.group(1), arch_tree, common))
    return sorted(pairs, key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p[0])])


def _merge(common: Path, arch_tree: Path, dest: Path) -> None:
    """Symlink tree: the -common tree, then the -amd64 tree on top. Built in a
    temporary directory and renamed, so a crash leaves no half tree."""
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for tree in (common, arch_tree):
        subprocess.run(["cp", "-rsf", f"{tree}/.", str(tmp)], check=True, capture_output=True)
    (tmp / ".tracer-complete").write_text(f"{common}\n{arch_tree}\n")
    try:
        os.rename(tmp, dest)
    except OSError:
        # Another tracer finished first.
        shutil.rmtree(tmp, ignore_errors=True)


def find_kernel_headers(release: str | None = None) -> KernelHeaders:
    release = release or platform.release()
    own = Path("/lib/modules") / release / "build"
    if (own / "include").is_dir():
        return KernelHeaders(own, "running kernel", True)
    pairs = _debian_pairs()
    if not pairs:
        raise EnvironmentProblem(
            f"no kernel headers for BCC: none for {release} and no Debian linux-headers-*-amd64 "
            "(install linux-headers-amd64, or run scripts/setup.sh)"
        )
    # Prefer the headers whose version the running kernel shares, else the newest.
    major_minor = ".".join(release.split(".")[:2])
    matching = [p for p in pairs if p[0].startswith(major_minor)]
    version, arch_tree, common = (matching or pairs)[-1]
    dest = CACHE_DIR / "kheaders" / f"{version}-amd64"
    if not (dest / ".tracer-complete").exists():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _merge(common, arch_tree, dest)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EnvironmentProblem(f"cannot prepare kernel headers in {dest}: {exc}") from exc
    return KernelHeaders(dest, f"linux-headers-{version}-amd64 (merged in {dest})", False)
