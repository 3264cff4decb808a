"""Witnesses of the Service API in the lab's kernel state, independent of the
tracer: kube-proxy's `recent` lists (session affinity, iptables mode), its
affinity sets (nftables mode), and the nginx access logs' client addresses."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

from tests.capture.lab_capture import captures, sh
from tracer.lab import access_log
from tracer.lab.traffic import TrafficResult, run_traffic

_RECENT_SRC = re.compile(r"^src=(\S+) ")


def sep_endpoints(netns: str, service: str | None = None) -> dict[str, str]:
    """KUBE-SEP chain -> endpoint IP, from the node's loaded nat rules (of
    one Service, "namespace/name", if given: kube-proxy's rule comment)."""
    out = {}
    for line in sh(netns, "iptables-save", "-t", "nat").splitlines():
        if service and f'--comment "{service}' not in line:
            continue
        if line.startswith("-A KUBE-SEP-") and "--to-destination" in line:
            out[line.split()[1]] = line.split("--to-destination ")[1].split(":")[0]
    return out


def recent_lists(netns: str) -> dict[str, set[str]]:
    """xt_recent list name (the KUBE-SEP chain) -> client addresses in it."""
    text = sh(netns, "sh", "-c",
              'for f in /proc/net/xt_recent/*; do [ -e "$f" ] && echo "== $f" && cat "$f"; done; true')
    out: dict[str, set[str]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("== "):
            name = Path(line[3:]).name
            out[name] = set()
        elif name and (m := _RECENT_SRC.match(line)):
            out[name].add(m.group(1))
    return out


def flush_recent_lists(netns: str) -> None:
    """Forget every client (writing "/" to a list clears it: xt_recent)."""
    sh(netns, "sh", "-c", 'for f in /proc/net/xt_recent/*; do [ -e "$f" ] && echo / > "$f"; done; true')


def affinity_pins_iptables(nodes: list[str]) -> dict[str, set[str]]:
    """Client address -> endpoint IPs it is pinned to in some node's recent lists."""
    pins: dict[str, set[str]] = defaultdict(set)
    for netns in nodes:
        endpoints = sep_endpoints(netns)
        for chain, sources in recent_lists(netns).items():
            for src in sources:
                pins[src].add(endpoints[chain])
    return dict(pins)


def affinity_pins_nftables(nodes: list[str]) -> dict[str, set[str]]:
    """Client address -> endpoint IPs, from the affinity- sets of table ip
    kube-proxy (kube-proxy names each after its endpoint:
    affinity-<hash>-<ns>/<svc>/<proto>/<port name>__<ip>/<port>)."""
    pins: dict[str, set[str]] = defaultdict(set)
    for netns in nodes:
        doc = json.loads(sh(netns, "nft", "-j", "list", "table", "ip", "kube-proxy"))
        for item in doc["nftables"]:
            s = item.get("set")
            if not s or not s["name"].startswith("affinity-"):
                continue
            endpoint_ip = s["name"].rsplit("__", 1)[1].split("/")[0]
            for elem in s.get("elem", []):
                addr = elem["elem"]["val"] if isinstance(elem, dict) else elem
                pins[addr].add(endpoint_ip)
    return dict(pins)


def remote_addrs_by_pod(state, marks) -> dict[str, set[str]]:
    """Pod -> client addresses nginx logged since marks."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in access_log.read_since(marks, state):
        out[e.pod].add(e.remote_addr)
    return dict(out)


def captured_traffic(tmp_path: Path, svc: str, runs: list[dict], *, state,
                     between=lambda: None) -> tuple[list[TrafficResult], dict[str, set[str]]]:
    """Capture both nodes for svc while each run_traffic(**run) goes (with
    between() between two runs); the results and the access logs' client
    addresses per pod."""
    for n in "ab":
        sh(f"lab-node-{n}", "conntrack", "-F")
    marks = access_log.offsets(state)
    specs = {n: (["--svc", svc, "--netns", f"lab-node-{n}"], tmp_path / n) for n in "ab"}
    with captures(specs, stop_last_first=True):
        results = []
        for i, run in enumerate(runs):
            if i:
                between()
            results.append(run_traffic(service=svc, state=state, **run))
        time.sleep(0.5)  # the last FINs reach both captures
    return results, remote_addrs_by_pod(state, marks)
