"""A fake kubectl on PATH (fake_kubectl.py) serving capture directories, and
what it recorded: the tests of `tracer cluster capture` run the real command
against it. It is not a cluster: nothing here shows the Jobs would run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

FAKE = Path(__file__).parent / "fake_kubectl.py"


@dataclass
class FakeCluster:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def serve(self) -> Path:
        return self.root / "serve"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "calls.jsonl"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(FAKE_KUBECTL_LOG=str(self.log), FAKE_KUBECTL_STATE=str(self.state),
                   FAKE_KUBECTL_SERVE=str(self.serve), **extra)
        return env

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def applied_jobs(self) -> list[dict]:
        path = self.state / "jobs.json"
        jobs = json.loads(path.read_text()) if path.exists() else []
        return [yaml.safe_load(j["yaml"]) for j in jobs]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tracer", "cluster", "capture", *args],
                              capture_output=True, text=True, env=self.env(**env), timeout=120)


def make_fake_cluster(root: Path, captures: dict[str, Path]) -> FakeCluster:
    """A fake cluster whose node N serves captures[N] (copied)."""
    fake = FakeCluster(root)
    fake.bin.mkdir(parents=True)
    (fake.bin / "kubectl").symlink_to(FAKE)
    fake.serve.mkdir()
    for node, path in captures.items():
        shutil.copytree(path, fake.serve / node)
    return fake
