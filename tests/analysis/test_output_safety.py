"""The analysis commands' outputs as root against a hostile local user, and
never over their own input: exit 5, one line, and nothing aimed at changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, run
from tests.output_attack import Attack, attack_fixture, digest, mode  # noqa: F401 (fixture)

pytestmark = pytest.mark.root


def refused(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 5 and out == "", (code, out, err)
    return one_line_error(err)


def test_report_into_another_users_directory(capsys, small, attack: Attack):
    attack.link("report.md")
    attack.link("report.html")
    line = refused(capsys, "report", *map(str, small.both), "-o", str(attack.evil), "--force")
    assert f"{attack.evil}: owned by nobody (uid 65534), not by root" in line
    line = refused(capsys, "report", *map(str, small.both), "-o", str(attack.evil / "new"))
    assert "owned by nobody" in line
    assert attack.target_unchanged() and sorted(os.listdir(attack.evil)) == [
        "report.html", "report.md"]


def test_correlate_into_another_users_directory(capsys, small, attack: Attack):
    attack.link(".write-test")
    attack.link("_tracer_meta.json")
    line = refused(capsys, "correlate", *map(str, small.both), "-o", str(attack.evil), "--force")
    assert "owned by nobody" in line
    assert attack.target_unchanged() and len(os.listdir(attack.evil)) == 2


@pytest.mark.parametrize("command", ["timeline", "latency", "fairness"])
def test_plot_through_a_symlink(capsys, scenario, attack: Attack, tmp_path, command):
    attack.link("p.png")
    line = refused(capsys, command, *map(str, scenario.both), "--plot", str(attack.evil / "p.png"))
    assert "owned by nobody" in line
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    (mine / "p.png").symlink_to(attack.target)
    line = refused(capsys, command, *map(str, scenario.both), "--plot", str(mine / "p.png"))
    assert line.endswith("p.png: is a symbolic link: refusing to replace it")
    assert attack.target_unchanged()


def test_export_through_a_symlink(capsys, small, attack: Attack):
    attack.link("x.pcapng")
    line = refused(capsys, "export", str(small.both[0]), "--pcap", str(attack.evil / "x.pcapng"))
    assert "owned by nobody" in line and attack.target_unchanged()


def test_group_writable_directory_is_refused(capsys, small, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    line = refused(capsys, "report", *map(str, small.both), "-o", str(shared))
    assert "writable by other users (mode 0775)" in line and os.listdir(shared) == []


@pytest.mark.parametrize("name", ["part-000000.parquet", "_tracer_meta.json", "new/x.pcapng"])
def test_export_onto_its_own_input_is_refused(capsys, small, tmp_path, name):
    cap = tmp_path / "cap"
    shutil.copytree(small.both[0], cap)
    before = digest(cap)
    line = refused(capsys, "export", str(cap), "--pcap", str(cap / name))
    assert "is or lies inside the input" in line and digest(cap) == before


def test_correlate_and_report_onto_an_input_are_refused(capsys, small, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(small.both[0], a)
    shutil.copytree(small.both[1], b)
    before = digest(tmp_path)
    for out in (b, b / "merged"):
        assert "inside the input" in refused(
            capsys, "correlate", str(a), str(b), "-o", str(out), "--force")
    assert "holds the input" in refused(
        capsys, "correlate", str(a), str(b), "-o", str(tmp_path), "--force")
    assert "inside the input" in refused(capsys, "report", str(a), "-o", str(a / "rep"))
    assert digest(tmp_path) == before


def test_report_needs_force_to_replace_and_reads_its_input_first(capsys, small, tmp_path):
    rep = tmp_path / "rep"
    code, _, _ = run(capsys, "report", *map(str, small.both), "-o", str(rep))
    assert code == 0
    before = digest(rep)
    assert "not empty (choose a new path or pass --force)" in refused(
        capsys, "report", *map(str, small.both), "-o", str(rep))
    assert digest(rep) == before
    code, _, err = run(capsys, "report", str(tmp_path / "no-such"), "-o", str(tmp_path / "r2"))
    assert code == 5 and "no such capture" in one_line_error(err)
    assert sorted(os.listdir(tmp_path)) == ["rep"]  # nothing created before the input was read
    code, _, _ = run(capsys, "report", small.both[0].as_posix(), "-o", str(rep), "--force")
    assert code == 0 and digest(rep) != before and sorted(os.listdir(tmp_path)) == ["rep"]


def test_outputs_are_private(capsys, small, tmp_path):
    os.umask(0o022)
    assert run(capsys, "report", *map(str, small.both), "-o", str(tmp_path / "rep"))[0] == 0
    assert run(capsys, "correlate", *map(str, small.both), "-o", str(tmp_path / "m"))[0] == 0
    assert run(capsys, "export", str(small.both[0]), "--pcap", str(tmp_path / "x.pcapng"))[0] == 0
    assert run(capsys, "latency", *map(str, small.both), "--plot", str(tmp_path / "l.png"))[0] == 0
    for d in (tmp_path / "rep", tmp_path / "m"):
        assert mode(d) == 0o700 and len(os.listdir(d)) >= 2
        assert {mode(p) for p in d.iterdir()} == {0o600}, d
    assert mode(tmp_path / "x.pcapng") == 0o600 and mode(tmp_path / "l.png") == 0o600


@pytest.fixture
def small_tmpfs(tmp_path) -> Path:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tracer-test", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        # Lazily if a descriptor left open by a failed write still holds it.
        if subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def test_correlate_force_on_a_full_disk_keeps_the_old_capture(capsys, small, scenario,
                                                              small_tmpfs: Path):
    b = small_tmpfs / "b"
    assert run(capsys, "correlate", *map(str, small.both), "-o", str(b))[0] == 0
    before = digest(b)
    free = os.statvfs(small_tmpfs)
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * max(free.f_bavail * free.f_frsize - 64 * 1024, 0))
    line = refused(capsys, "correlate", *map(str, scenario.both), "-o", str(b), "--force")
    assert "No space left on device" in line
    assert digest(b) == before and sorted(os.listdir(small_tmpfs)) == ["b", "filler"]
