"""A hostile local user for the tests of tracer.safe_output: directories and
symbolic links made by the real user nobody (setpriv), a root-only file they
point at, and hashes to show that nothing an attack aimed at changed."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def as_nobody(*argv: str) -> None:
    subprocess.run([*AS_NOBODY, *argv], check=True)


def digest(path: Path) -> str:
    """Hash of a file, or of a directory tree (names, modes, contents), not following links."""
    h = hashlib.sha256()
    if path.is_symlink() or path.is_file():
        h.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(path)} {stat.S_IMODE(st.st_mode):o}\n".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode):
            h.update(p.read_bytes())
    return h.hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@dataclass
class Attack:
    """`evil`: a directory of nobody's in /tmp; `target`: a root-only file (0600
    in a 0700 directory) whose bytes every attack tries to change."""

    evil: Path
    target: Path
    before: str

    def link(self, name: str, to: Path | None = None) -> Path:
        """nobody's symlink evil/name -> the target (or `to`)."""
        as_nobody("ln", "-s", str(to or self.target), str(self.evil / name))
        return self.evil / name

    def mkdir(self, name: str) -> Path:
        as_nobody("mkdir", str(self.evil / name))
        return self.evil / name

    def target_unchanged(self) -> bool:
        return digest(self.target) == self.before


@pytest.fixture(name="attack")
def attack_fixture(tmp_path: Path) -> Iterator[Attack]:
    """Import attack_fixture into a test module to use the fixture `attack`."""
    if os.geteuid() != 0:
        pytest.fail("the attack tests need root (another user plays the attacker)", pytrace=False)
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    target = secret / "file"
    target.write_bytes(b"root's data, not to be overwritten\n")
    target.chmod(0o600)
    evil = Path("/tmp") / f"tracer-evil-{secrets.token_hex(4)}"
    as_nobody("mkdir", "-m", "0755", str(evil))
    try:
        yield Attack(evil, target, digest(target))
    finally:
        shutil.rmtree(evil, ignore_errors=True)
