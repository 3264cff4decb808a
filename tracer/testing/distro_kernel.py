"""Debian's distro kernel, unpacked into a cache, for booting under qemu.

A kernel built without CONFIG_KPROBES has no kprobes, and some kernels refuse
fentry programs (6.18.44 in docs/kernels.md does both); distro kernels have
both. To test those backends we boot the Debian kernel whose ABI matches the
installed ``linux-headers-*-amd64`` (so BCC inside the VM compiles against
headers describing *that* kernel).

Nothing here touches /lib/modules or any other system path: the package is
unpacked under the cache directory, and its modules tree gets its own
``build``/``source`` links to the installed header trees, the same links
Debian's linux-headers package puts in /lib/modules/<release>/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import EnvironmentProblem
from tracer.system import require_program

DEFAULT_CACHE_DIR = Path(os.environ.get("TRACER_KERNEL_CACHE", "/var/cache/tracer/kernels"))
HEADERS_DIR = Path("/usr/src")
# Debian names the header tree of a flavour linux-headers-<abi>-amd64 and the
# flavour-independent half linux-headers-<abi>-common (e.g. 6.1.0-56).
_ARCH_HEADERS_RE = re.compile(r"^linux-headers-(?P<abi>\d+\.\d+\.\d+-\d+)-amd64$")
_COMPLETE_STAMP = ".tracer-complete"


class KernelUnavailable(EnvironmentProblem):
    """No distro kernel matching the installed headers could be obtained."""


@dataclass(frozen=True)
class KernelImage:
    """An unpacked Debian kernel package, ready for ``vng --run``."""

    release: str  # uname -r inside the VM, e.g. "6.1.0-56-amd64"
    package: str  # e.g. "linux-image-6.1.0-56-amd64"
    version: str  # Debian version, e.g. "6.1.192-2"
    root: Path  # unpacked package; vng finds lib/modules/<release> here
    vmlinuz: Path
    config: Path
    modules_dir: Path  # root/lib/modules/<release>, with build and source links
    headers_build: Path  # /usr/src/linux-headers-<abi>-amd64
    headers_source: Path  # /usr/src/linux-headers-<abi>-common
    downloaded: bool  # True only when this call fetched the package
    download_bytes: int
    download_seconds: float

    def config_value(self, option: str) -> str | None:
        """'y', 'm', a string, or None when unset; e.g. config_value('CONFIG_KPROBES')."""
        prefix = option + "="
        for line in self.config.read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None


@dataclass(frozen=True)
class _Headers:
    abi: str
    version: str
    build: Path
    source: Path

    @property
    def release(self) -> str:
        return f"{self.abi}-amd64"


def installed_headers() -> _Headers:
    """The newest installed linux-headers-<abi>-amd64 whose tree is complete."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\n", "linux-headers-*-amd64"],
        capture_output=True,
        text=True,
        check=False,
    )
    found: list[_Headers] = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[2] != "installed":
            continue
        m = _ARCH_HEADERS_RE.match(parts[0])
        if not m:
            continue  # the linux-headers-amd64 meta-package
        abi = m.group("abi")
        build = HEADERS_DIR / f"linux-headers-{abi}-amd64"
        source = HEADERS_DIR / f"linux-headers-{abi}-common"
        if (build / ".config").is_file() and (source / "include").is_dir():
            found.append(_Headers(abi, parts[1], build, source))
    if not found:
        raise KernelUnavailable(
            "no linux-headers-<abi>-amd64 with its -common tree is installed: "
            "apt-get install linux-headers-amd64 (scripts/setup.sh does)"
        )
    return max(found, key=lambda h: _version_key(h.abi))


def _version_key(abi: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.split(r"[.-]", abi))


def ensure_kernel(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> KernelImage:
    """Download (once) and unpack the distro kernel matching the installed headers.

    Idempotent: a finished unpack is marked with a stamp file, and a second
    call only checks it and returns. Raises KernelUnavailable, in one line,
    when the matching linux-image package cannot be downloaded.
    """
    headers = installed_headers()
    cache = Path(cache_dir)
    package = f"linux-image-{headers.release}"
    root = cache / f"{package}_{headers.version}"
    image = _image_at(root, package, headers)
    if (root / _COMPLETE_STAMP).is_file():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    deb, nbytes, seconds = _download(package, headers.version, cache)
    _unpack(deb, root, headers)
    return dataclasses.replace(image, downloaded=nbytes > 0, download_bytes=nbytes, download_seconds=seconds)


def _image_at(root: Path, package: str, headers: _Headers) -> KernelImage:
    release = headers.release
    return KernelImage(
        release=release,
        package=package,
        version=headers.version,
        root=root,
        vmlinuz=root / "boot" / f"vmlinuz-{release}",
        config=root / "boot" / f"config-{release}",
        modules_dir=root / "lib" / "modules" / release,
        headers_build=headers.build,
        headers_source=headers.source,
        downloaded=False,
        download_bytes=0,
        download_seconds=0.0,
    )


def _download(package: str, version: str, cache: Path) -> tuple[Path, int, float]:
    """apt-get download package=version into cache unless a verified copy is
    there; return (deb, bytes fetched, seconds fetching) - 0 bytes when reused.

    apt itself checks the file against the signed archive index. We check the
    SHA256 again against `apt-cache show` and the control fields against what
    we asked for, so that a truncated or stray .deb in the cache is never used.
    """
    require_program("apt-get")
    deb = cache / f"{package}_{version}_amd64.deb"
    expected_sha = _archive_sha256(package, version)
    started = time.monotonic()
    fetched = not (deb.is_file() and expected_sha and _sha256(deb) == expected_sha)
    if fetched:
        deb.unlink(missing_ok=True)
        err = _apt_download(package, version, cache)
        if err is not None:
            # Stale package lists are the usual cause: refresh once, retry.
            _refresh_package_lists()
            expected_sha = _archive_sha256(package, version)
            err = _apt_download(package, version, cache)
        if err is not None:
            raise KernelUnavailable(
                f"cannot download {package} {version} (the kernel matching the installed "
                f"headers) from the Debian archive: {err}"
            )
    seconds = time.monotonic() - started
    if not deb.is_file():
        raise KernelUnavailable(f"apt-get download {package}={version} left no {deb.name}")
    if expected_sha and _sha256(deb) != expected_sha:
        deb.unlink()
        raise KernelUnavailable(f"{deb.name}: SHA256 differs from the archive index; removed")
    fields = {
        f: subprocess.run(
            ["dpkg-deb", "-f", str(deb), f], capture_output=True, text=True, check=False
        ).stdout.strip()
        for f in ("Package", "Version", "Architecture")
    }
    if fields != {"Package": package, "Version": version, "Architecture": "amd64"}:
        raise KernelUnavailable(f"{deb.name} is not {package} {version} amd64: {fields}")
    return deb, deb.stat().st_size if fetched else 0, seconds if fetched else 0.0


def _refresh_package_lists() -> None:
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False, timeout=600)


def _apt_download(package: str, version: str, cache: Path) -> str | None:
    # APT::Sandbox::User=root: the cache dir belongs to root, and apt would
    # otherwise warn that its _apt user cannot write there (and fetch as root).
    proc = subprocess.run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
        cwd=cache,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"apt-get exit status {proc.returncode}"


def _archive_sha256(package: str, version: str) -> str | None:
    proc = subprocess.run(
        ["apt-cache", "show", f"{package}={version}"], capture_output=True, text=True, check=False
    )
    m = re.search(r"^SHA256: ([0-9a-f]{64})$", proc.stdout, re.MULTILINE)
    return m.group(1) if m else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpack(deb: Path, root: Path, headers: _Headers) -> None:
    """dpkg-deb -x into a temporary dir, prepare modules, then rename into place.

    The rename makes a half-finished unpack (killed run, full disk) invisible:
    only a complete tree with its stamp ever sits at `root`.
    """
    require_program("depmod")
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root.parent))
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True, text=True)
        modules = tmp / "lib" / "modules" / headers.release
        if not (tmp / "boot" / f"vmlinuz-{headers.release}").is_file() or not modules.is_dir():
            raise KernelUnavailable(f"{deb.name} has no vmlinuz or modules for {headers.release}")
        # Debian's .deb ships no modules.dep (its postinst runs depmod); modprobe
        # inside the VM needs it.
        subprocess.run(
            ["depmod", "-b", str(tmp), headers.release], check=True, capture_output=True, text=True
        )
        # The links Debian's linux-headers-<abi>-amd64 installs in
        # /lib/modules/<release>/; BCC looks for exactly these.
        (modules / "build").symlink_to(headers.build)
        (modules / "source").symlink_to(headers.source)
        (tmp / _COMPLETE_STAMP).write_text(f"{deb.name}\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    except subprocess.CalledProcessError as exc:
        raise KernelUnavailable(
            f"preparing {deb.name} failed: {' '.join(exc.cmd)}: {(exc.stderr or '').strip()}"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
