"""Fixtures for the kube-proxy layer's tests.

The `kube_netns` fixture makes a throwaway network namespace for root tests
(iptables-restore into it, iptables-save out of it) and always deletes it; it
never touches the namespace the tests run in."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracer.kube.manifest import SHIPPED_MANIFEST, load_manifest
from tracer.kube.model import Endpoint, Manifest

DATA = Path(__file__).parent / "data"

# The lab's pod addresses for the seed (tracer/lab/plan.py): replica 0 on
# node A is the seed article's 10.217.120.72, replica 1 on node B.
SEED_ENDPOINTS = (
    Endpoint("10.217.120.72", 80, node="node-a", pod="nginx-demo-1-a"),
    Endpoint("10.217.121.8", 80, node="node-b", pod="nginx-demo-1-b"),
)


@pytest.fixture
def seed_manifest() -> Manifest:
    return load_manifest(SHIPPED_MANIFEST)


@pytest.fixture
def seed_endpoints(seed_manifest: Manifest) -> dict[tuple[str, str], list[Endpoint]]:
    return {s.key: list(SEED_ENDPOINTS) for s in seed_manifest.services}


@pytest.fixture
def kube_netns() -> Iterator[str]:
    """A private network namespace "tracer-test-kube-<random>", deleted after."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it loads iptables rules into a private netns")
    name = f"tracer-test-kube-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
