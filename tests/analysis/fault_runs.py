"""Shared by the lab tests of broken Services: capture both nodes under
traffic and diagnose the captures (tests/analysis/test_lab_diagnose.py,
test_lab_rules.py)."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from tests.capture.lab_capture import captures, sep_counters, sh
from tracer.analysis.outcomes import SETTLE_NS
from tracer.cli import main
from tracer.lab.traffic import run_traffic

REQUESTS = 30
# Between TCP's SYN retransmissions (1 s, then 3 s after the first): an ICMP
# error answering the retransmitted SYN reaches the client before it gives
# up, so what the client saw and what the capture shows agree.
CLIENT_TIMEOUT_S = 1.5


def dnat_counts(before: dict[str, int]) -> dict[str, int]:
    """Endpoint IP -> new connections node A DNATed to it since `before`."""
    chain_ip = {}
    for line in sh("lab-node-a", "iptables-save", "-t", "nat").splitlines():
        if line.startswith("-A KUBE-SEP-") and "--to-destination" in line:
            chain_ip[line.split()[1]] = line.split("--to-destination ")[1].split(":")[0]
    after = sep_counters("lab-node-a")
    return {ip: after[c] - before.get(c, 0) for c, ip in chain_ip.items()
            if c in after and after[c] > before.get(c, 0)}


def capture_and_diagnose(tmp_path, capsys, path: str = "/", *, rules: bool = False,
                         during=contextlib.nullcontext) -> tuple[object, dict[str, int], dict]:
    """Capture both nodes (with --rules if asked) while the client sends
    REQUESTS requests to `path`, then `tracer diagnose --json` them: the
    client's result, node A's DNAT counts per endpoint (iptables mode), the
    diagnosis. `during()` is entered around the traffic (a witness)."""
    sh("lab-node-a", "conntrack", "-F")
    before = sep_counters("lab-node-a")
    extra = ["--rules"] if rules else []
    specs = {n: (["--svc", "nginx-demo-1", "--netns", f"lab-node-{n}", *extra], tmp_path / n)
             for n in "ab"}
    with captures(specs, stop_last_first=True), during():
        traffic = run_traffic(requests=REQUESTS, concurrency=4, target="external-ip",
                              timeout=CLIENT_TIMEOUT_S,
                              path=path)
        # diagnose judges a connection unanswered only when the capture
        # went on SETTLE_NS after its last packet (else: undetermined).
        time.sleep(SETTLE_NS / 1e9 + 0.5)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None), out
    return traffic, dnat_counts(before), json.loads(out)
