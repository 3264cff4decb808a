"""tracer.safe_output on real files, real modes and a real other user (nobody)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.output_attack import Attack, attack_fixture, digest, mode  # noqa: F401 (fixture)
from tracer.errors import CaptureFileError
from tracer.safe_output import (
    OutputDir,
    StagedDir,
    open_replacing,
    output_dir,
    refuse_overlap,
    write_file,
    write_text,
)

pytestmark = pytest.mark.root


def test_new_files_and_directories_are_private(tmp_path):
    with output_dir(tmp_path / "a" / "b") as d:
        d.write_file("x", lambda f: f.write(b"1"))
    write_text(tmp_path / "y.json", "{}")
    with open_replacing(tmp_path / "a" / "log") as f:
        f.write("line\n")
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert mode(tmp_path / "a" / "b" / "x") == 0o600 and mode(tmp_path / "y.json") == 0o600
    assert mode(tmp_path / "a" / "log") == 0o600
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["x"]  # no temporary left


def test_a_file_replaced_keeps_no_trace_of_the_old_one(tmp_path):
    (tmp_path / "y").write_text("old, world-readable")
    (tmp_path / "y").chmod(0o644)
    write_text(tmp_path / "y", "new")
    assert (tmp_path / "y").read_text() == "new" and mode(tmp_path / "y") == 0o600


def test_symlink_target_is_refused_not_followed(attack: Attack, tmp_path):
    (tmp_path / "out").mkdir(mode=0o700)
    (tmp_path / "out" / "x.json").symlink_to(attack.target)
    with pytest.raises(CaptureFileError, match=r"x\.json: is a symbolic link: refusing"):
        write_text(tmp_path / "out" / "x.json", "overwritten?")
    with pytest.raises(CaptureFileError, match="symbolic link"):
        open_replacing(tmp_path / "out" / "x.json")
    assert attack.target_unchanged()
    assert os.listdir(tmp_path / "out") == ["x.json"]


def test_directory_of_another_user_is_refused(attack: Attack):
    attack.link("report.md")
    attack.link(".write-test")
    for act in (
        lambda: output_dir(attack.evil).close(),
        lambda: write_text(attack.evil / "report.md", "x"),
        lambda: write_text(attack.evil / "new.json", "x"),
        lambda: output_dir(attack.evil / "sub").close(),
    ):
        with pytest.raises(CaptureFileError, match=r"owned by nobody \(uid 65534\), not by root"):
            act()
    assert attack.target_unchanged()
    assert sorted(os.listdir(attack.evil)) == [".write-test", "report.md"]


def test_symlinked_output_directory_is_refused(attack: Attack, tmp_path):
    (tmp_path / "link").symlink_to(attack.target.parent)
    with pytest.raises(CaptureFileError, match="link: is a symbolic link: refusing to follow it"):
        output_dir(tmp_path / "link")
    assert os.listdir(attack.target.parent) == ["file"] and attack.target_unchanged()


@pytest.mark.parametrize("dir_mode", [0o770, 0o775, 0o777, 0o1777])
def test_directory_others_can_write_is_refused_to_fill(tmp_path, dir_mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(dir_mode)
    with pytest.raises(CaptureFileError, match=f"writable by other users \\(mode {dir_mode:04o}"):
        output_dir(shared)
    assert os.listdir(shared) == []


def test_sticky_world_writable_parent_may_hold_one_file(tmp_path):
    """Like /tmp: nobody else can rename or delete what is ours there."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp").chmod(0o1777)
    write_text(tmp_path / "tmp" / "x.pcapng", "x")
    output_dir(tmp_path / "tmp" / "cap").close()
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(CaptureFileError, match=r"mode 0777, not sticky"):
        write_text(tmp_path / "open" / "x.pcapng", "x")
    assert os.listdir(tmp_path / "open") == []


def test_file_in_a_checked_directory_is_never_opened_over_an_existing_name(tmp_path):
    with output_dir(tmp_path / "d") as d:
        d.open_new("a").close()
        with pytest.raises(CaptureFileError, match="a: exists: refusing to overwrite it"):
            d.open_new("a")


def test_a_failed_write_leaves_the_old_file(tmp_path):
    write_text(tmp_path / "f", "old")

    def half(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CaptureFileError, match="f: cannot write: No space left on device"):
        write_file(tmp_path / "f", half)
    assert (tmp_path / "f").read_text() == "old" and os.listdir(tmp_path) == ["f"]


def _staged(target: Path, force: bool) -> StagedDir:
    return StagedDir(target, force=force, belongs=lambda n: n.endswith(".md"), what="report")


def test_staged_directory_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "rep"
    with _staged(target, force=False).writing() as d:
        d.write_file("a.md", lambda f: f.write(b"one"))
    before = digest(target)
    with pytest.raises(CaptureFileError, match=r"rep: not empty .*--force"):
        _staged(target, force=False)
    with pytest.raises(RuntimeError), _staged(target, force=True).writing() as d:
        d.write_file("a.md", lambda f: f.write(b"two"))
        raise RuntimeError("fails half way")
    assert digest(target) == before and os.listdir(tmp_path) == ["rep"]
    with _staged(target, force=True).writing() as d:
        d.write_file("a.md", lambda f: f.write(b"two"))
    assert (target / "a.md").read_text() == "two" and os.listdir(tmp_path) == ["rep"]
    assert mode(target) == 0o700


def test_staged_directory_never_replaces_what_is_not_its_own(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(CaptureFileError, match=r"holds 'notes\.txt', which is not part of a report"):
        _staged(tmp_path / "home", force=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


def test_output_inside_an_input_is_refused(tmp_path):
    cap = tmp_path / "cap"
    cap.mkdir()
    for out in (cap, cap / "part-000000.parquet", cap / "sub" / "x"):
        with pytest.raises(CaptureFileError, match="lies inside the input"):
            refuse_overlap(out, [tmp_path / "other", cap])
    with pytest.raises(CaptureFileError, match="holds the input"):
        refuse_overlap(tmp_path, [cap], replaces_dir=True)
    refuse_overlap(tmp_path / "cap2", [cap], replaces_dir=True)
    refuse_overlap(tmp_path, [cap])  # a file beside the input is fine


def test_checked_directory_operations_stay_on_the_directory_opened(tmp_path):
    """Renaming the directory away after the check does not redirect the writes."""
    d = OutputDir.open(output_dir(tmp_path / "d").path)
    os.rename(tmp_path / "d", tmp_path / "moved")
    (tmp_path / "d").symlink_to(tmp_path / "elsewhere")
    d.write_file("x", lambda f: f.write(b"1"))
    d.close()
    assert (tmp_path / "moved" / "x").read_bytes() == b"1"
    assert not (tmp_path / "elsewhere").exists()
