"""Every file and directory the tracer writes is made here, safely for a
program that runs as root (docs/capture-format.md, "Files and permissions").

- Directories the tracer fills (a capture, a report, the demo's output) are
  created fresh, mode 0700, or accepted only if they are owned by the caller,
  writable by nobody else and not a symbolic link.
- A directory that only receives one new entry (the parent of a new output, the
  directory of a pcapng or a plot) must be the caller's or root's, and writable
  by others only if sticky (like /tmp, where nobody can rename what is ours).
- Files are created 0600 with O_CREAT|O_EXCL|O_NOFOLLOW under a temporary
  name, relative to the checked directory's file descriptor (a path swapped
  under us after the check changes nothing), and renamed over the target only
  when complete. A target that is a symbolic link or not a regular file is
  refused, never followed.
- A multi-file output (StagedDir) is built in a new directory beside its
  target and renamed into place when complete; an old one is replaced only
  then, and only if it holds nothing but what the tracer writes there.
- An output that is, or lies inside, one of the inputs is refused
  (refuse_overlap): writing must never destroy what it reads.

Every refusal is a CaptureFileError (exit 5) naming the path and the reason.
No BCC, no pandas: the capture engine and the analysis both use this."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tracer.errors import CaptureFileError

DIR_MODE = 0o700
FILE_MODE = 0o600
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _oserror(path: Path, exc: OSError, doing: str = "cannot write") -> CaptureFileError:
    return CaptureFileError(f"{path}: {doing}: {exc.strerror or exc}")


def check_filled_dir(path: Path, st: os.stat_result) -> None:
    """A directory the tracer fills with files: ours, and nobody else's to change."""
    if not stat.S_ISDIR(st.st_mode):
        raise CaptureFileError(f"{path}: exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise CaptureFileError(
            f"{path}: owned by {_user(st.st_uid)}, not by {_user(os.geteuid())}: "
            "refusing to write into another user's directory"
        )
    if st.st_mode & 0o022:
        raise CaptureFileError(
            f"{path}: writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
            "refusing to write into it"
        )


def check_parent_dir(path: Path, st: os.stat_result) -> None:
    """A directory that receives one new entry of ours: the caller's or root's,
    and writable by others only if sticky (they cannot rename our entry)."""
    if not stat.S_ISDIR(st.st_mode):
        raise CaptureFileError(f"{path}: not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise CaptureFileError(
            f"{path}: owned by {_user(st.st_uid)}, not by {_user(os.geteuid())}: "
            "refusing to write into another user's directory"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise CaptureFileError(
            f"{path}: writable by other users (mode {stat.S_IMODE(st.st_mode):04o}, not sticky): "
            "refusing to write into it"
        )


def _is_link(path: Path, parent: OutputDir | None) -> bool:
    try:
        st = os.stat(path.name if parent else path, dir_fd=parent.fd if parent else None,
                     follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISLNK(st.st_mode)


def _temp_name(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{secrets.token_hex(4)}"


class OutputDir:
    """An open, checked directory; every operation is relative to its file
    descriptor. `check` is the rule it was opened under."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: str | Path, *, filled: bool = True, parent: OutputDir | None = None,
             follow: bool = False) -> OutputDir:
        """Open an existing directory and check it (filled: check_filled_dir,
        otherwise check_parent_dir). The last component is never a symlink
        unless `follow` (a parent the user named, e.g. /var/tmp -> ...)."""
        path = Path(path)
        flags = _OPEN_DIR | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path.name if parent else path, flags,
                         dir_fd=parent.fd if parent else None)
        except OSError as exc:
            # O_DIRECTORY|O_NOFOLLOW on a symlink: ENOTDIR (or ELOOP), whatever it points to.
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(path, parent)):
                raise CaptureFileError(f"{path}: is a symbolic link: refusing to follow it") from None
            if exc.errno == errno.ENOTDIR:
                raise CaptureFileError(f"{path}: exists and is not a directory") from None
            raise _oserror(path, exc, "cannot open directory") from None
        try:
            (check_filled_dir if filled else check_parent_dir)(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_new(self, name: str, mode: str = "wb") -> IO[Any]:
        """A new file, 0600; fails if the name exists in any form (O_EXCL, O_NOFOLLOW)."""
        try:
            fd = os.open(name, _NEW_FILE, FILE_MODE, dir_fd=self.fd)
        except FileExistsError:
            raise CaptureFileError(f"{self.path / name}: exists: refusing to overwrite it") from None
        return os.fdopen(fd, mode)

    def open_read(self, name: str) -> IO[Any]:
        """A file of this directory for reading, never through a symlink."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        return os.fdopen(fd, "rb")

    def check_replaceable(self, name: str) -> None:
        """A file target may be replaced only if it is absent or a regular file."""
        st = self.lstat(name)
        if st is None or stat.S_ISREG(st.st_mode):
            return
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise CaptureFileError(f"{self.path / name}: is {what}: refusing to replace it")

    @contextlib.contextmanager
    def replacing(self, name: str, mode: str = "wb") -> Iterator[IO[Any]]:
        """A new file under a temporary name, renamed over `name` if the body
        returns, removed if it raises: the target is complete or unchanged."""
        target = self.path / name
        self.check_replaceable(name)
        tmp = _temp_name(name)
        try:
            with self.open_new(tmp, mode) as f:
                yield f
            self.check_replaceable(name)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            if isinstance(exc, OSError):
                raise _oserror(target, exc) from None
            raise

    def write_file(self, name: str, write: Callable[[IO[Any]], object], mode: str = "wb") -> Path:
        """Write a complete file under a temporary name, then rename it over `name`."""
        with self.replacing(name, mode) as f:
            write(f)
        return self.path / name

    def open_replacing(self, name: str, mode: str = "w") -> IO[Any]:
        """A file written as it goes (a log): new, 0600, and in place at once."""
        self.check_replaceable(name)
        tmp = _temp_name(name)
        f = self.open_new(tmp, mode)
        try:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise _oserror(self.path / name, exc) from None
        return f

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def subdir(self, name: str) -> OutputDir:
        """A directory inside this one: created 0700, or an existing one of ours."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, DIR_MODE, dir_fd=self.fd)
        return OutputDir.open(self.path / name, parent=self)


def _open_parent(path: Path, *, create: bool = True) -> OutputDir:
    """The directory that will hold `path`, checked; created (0700) if missing
    and `create` (an output directory's parents, as `mkdir -p` would)."""
    parent = path.parent
    try:
        if create and not parent.exists():
            os.makedirs(parent, DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise _oserror(parent, exc, "cannot create directory") from None
    return OutputDir.open(parent, filled=False, follow=True)


def output_dir(path: str | Path) -> OutputDir:
    """A directory to fill: created fresh (0700), or an existing one that
    passes check_filled_dir. The caller closes it."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return OutputDir.open(path, follow=True)  # an existing directory, named by the user
    with _open_parent(path) as parent:
        try:
            os.mkdir(path.name, DIR_MODE, dir_fd=parent.fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _oserror(path, exc, "cannot create directory") from None
        return OutputDir.open(path, parent=parent)


@contextlib.contextmanager
def replacing(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """One output file, written through the yielded file object: 0600, in
    place only when complete (OutputDir.replacing), never through a symlink."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise CaptureFileError(f"{path}: not a file name")
    with _open_parent(path, create=False) as parent, parent.replacing(path.name, mode) as f:
        yield f


def write_file(path: str | Path, write: Callable[[IO[Any]], object], mode: str = "wb") -> Path:
    with replacing(path, mode) as f:
        write(f)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_file(path, lambda f: f.write(text.encode()))


def open_replacing(path: str | Path, mode: str = "w") -> IO[Any]:
    """A file written as it goes (a log), 0600, replacing an old one at once."""
    path = Path(path)
    with _open_parent(path, create=False) as parent:
        return parent.open_replacing(path.name, mode)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def refuse_overlap(output: str | Path, inputs: Iterable[Any], *, replaces_dir: bool = False) -> None:
    """Refuse an output that is, or lies inside, one of the inputs; and, when
    the output replaces a whole directory, one that holds an input."""
    out = _real(output)
    for item in inputs:
        if not isinstance(item, str | Path):
            continue  # already loaded: nothing on disk to protect
        src = _real(item)
        if out == src or src in out.parents:
            raise CaptureFileError(
                f"{output}: is or lies inside the input {item}: refusing to overwrite the input"
            )
        if replaces_dir and out in src.parents:
            raise CaptureFileError(
                f"{output}: holds the input {item}: refusing to replace it"
            )


class StagedDir:
    """A multi-file output built beside its target and renamed into place.

    Constructed: the target is checked (nothing is created). begin(): the
    staging directory `.NAME.new-XXXX` appears beside it. commit(): an old
    target is renamed aside, the new one renamed in, the old one removed.
    abort(): the staging directory is removed; the target never changed.
    `belongs(name)` says which entries of an old target --force may discard;
    `what` names the output in messages."""

    def __init__(self, target: str | Path, *, force: bool, belongs: Callable[[str], bool],
                 what: str):
        self.target = Path(target)
        if self.target.name in ("", ".", ".."):
            raise CaptureFileError(f"{target}: give the output directory a name")
        self.force, self.belongs, self.what = force, belongs, what
        self.parent: OutputDir | None = None
        self.staging: OutputDir | None = None
        self._staging_name = ""
        self._check_target(existing_parent_only=True)

    def _check_target(self, *, existing_parent_only: bool = False) -> bool:
        """Whether an old target exists; refuses one that may not be replaced."""
        if self.parent is None:
            parent = self.target.parent
            if existing_parent_only and not parent.exists():
                return False  # created in begin()
            with OutputDir.open(parent, filled=False, follow=True) as p:
                return self._check_in(p)
        return self._check_in(self.parent)

    def _check_in(self, parent: OutputDir) -> bool:
        st = parent.lstat(self.target.name)
        if st is None:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise CaptureFileError(f"{self.target}: is a symbolic link: refusing to follow it")
        with OutputDir.open(self.target, parent=parent) as old:
            names = old.names()
        if names and not self.force:
            raise CaptureFileError(f"{self.target}: not empty (choose a new path or pass --force)")
        foreign = sorted(n for n in names if not self.belongs(n))
        if foreign:
            raise CaptureFileError(
                f"{self.target}: holds {foreign[0]!r}, which is not part of a {self.what}: "
                "refusing to replace it"
            )
        return True

    def begin(self) -> OutputDir:
        self.parent = _open_parent(self.target)
        self._check_target()
        self._staging_name = _temp_name(self.target.name, "new")
        try:
            os.mkdir(self._staging_name, DIR_MODE, dir_fd=self.parent.fd)
        except OSError as exc:
            raise _oserror(self.target.parent / self._staging_name, exc,
                           "cannot create directory") from None
        self.staging = OutputDir.open(self.target.parent / self._staging_name, parent=self.parent)
        return self.staging

    def commit(self) -> Path:
        assert self.parent is not None and self.staging is not None
        parent, name = self.parent, self.target.name
        old = _temp_name(name, "old") if self._check_target() else None
        try:
            if old:
                parent.rename(name, old)
            try:
                os.rename(self._staging_name, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
            except OSError:
                if old:
                    parent.rename(old, name)
                raise
        except OSError as exc:
            self.abort()
            raise _oserror(self.target, exc, f"cannot put the new {self.what} in place") from None
        placed = parent.lstat(name)
        mine = os.fstat(self.staging.fd)
        self.staging.close()
        if placed is None or (placed.st_dev, placed.st_ino) != (mine.st_dev, mine.st_ino):
            raise CaptureFileError(f"{self.target}: replaced by someone else while being written")
        if old:
            try:
                shutil.rmtree(old, dir_fd=parent.fd)
            except OSError as exc:
                raise CaptureFileError(
                    f"{self.target}: written, but the old {self.what} "
                    f"{self.target.parent / old} could not be removed: {exc.strerror or exc}"
                ) from None
        self._close()
        return self.target

    def abort(self) -> None:
        if self.staging is not None:
            self.staging.close()
        if self.parent is not None and self._staging_name:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._staging_name, dir_fd=self.parent.fd)
        self._close()

    def _close(self) -> None:
        if self.parent is not None:
            self.parent.close()
            self.parent = None
        self._staging_name = ""

    @contextlib.contextmanager
    def writing(self) -> Iterator[OutputDir]:
        """begin(); the body writes into the staging directory; commit() if it
        returns, abort() if it raises."""
        staging = self.begin()
        try:
            yield staging
        except BaseException:
            self.abort()
            raise
        self.commit()
