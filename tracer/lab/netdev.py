"""Network namespaces, links, addresses, routes and sysctls of the lab.

Safety rule: the lab never touches the host's own network namespace. Every
`ip` command here runs with `-n <lab namespace>` (so even a veth is created
inside a lab namespace, its peer moved straight into another one) and every
sysctl is written by a thread that has entered a lab namespace and checked
that it really is there. `_lab_only` refuses any other namespace name.

Many small changes go through one `ip -n NS -batch -` per namespace: one
process instead of dozens keeps `lab up` fast.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tracer import netns as nsmod
from tracer.errors import LabError
from tracer.lab.state import NETNS_PREFIX
from tracer.system import run


def _lab_only(name: str) -> str:
    if not name.startswith(NETNS_PREFIX) or "/" in name:
        raise LabError(f"refusing to touch namespace {name!r}: not a lab namespace")
    return name


def existing_netns() -> set[str]:
    """Names of the network namespaces in /run/netns (all of them)."""
    try:
        return {p.name for p in nsmod.NETNS_RUN_DIR.iterdir()}
    except FileNotFoundError:
        return set()


def ip_batch(netns: str, lines: Sequence[str]) -> None:
    """Run `ip -n netns` commands, one per line, in one process."""
    if not lines:
        return
    proc = run(
        ["ip", "-n", _lab_only(netns), "-batch", "-"],
        input="\n".join(lines) + "\n",
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        # ip prints the reason, then "Command failed -:<line>": report both.
        err = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        where = next((x for x in err if x.startswith("Command failed -:")), "")
        reason = next((x for x in err if not x.startswith("Command failed")), "failed")
        try:
            failed = lines[int(where.rsplit(":", 1)[1]) - 1]
        except (IndexError, ValueError):
            failed = "?"
        raise LabError(f"in {netns}: `ip {failed}`: {reason}")


def bridge_batch(netns: str, lines: Sequence[str]) -> None:
    """Run `bridge -n netns` commands (FDB entries), one per line, in one process."""
    if not lines:
        return
    proc = run(["bridge", "-n", _lab_only(netns), "-batch", "-"],
               input="\n".join(lines) + "\n", timeout=60, check=False)
    if proc.returncode != 0:
        reason = next((x for x in proc.stderr.strip().splitlines() if x.strip()), "failed")
        raise LabError(f"in {netns}: bridge -batch: {reason}")


def add_netns(names: Iterable[str]) -> None:
    # One process per namespace on purpose: `netns add` inside `ip -batch`
    # unshares the batch process itself, so later lines would run in the new
    # namespace (and the command reports failure).
    for name in names:
        run(["ip", "netns", "add", _lab_only(name)])


def delete_netns(names: Iterable[str]) -> None:
    """Delete the namespaces that exist (their veths go with them)."""
    todo = [n for n in names if n in existing_netns()]
    for name in todo:
        run(["ip", "netns", "del", _lab_only(name)], check=False)
    left = existing_netns() & set(todo)
    if left:
        raise LabError(f"could not delete network namespaces: {', '.join(sorted(left))}")


def set_sysctls(
    netns: str, values: Mapping[str, str | int], *, optional: Iterable[str] = ()
) -> None:
    """Write /proc/sys/<key> inside netns; keys are paths like
    "net/ipv4/ip_forward" (slashes: interface names may hold dots). Keys in
    optional are skipped when the kernel lacks them.

    /proc/sys/net shows the namespace of the thread that opens it, so this
    thread enters the namespace, checks it is no longer in the host's, and
    writes. This is how `net.ipv4.ip_forward` ends up set for a node and never
    for the host.
    """
    path = nsmod.resolve(_lab_only(netns))
    here = nsmod.current_inode()  # the namespace we run in: the host's
    want = nsmod.inode(path)
    if want == here:
        raise LabError(f"namespace {netns} is the one tracer runs in; refusing to set sysctls")
    with nsmod.entered(path):
        if nsmod.current_inode() != want:
            raise LabError(f"could not enter {netns} to set sysctls")
        skip_missing = set(optional)
        for key, value in values.items():
            target = Path("/proc/sys") / key
            if key in skip_missing and not target.exists():
                continue
            try:
                target.write_text(f"{value}\n")
            except OSError as exc:
                raise LabError(f"{netns}: cannot set {key}={value}: {exc.strerror}") from exc


def delete_links(netns: str, names: Iterable[str], timeout: float = 5.0) -> None:
    """Delete links by name and wait until they are gone. A link may vanish
    by itself meanwhile (its peer's namespace being freed): not an error."""
    names = list(names)
    for name in names:
        run(["ip", "-n", _lab_only(netns), "link", "del", name], check=False)
    deadline = time.monotonic() + timeout
    while True:
        left = set(names) & set(links(netns))
        if not left:
            return
        if time.monotonic() > deadline:
            raise LabError(f"in {netns}: could not delete {', '.join(sorted(left))}")
        time.sleep(0.01)


def links(netns: str) -> dict[str, dict]:
    """ifname -> `ip -j link` record, inside netns."""
    proc = run(["ip", "-n", _lab_only(netns), "-j", "link", "show"])
    return {rec["ifname"]: rec for rec in json.loads(proc.stdout or "[]")}


def link_details(netns: str, name: str) -> dict | None:
    """`ip -d -j link show dev name` inside netns (None: no such link)."""
    proc = run(["ip", "-n", _lab_only(netns), "-d", "-j", "link", "show", "dev", name], check=False)
    found = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    return found[0] if found else None


def addresses(netns: str, name: str) -> list[str]:
    """IPv4 addresses of a link inside netns, as "a.b.c.d/len"."""
    proc = run(["ip", "-n", _lab_only(netns), "-4", "-j", "addr", "show", "dev", name], check=False)
    recs = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    return [f"{a['local']}/{a['prefixlen']}" for r in recs for a in r.get("addr_info", [])]


def neighbours(netns: str, name: str) -> list[dict]:
    """`ip -j neigh show dev name` inside netns."""
    proc = run(["ip", "-n", _lab_only(netns), "-j", "neigh", "show", "dev", name], check=False)
    return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []


def fdb(netns: str, name: str) -> list[dict]:
    """`bridge -j fdb show dev name` inside netns."""
    proc = run(["bridge", "-n", _lab_only(netns), "-j", "fdb", "show", "dev", name], check=False)
    return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []


def routes(netns: str, *selector: str, six: bool = False) -> list[dict]:
    """`ip [-6] -j route show [selector...]` inside netns."""
    family = ["-6"] if six else []
    proc = run(["ip", "-n", _lab_only(netns), *family, "-j", "route", "show", *selector])
    return json.loads(proc.stdout or "[]")


def inode_of(netns: str) -> int | None:
    try:
        return os.stat(nsmod.NETNS_RUN_DIR / netns).st_ino
    except OSError:
        return None


def inodes_of(names: Iterable[str]) -> set[int]:
    """The inodes of the named namespaces that exist (the others are left out)."""
    return {i for i in (inode_of(n) for n in names) if i is not None}
