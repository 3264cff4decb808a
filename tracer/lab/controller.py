"""`tracer lab up / down / exec`: build, reconcile and tear down the lab (one
at a time: a lock file serialises them), and run a command inside it.

up is declarative: it plans the lab from the manifest and the replica count,
compares with what runs (state.json plus live checks: namespaces, daemons,
BGP sessions, links, rules) and does the least that gets there:
  - nothing, when all matches (a second `up` is a fast no-op);
  - pods added/removed and rules reloaded, when only the pods changed
    (reconcile.py);
  - teardown by name and a full build, when the infrastructure (ToR, client,
    nodes, BIRD) is missing or broken, e.g. after a half-failed `up`
    (teardown.py, build.py).

Every step runs inside lab namespaces (see netdev.py); the host's own
network namespace is never changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import LabError, UsageError
from tracer.kube.manifest import load_manifest
from tracer.kube.model import Manifest
from tracer.lab import encap as lab_encap
from tracer.lab import faults, kubeproxy, netdev, plan
from tracer.lab.build import build_lab
from tracer.lab.fault_kinds import KINDS
from tracer.lab.reconcile import infra_problem, reconcile
from tracer.lab.state import RUN_DIR, LabState, load_state, save_state, try_load_state
from tracer.lab.teardown import DownResult, teardown
from tracer.system import require_program, require_root

# Serialises concurrent up/down (two shells, two test sessions). /run/lock is
# the place for such files; it is the one file the lab keeps after `down`.
LOCK_FILE = Path("/run/lock/tracer-lab.lock")

PROGRAMS = ("ip", "bird", "birdc", "nginx")


@dataclass(frozen=True)
class UpResult:
    state: LabState
    action: str  # "created", "unchanged" or "reconciled"
    seconds: float
    changes: tuple[str, ...] = ()
    bgp_seconds: float | None = None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_environment(what: str, encap_mode: str = "none") -> None:
    require_root(what)
    for program in PROGRAMS:
        require_program(program)
    if encap_mode == "vxlan":
        require_program("bridge")  # FDB entries (iproute2)
    kubeproxy.require_programs()


def _load(manifest: str | os.PathLike[str] | None) -> tuple[Path, Manifest, str]:
    path = Path(manifest) if manifest is not None else plan.DEFAULT_MANIFEST
    parsed = load_manifest(path)  # ManifestError (one line) passes through
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return path.resolve(), parsed, sha


# --- up ---------------------------------------------------------------------


def up(
    manifest: str | os.PathLike[str] | None = None,
    replicas: int | None = None,
    *,
    timeout: float = 30.0,
    proxy_mode: str = "iptables",
    encap: str = "none",
    ip_family: str = "ipv4",
) -> UpResult:
    """Bring the lab to the state the manifest (and replicas, kube-proxy mode
    and Calico encapsulation) describe. Changing only the proxy mode reloads
    the rules; changing only the encapsulation reprograms the tunnels, BIRD's
    kernel filter and the pods' MTU (tracer/lab/encap.py)."""
    started = time.monotonic()
    plan.check_modes(proxy_mode, encap)
    _check_environment("tracer lab up", encap)
    lab_encap.require_kernel_support(encap)
    path, parsed, sha = _load(manifest)
    want = plan.make_plan(
        parsed, replicas=replicas, run_dir=RUN_DIR, manifest_path=str(path), manifest_sha256=sha,
        proxy_mode=proxy_mode, encap=encap, ip_family=ip_family,
    )
    # Render before touching anything: a manifest the renderer rejects fails
    # with nothing built.
    rules = {n.name: kubeproxy.render_all(parsed, want, n) for n in want.nodes}

    with _locked():
        have = try_load_state()
        problem = "no lab state" if have is None else infra_problem(have, want)
        if problem is None:
            assert have is not None
            state, changes = reconcile(have, want, rules, timeout=timeout)
            if not changes:
                return UpResult(state, "unchanged", time.monotonic() - started)
            save_state(state)
            return UpResult(state, "reconciled", time.monotonic() - started, tuple(changes))
        teardown(have)
        try:
            state, bgp_seconds = build_lab(want, rules, timeout=timeout)
        except BaseException:
            # Leave no half-built lab behind; the error says what failed.
            # The run dir stays (bird and nginx logs, for a look); the next
            # `up` or `down` removes it.
            with contextlib.suppress(Exception):
                teardown(None, keep_run_dir=True)
            raise
        save_state(state)
        return UpResult(
            state, "created", time.monotonic() - started,
            (f"built ({problem})",), bgp_seconds,
        )


# --- down / exec ----------------------------------------------------------------


def down() -> DownResult:
    """Remove everything the lab made: processes, namespaces (and with them
    every veth, bridge, route and rule inside), the run dir. Idempotent."""
    require_root("tracer lab down")
    require_program("ip")
    with _locked():
        return teardown(try_load_state())


def exec_in(name: str, argv: Sequence[str]) -> int:
    """Run argv inside a lab namespace with the caller's stdio; its exit code."""
    require_root("tracer lab exec")
    if not argv:
        raise UsageError("nothing to run: tracer lab exec NAME -- CMD [ARGS...]")
    state = try_load_state()
    if state is not None:
        netns = state.netns_of(name)
    elif name.startswith("lab-"):
        netns = name
    else:
        raise LabError("the lab is not up: run `tracer lab up`")
    if netns not in netdev.existing_netns():
        raise LabError(f"namespace {netns} does not exist (is the lab up? `tracer lab status`)")
    ip = require_program("ip")
    try:
        return subprocess.run([ip, "netns", "exec", netns, *argv], check=False).returncode
    except KeyboardInterrupt:
        return 130


# --- faults (tracer/lab/faults.py): under the lab's lock, as up and down are --


def add_fault(kind: str, *, node: str | None = None, pod: str | None = None) -> faults.Fault:
    require_root("tracer lab fault")
    with _locked():
        return faults.add(load_state(), kind, kinds=KINDS, node=node, pod=pod)


def clear_faults(kind: str | None = None) -> list[faults.Fault]:
    require_root("tracer lab fault")
    with _locked():
        return faults.clear(load_state(), kind, kinds=KINDS)


def fault_lines() -> list[str]:
    """What `tracer lab fault list` prints: the kinds, then the faults applied."""
    width = max(len(k.name) for k in KINDS.values())
    lines = [f"{k.name:<{width}}  {k.family:<10} {k.summary}" for k in KINDS.values()]
    state = try_load_state()
    applied = faults.status(state, KINDS) if state is not None else []
    lines += ["", "in effect:" if applied else "in effect: none"]
    lines += [f"  {f.describe()}" + ("" if live else "  (no longer in effect)") for f, live in applied]
    return lines
