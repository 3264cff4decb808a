"""Error paths: one line, the right exit code, and nothing touched."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tracer.cli import main
from tracer.errors import ManifestError, MissingPackageError, PrivilegeError
from tracer.lab import controller, status, traffic

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("call", [
    lambda: controller.up(),
    lambda: controller.down(),
    lambda: status.status(),
    lambda: controller.exec_in("client", ["true"]),
    lambda: traffic.run_traffic(requests=1),
])
def test_library_needs_root(monkeypatch, call):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="needs root"):
        call()


@pytest.mark.root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux setpriv missing")
@pytest.mark.parametrize("argv", [
    ["up"], ["down"], ["status"], ["status", "--json"], ["exec", "client", "--", "true"],
    ["traffic", "--requests", "1"],
])
def test_cli_as_nobody_is_one_line_exit_3(argv):
    tracer = shutil.which("tracer") or "/usr/local/bin/tracer"
    proc = subprocess.run([*NOBODY, tracer, "lab", *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/"})
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs root" in proc.stderr


def _hide(monkeypatch, *programs: str) -> None:
    real = shutil.which

    def which(cmd, mode=os.F_OK | os.X_OK, path=None):
        return None if os.path.basename(cmd) in programs else real(cmd, mode, path)

    monkeypatch.setattr(shutil, "which", which)


@pytest.mark.root
@pytest.mark.parametrize(("program", "package"), [
    ("bird", "bird2"), ("birdc", "bird2"), ("nginx", "nginx-light"), ("ip", "iproute2"),
    ("iptables-nft-restore", "iptables"),
])
def test_missing_package_names_the_debian_package(monkeypatch, capsys, program, package):
    _hide(monkeypatch, program)
    with pytest.raises(MissingPackageError) as exc:
        controller.up()
    assert exc.value.package == package
    code, out, err = run_cli(capsys, "lab", "up")
    assert code == 4 and out == ""
    assert err.count("\n") == 1 and f"Debian package {package}" in err


@pytest.mark.root
@pytest.mark.lab
def test_missing_wrk(monkeypatch, capsys, lab):
    _hide(monkeypatch, "wrk")
    code, _, err = run_cli(capsys, "lab", "traffic", "--duration", "1")
    assert code == 4 and "Debian package wrk" in err and err.count("\n") == 1


@pytest.mark.root
@pytest.mark.lab
def test_bad_manifest_is_one_line_and_leaves_the_lab_alone(tmp_path, capsys, lab_state):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\n"
        "spec:\n  selector: {app: x}\n  ports:\n    - port: not-a-number\n")
    with pytest.raises(ManifestError):
        controller.up(bad)
    code, out, err = run_cli(capsys, "lab", "up", "--manifest", str(bad))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(bad) in err and "broken" in err
    code, _, err = run_cli(capsys, "lab", "up", "--manifest", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err
    again = controller.up()
    assert again.action == "unchanged" and again.state == lab_state


@pytest.mark.root
@pytest.mark.lab
def test_usage_errors(capsys, lab):
    code, _, err = run_cli(capsys, "lab", "traffic", "--target", "cluster-ip", "--from", "client")
    assert code == 2 and "only reachable inside the cluster" in err
    code, _, err = run_cli(capsys, "lab", "traffic", "--requests", "5", "--duration", "1")
    assert code == 2 and "not both" in err
    code, _, err = run_cli(capsys, "lab", "exec", "client")
    assert code == 2 and "nothing to run" in err
