"""--window and --plot of the analysis commands (issue 12): refused with one
line and exit 2 (5 for a place nothing can be written) before any capture is
read; the captures are never changed."""

from __future__ import annotations

import pytest

from tests.cli_run import one_line_error, run
from tests.test_cli_arguments import tree_hash
from tracer.errors import CaptureFileError
from tracer.option_checks import plot_file


@pytest.fixture
def hashed(small):
    before = {p: tree_hash(p) for p in small.both}
    yield small
    assert {p: tree_hash(p) for p in small.both} == before


@pytest.mark.filterwarnings("error")  # 1e-12 used to end in a RuntimeWarning (a window of 0 ns)
@pytest.mark.parametrize("window, message", [
    ("nan", "--window must be a finite number of seconds, not nan"),
    ("inf", "--window must be a finite number of seconds, not inf"),
    ("1e300", "--window must be at most a year, not 1e+300"),
    ("1e-12", "--window must be at least 1e-06 s, not 1e-12"),
    ("0", "--window must be positive"),
    ("-2", "--window must be positive"),
])
def test_fairness_window_refused(capsys, hashed, window, message):
    code, out, err = run(capsys, "fairness", *map(str, hashed.both), "--window", window)
    assert code == 2 and out == ""
    assert message in one_line_error(err)


@pytest.mark.filterwarnings("error")
def test_fairness_smallest_window_works(capsys, hashed):
    code, out, _ = run(capsys, "fairness", *map(str, hashed.both), "--window", "1e-6", "--json")
    assert code == 0 and '"window_ns": 1000' in out


COMMANDS = ["timeline", "latency", "fairness"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name, message", [
    ("x.xyz", "extension '.xyz'"),
    ("name", "no extension"),
    ("x.png.", "no extension"),
])
def test_plot_name_refused_before_reading(capsys, hashed, tmp_path, command, name, message):
    code, out, err = run(capsys, command, *map(str, hashed.both), "--plot", str(tmp_path / name))
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert message in line and ".png, .svg, .pdf" in line
    assert list(tmp_path.iterdir()) == []  # neither the name nor name.png


@pytest.mark.parametrize("command", COMMANDS)
def test_plot_where_nothing_can_be_written(capsys, hashed, tmp_path, command):
    code, out, err = run(capsys, command, *map(str, hashed.both),
                         "--plot", str(tmp_path / "missing" / "p.png"))
    assert code == 5 and out == ""
    assert "--plot: cannot write" in one_line_error(err)


def test_plot_to_a_directory_is_refused(capsys, hashed, tmp_path):
    (tmp_path / "d.png").mkdir()
    code, _, err = run(capsys, "latency", *map(str, hashed.both), "--plot", str(tmp_path / "d.png"))
    assert code == 2 and "is a directory" in one_line_error(err)  # click's own check
    with pytest.raises(CaptureFileError, match="it is a directory"):  # the library's, for callers
        plot_file(tmp_path / "d.png")


@pytest.mark.parametrize("name", ["p.svg", "p.PDF"])
def test_plot_writes_exactly_the_name_given(capsys, hashed, tmp_path, name):
    code, _, _ = run(capsys, "latency", *map(str, hashed.both), "--plot", str(tmp_path / name))
    assert code == 0 and [p.name for p in tmp_path.iterdir()] == [name]
