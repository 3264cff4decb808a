"""Running the CLI in-process from tests: its exit code and output, and the
one-line error every failure must be."""

from __future__ import annotations

import pytest

from tracer.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracer: error: "), err
    assert "Traceback" not in err
    return lines[0]
