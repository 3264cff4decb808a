"""`tracer fairness` on the lab with 2 and 3 replicas, several hundred new
connections, held exactly against what the lab counts by itself over the same
run: the KUBE-SEP-* DNAT rule counters (one per new NAT binding) and the
requests each pod's nginx logged.

Bindings are not client connections: when MASQUERADE --random-fully picks a
source port the pod still holds in TIME_WAIT, the pod answers the SYN with a
bare ACK, the client resets, and its retransmitted SYN is chosen afresh. The
rules count that second choice, and so does the capture; client connections
are the distinct pre-NAT tuples with their SYN's sequence number (the client
also reuses a source port for a new connection), and every extra choice must
follow a reset from the client."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tests.capture.lab_capture import capture
from tracer.analysis import assemble, commands, load_events
from tracer.analysis.events import PROBE_NAT, PROBE_RX
from tracer.analysis.key_figures import client_connections
from tracer.analysis.stats import chi2_sf
from tracer.lab import witness
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

SERVICE = "nginx-demo-1"
NEW_CONNECTIONS = 400
KEEPALIVE_REQUESTS, KEEPALIVE_CONNECTIONS = 60, 3
TCP_RST = 0x04


@pytest.mark.parametrize("replicas", [2, 3])
def test_fairness_on_the_lab(replicas, lab_reup, tmp_path):
    run = _record(lab_reup(replicas=replicas), tmp_path)
    assert len(run.state.service(SERVICE).ports[0].endpoints) == replicas
    _agrees_with_rule_counters_and_access_logs(run)
    _extra_bindings_are_client_resets_after_time_wait_clashes(run)


def _record(state, tmp_path) -> SimpleNamespace:
    """One capture per node during NEW_CONNECTIONS one-request connections and
    KEEPALIVE_REQUESTS requests over KEEPALIVE_CONNECTIONS keep-alive ones."""
    before = witness.mark(state, SERVICE)
    caps = [tmp_path / n.netns for n in state.nodes]
    with (
        capture(["--svc", SERVICE, "--netns", state.nodes[0].netns], caps[0]) as a,
        capture(["--svc", SERVICE, "--netns", state.nodes[1].netns], caps[1]) as b,
    ):
        fresh = run_traffic(requests=NEW_CONNECTIONS, concurrency=4, state=state)
        kept = run_traffic(requests=KEEPALIVE_REQUESTS, concurrency=KEEPALIVE_CONNECTIONS,
                           keepalive=True, state=state)
        time.sleep(0.5)
    assert a.returncode == 0 and b.returncode == 0, a.stderr_lines + b.stderr_lines
    assert fresh.failed == 0 and kept.failed == 0, (fresh.errors, kept.errors)
    doc = json.loads("\n".join(commands.fairness(caps, as_json=True)))  # what `tracer fairness --json` prints
    return SimpleNamespace(state=state, caps=caps, fresh=fresh, kept=kept, doc=doc,
                           seen=witness.since(state, SERVICE, before))


def _agrees_with_rule_counters_and_access_logs(run: SimpleNamespace) -> None:
    state, fresh, kept, doc, seen = run.state, run.fresh, run.kept, run.doc, run.seen
    endpoints = doc["overall"]["endpoints"]
    pods = {f"{e.ip}:{e.port}": e for e in state.service(SERVICE).ports[0].endpoints}
    assert {e["endpoint"] for e in endpoints} == set(pods)
    for e in endpoints:
        # kube-proxy writes --probability with 10 decimals (0.33333333349), so
        # the rules promise 1/n only to about 1e-10.
        assert e["promised_share"] == pytest.approx(1 / len(pods), abs=1e-9)
        assert e["node"] == state.node(pods[e["endpoint"]].node).netns  # where the pod runs
    # New NAT bindings: exactly the KUBE-SEP counters, endpoint by endpoint.
    assert {e["endpoint"]: e["connections"] for e in endpoints if e["connections"]} == seen.dnat
    # Requests: exactly what each pod's nginx logged, and what the client got answered.
    assert {e["endpoint"]: e["requests"] for e in endpoints if e["requests"]} == seen.served
    assert sum(seen.served.values()) == fresh.ok + kept.ok == NEW_CONNECTIONS + KEEPALIVE_REQUESTS
    # The statistics are those of the rule counters against the rules' promise.
    counts = np.array([seen.dnat.get(e["endpoint"], 0) for e in endpoints], float)
    expected = counts.sum() * np.array([e["promised_share"] for e in endpoints])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    overall = doc["overall"]
    assert overall["connections"] == sum(seen.dnat.values())
    assert overall["chi_square"]["statistic"] == pytest.approx(chi2, rel=1e-9, abs=1e-12)
    assert overall["chi_square"]["df"] == len(counts) - 1
    assert overall["chi_square"]["p_value"] == pytest.approx(chi2_sf(chi2, len(counts) - 1), rel=1e-9)
    x = counts / expected
    assert overall["jain_index"] == pytest.approx(x.sum() ** 2 / (len(x) * (x**2).sum()), rel=1e-12)
    assert overall["chi_square"]["p_value"] > 1e-6, "the lab's rules should keep their promise"
    # Keep-alive pinning: one connection carried at least its share of the 60 requests.
    assert doc["requests"]["per_connection"]["max"] >= math.ceil(
        KEEPALIVE_REQUESTS / KEEPALIVE_CONNECTIONS)


def _extra_bindings_are_client_resets_after_time_wait_clashes(run: SimpleNamespace) -> None:
    fresh, kept, doc = run.fresh, run.kept, run.doc
    packets = assemble(load_events(run.caps))
    clients = client_connections(packets)
    # Distinct pre-NAT client tuples and SYN sequence numbers: the client may
    # reuse a source port for a new connection (new ISN) within milliseconds.
    assert clients == fresh.connections + kept.connections
    extra = doc["overall"]["connections"] - clients
    assert extra >= 0
    ev = packets.events
    key = ["src", "sport", "dst", "dport"]
    choices = ev[(ev["probe_code"] == PROBE_NAT) & ev["nat_first"] & (ev["nat_kind"] == "dnat")]
    per_syn = choices.groupby([*key, "seq"]).size()  # a retransmitted SYN repeats its seq
    rebound = per_syn[per_syn > 1]
    assert int((rebound - 1).sum()) == extra
    # Each extra choice follows a reset sent by the client on that tuple.
    resets = ev[(ev["probe_code"] == PROBE_RX) & ((ev["tcp_flags"] & TCP_RST) != 0)].groupby(key).size()
    for (*tup, _seq), n in rebound.items():
        assert resets.get(tuple(tup), 0) >= n - 1, tup
