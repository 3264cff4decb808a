"""The only place that runs kubectl. Kept thin on purpose: argv in, text or
bytes out, and every failure turned into one line that says which kubectl
command failed and what kubectl said (its last stderr line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracer.errors import EnvironmentProblem, TracerError


class KubectlNotFound(EnvironmentProblem):
    """No kubectl to run."""

    def __init__(self, program: str):
        super().__init__(
            f"'{program}' not found: tracer cluster needs kubectl on PATH (or --kubectl PATH) "
            "configured for the cluster"
        )
        self.program = program


class KubectlError(TracerError):
    """kubectl ran and failed (or timed out)."""


@dataclass
class Kubectl:
    program: str = "kubectl"
    context: str | None = None
    namespace: str | None = None
    timeout: float = 120.0

    def _argv(self, args: Sequence[str], namespaced: bool) -> list[str]:
        path = shutil.which(self.program) if os.sep not in self.program else self.program
        if path is None or not os.access(path, os.X_OK):
            raise KubectlNotFound(self.program)
        argv = [path]
        if self.context:
            argv += ["--context", self.context]
        if namespaced and self.namespace:
            argv += ["--namespace", self.namespace]
        return [*argv, *args]

    def run_bytes(self, args: Sequence[str], *, input: bytes | None = None,
                  namespaced: bool = True, timeout: float | None = None) -> bytes:
        argv = self._argv(args, namespaced)
        what = "kubectl " + " ".join(args[:3])
        try:
            proc = subprocess.run(argv, input=input, capture_output=True,
                                  timeout=timeout or self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise KubectlError(f"{what}: no answer within {timeout or self.timeout:.0f}s") from None
        except OSError as exc:
            raise KubectlError(f"{what}: {exc.strerror}") from None
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise KubectlError(f"{what}: {last}")
        return proc.stdout

    def run(self, args: Sequence[str], *, input: str | None = None, namespaced: bool = True,
            timeout: float | None = None) -> str:
        data = self.run_bytes(args, input=input.encode() if input is not None else None,
                              namespaced=namespaced, timeout=timeout)
        return data.decode(errors="replace")

    def json(self, args: Sequence[str], *, namespaced: bool = True) -> Any:
        text = self.run([*args, "-o", "json"], namespaced=namespaced)
        try:
            return json.loads(text)
        except ValueError:
            raise KubectlError(f"kubectl {' '.join(args[:3])}: output is not JSON") from None
