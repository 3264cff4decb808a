"""Fast checks of the VM harness library that need no VM (and no root)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tracer.testing import KernelUnavailable, distro_kernel, ensure_kernel
from tracer.testing.kernel_vm import _guest_script


def test_unavailable_kernel_is_one_clear_line(tmp_path: Path, monkeypatch):
    headers = distro_kernel._Headers(
        abi="6.1.0-999",
        version="6.1.999-1",
        build=Path("/usr/src/linux-headers-6.1.0-999-amd64"),
        source=Path("/usr/src/linux-headers-6.1.0-999-common"),
    )
    refreshed = []
    monkeypatch.setattr(distro_kernel, "installed_headers", lambda: headers)
    monkeypatch.setattr(distro_kernel, "_archive_sha256", lambda *_: None)
    monkeypatch.setattr(distro_kernel, "_refresh_package_lists", lambda: refreshed.append(1))
    monkeypatch.setattr(
        distro_kernel,
        "_apt_download",
        lambda *_: "E: Version '6.1.999-1' for 'linux-image-6.1.0-999-amd64' was not found",
    )
    with pytest.raises(KernelUnavailable) as err:
        ensure_kernel(cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "linux-image-6.1.0-999-amd64 6.1.999-1" in message and "was not found" in message
    assert refreshed == [1]  # package lists were refreshed once before giving up
    assert not list(tmp_path.iterdir())  # nothing half-made left in the cache


def test_guest_script_runs_argv_and_strings_as_given(tmp_path: Path):
    argv = ["python", "-c", "print('a b')", "it's"]
    script = _guest_script(tmp_path, argv, Path("/work/x y"), {"K": "v w"}, ("veth",))
    assert shlex.join(argv) + ' </dev/null >"$io/stdout" 2>"$io/stderr"' in script
    assert "cd '/work/x y' || exit 1" in script
    assert "export K='v w'" in script
    as_string = _guest_script(tmp_path, "echo $HOME | wc -c", Path("/"), {}, ())
    assert "bash -c 'echo $HOME | wc -c'" in as_string
