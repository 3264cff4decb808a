"""Root tests of tracer.rules on the real kernel, in private network
namespaces (tests/rules/topology.py): a client connects through a node that
holds kube-proxy-shaped rules (iptables-nft or nftables mode) to a pod.

Witnesses besides our own reader: `nft monitor trace` on the same traffic,
the DROP rule's packet counter, `nft list tables` after SIGKILL, and the
node's ruleset (minus our table) before, during and after."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rules.topology import (
    OTHER_POD_IP,
    OTHER_PORT,
    OTHER_VIP,
    POD_IP,
    POD_PORT,
    TCP,
    VIP,
    VIP_PORT,
    Topology,
)
from tracer.errors import LegacyXtablesError
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.manifest import SHIPPED_MANIFEST, load_manifest
from tracer.kube.model import Endpoint
from tracer.rules import RuleTracer, TraceEvent
from tracer.rules.trace_reader import TraceReader

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
NFT_SEED = ROOT / "tests" / "kube" / "data" / "kube_proxy_nft_seed_ruleset.txt"
KEYS = [(VIP, VIP_PORT, TCP), (POD_IP, POD_PORT, TCP)]


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology() as topology:
        yield topology


def kube_proxy_iptables(topo: Topology) -> None:
    """kube-proxy's iptables-mode nat rules: nginx-demo-1 -> POD_IP, nginx-demo-2 -> OTHER_POD_IP."""
    services = load_manifest(SHIPPED_MANIFEST).services
    text = render_nat_table(services, {services[0].key: [Endpoint(POD_IP, POD_PORT)],
                                       services[1].key: [Endpoint(OTHER_POD_IP, POD_PORT)]},
                            node_ips=["192.168.64.57"])
    topo.in_node("iptables-restore", "--noflush", input=text)


def calico_policy_drop(topo: Topology) -> None:
    """Felix's shape: filter FORWARD -> cali-FORWARD -> cali-tw-<iface> -> DROP."""
    for argv in (["-N", "cali-FORWARD"], ["-A", "FORWARD", "-j", "cali-FORWARD"],
                 ["-N", "cali-tw-cali1234"],
                 ["-A", "cali-FORWARD", "-o", "cali1234", "-j", "cali-tw-cali1234"],
                 ["-A", "cali-tw-cali1234", "-d", OTHER_POD_IP, "-j", "DROP"]):
        topo.in_node("iptables", *argv)


def collect(tracer: RuleTracer, settle: float = 0.3) -> list[TraceEvent]:
    events: list[TraceEvent] = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        events += tracer.poll(0.05)
    return events


def handle_of(topo: Topology, table: str, chain: str, pattern: str) -> int:
    listing = topo.in_node("nft", "-a", "list", "chain", "ip", table, chain)
    found = re.search(pattern + r".*# handle (\d+)", listing)
    assert found, listing
    return int(found.group(1))


def ruleset_without(topo: Topology, table: str) -> list[dict]:
    rules = json.loads(topo.in_node("nft", "-j", "list", "ruleset"))["nftables"]
    # Counters move with traffic; the rules themselves must not change.
    text = json.dumps([r for r in rules if "metainfo" not in r
                       and next(iter(r.values())).get("table", next(iter(r.values())).get("name")) != table])
    return json.loads(re.sub(r'\{"counter": \{"packets": \d+, "bytes": \d+\}\}', '"counter"', text))


def test_iptables_nft_dnat_walk_names_kube_chains(topo: Topology) -> None:
    kube_proxy_iptables(topo)
    calico_policy_drop(topo)  # a filter FORWARD chain the replies walk
    dnat = handle_of(topo, "nat", "KUBE-SEP-3D5CBNMKRT37LSXH", "dnat to")
    with RuleTracer(topo.path(topo.node), KEYS) as tracer:
        assert topo.connect(VIP, VIP_PORT)
        # Another Service (its VIP and its pod are not keys; its pod's
        # policy drops it): not traced at all.
        topo.connect(OTHER_VIP, OTHER_PORT, timeout=0.3)
        events = collect(tracer)
        lines = [w.line() for w in tracer.walks(events)]
    assert events and tracer.overruns == 0
    assert (f"nat PREROUTING -> KUBE-SERVICES -> KUBE-SVC-ZY4BE2BR2EQQGD2J -> "
            f"KUBE-SEP-3D5CBNMKRT37LSXH DNAT to {POD_IP}:{POD_PORT} (handle {dnat})") in lines
    texts = {(e.chain, e.handle): tracer.text_of(e.family, e.table, e.chain, e.handle) for e in events}
    assert texts[("KUBE-SEP-3D5CBNMKRT37LSXH", dnat)] == (
        '-A KUBE-SEP-3D5CBNMKRT37LSXH -p tcp -m comment --comment "default/nginx-demo-1" '
        f"-m tcp -j DNAT --to-destination {POD_IP}:{POD_PORT}")
    touched = {a for e in events for a in (e.src, e.dst)}
    assert OTHER_VIP not in touched and OTHER_POD_IP not in touched
    assert not any("ZOX6RBMDHRTFI74F" in (e.chain or "") + (e.target or "") for e in events)
    # Both directions: the pod's SYN-ACK (source POD_IP:80) is traced too.
    assert any(e.src == POD_IP and e.sport == POD_PORT and e.chain == "FORWARD" for e in events)


def test_nftables_mode_dnat_walk(topo: Topology) -> None:
    topo.in_node("nft", "-f", str(NFT_SEED))
    with RuleTracer(topo.path(topo.node), [(VIP, VIP_PORT, TCP)]) as tracer:
        for _ in range(4):  # numgen picks one of two endpoints; the other does not exist here
            topo.connect(VIP, VIP_PORT, timeout=0.2)
        topo.connect(OTHER_VIP, OTHER_PORT, timeout=0.2)
        events = collect(tracer)
        walks = tracer.walks(events)
    dnat_walks = [w for w in walks if w.final and w.final.verdict == "accept" and w.table == "kube-proxy"
                  and w.base_chain == "nat-prerouting"]
    assert dnat_walks
    for walk in dnat_walks:
        assert re.fullmatch(
            r"kube-proxy nat-prerouting -> services -> service-KW5HXLYH-default/nginx-demo-1/tcp/ -> "
            r"endpoint-\w+-default/nginx-demo-1/tcp/__(10\.217\.\d+\.\d+)/80 "
            r"DNAT to \1:80 \(handle \d+\)", walk.line()), walk.line()
        assert walk.final.text.startswith("meta l4proto tcp dnat to 10.217.")
    assert not any(e.dst == OTHER_VIP or "nginx-demo-2" in e.chain for e in events)


def test_filter_drop_has_verdict_drop_handle_and_text(topo: Topology) -> None:
    calico_policy_drop(topo)
    drop = handle_of(topo, "filter", "cali-tw-cali1234", "drop")
    with RuleTracer(topo.path(topo.node), [(OTHER_POD_IP, POD_PORT, TCP)]) as tracer:
        assert not topo.connect(OTHER_POD_IP, POD_PORT, timeout=0.3)
        events = collect(tracer)
        walks = tracer.walks(events)
    dropped = [w for w in walks if w.verdict == "drop"]
    assert dropped
    assert dropped[0].line() == f"filter FORWARD -> cali-FORWARD -> cali-tw-cali1234 -> DROP (handle {drop})"
    assert dropped[0].final.text == f"-A cali-tw-cali1234 -d {OTHER_POD_IP}/32 -j DROP"
    # Witness: the rule's own counter saw as many packets as we saw drops.
    counted = topo.in_node("iptables", "-L", "cali-tw-cali1234", "-v", "-x", "-n").splitlines()[2].split()[0]
    assert int(counted) == len(dropped)


def test_nft_monitor_trace_sees_the_same_rules(topo: Topology) -> None:
    kube_proxy_iptables(topo)
    with RuleTracer(topo.path(topo.node), KEYS) as tracer:
        monitor = subprocess.Popen(["ip", "netns", "exec", topo.node, "nft", "-a", "monitor", "trace"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)  # let it subscribe
            assert topo.connect(VIP, VIP_PORT)
            events = collect(tracer, 0.5)
        finally:
            monitor.terminate()
        out = monitor.communicate(timeout=5)[0]
    pattern = re.compile(r"^trace id (\w+) ip (\S+) (\S+) rule .*# handle (\d+) \(verdict (\w+)", re.M)
    witness = {(int(i, 16), t, c, int(h), v) for i, t, c, h, v in pattern.findall(out)
               if not t.startswith("tracer_")}
    ours = {(e.trace_id, e.table, e.chain, e.handle, e.verdict) for e in events
            if e.type == "rule" and e.handle is not None}
    assert witness and ours == witness


def test_sigkill_leaves_no_table(topo: Topology) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tracer.rules import RuleTracer\n"
         f"t = RuleTracer({str(topo.path(topo.node))!r}, [({VIP!r}, {VIP_PORT}, 6)]).__enter__()\n"
         "print(t.name, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        name = child.stdout.readline().strip()
        assert name.startswith("tracer_")
        assert f"table ip {name}" in topo.in_node("nft", "list", "tables")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    deadline = time.monotonic() + 5
    while name in topo.in_node("nft", "list", "tables") and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel releases the socket when the process is reaped
    assert topo.in_node("nft", "list", "tables").strip() == ""


def test_no_other_table_is_modified(topo: Topology) -> None:
    kube_proxy_iptables(topo)
    topo.in_node("nft", "-f", str(NFT_SEED))
    before = ruleset_without(topo, "-")
    with RuleTracer(topo.path(topo.node), KEYS) as tracer:
        during = ruleset_without(topo, tracer.name)
        topo.connect(VIP, VIP_PORT, timeout=0.3)  # the second DNAT may pick a pod that is not here
        collect(tracer, 0.1)
    assert before == during == ruleset_without(topo, "-")
    assert "tracer_" not in topo.in_node("nft", "list", "tables")


def test_legacy_xtables_rules_are_refused_in_one_line(topo: Topology) -> None:
    services = load_manifest(SHIPPED_MANIFEST).services
    text = render_nat_table(services, {s.key: [Endpoint(POD_IP, POD_PORT)] for s in services},
                            node_ips=["192.168.64.57"])
    topo.in_node("iptables-legacy-restore", "--noflush", input=text)
    with pytest.raises(LegacyXtablesError) as caught:
        RuleTracer(topo.path(topo.node), KEYS).__enter__()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--rules cannot trace legacy xtables rules")
    assert caught.value.exit_code == 4
    assert "tracer_" not in topo.in_node("nft", "list", "tables")


def test_lost_trace_messages_are_counted(topo: Topology) -> None:
    kube_proxy_iptables(topo)
    with RuleTracer(topo.path(topo.node), KEYS) as tracer:
        # A tiny receive buffer on a second reader, never read while traffic flows.
        from tracer import netns
        with netns.entered(topo.path(topo.node)):
            small = TraceReader(rcvbuf=1)
        try:
            for _ in range(20):
                topo.connect(VIP, VIP_PORT)
            small.poll(0.2)
            assert small.overruns > 0
        finally:
            small.close()
        assert tracer.overruns == 0


def test_capture_rules_on_legacy_xtables_is_one_line(topo: Topology, tmp_path: Path) -> None:
    """Through the CLI: the capture resolves the Service from the legacy
    rules, then --rules refuses in one line (exit 4), leaving no table."""
    services = load_manifest(SHIPPED_MANIFEST).services
    text = render_nat_table(services, {s.key: [Endpoint(POD_IP, POD_PORT)] for s in services},
                            node_ips=["192.168.64.57"])
    topo.in_node("iptables-legacy-restore", "--noflush", input=text)
    proc = subprocess.run(
        [sys.executable, "-m", "tracer", "capture", "--svc", "nginx-demo-1", "--netns",
         str(topo.path(topo.node)), "--rules", "--duration", "5", "-o", str(tmp_path / "cap")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 4, proc.stderr
    assert len(err) == 1 and err[0].startswith("tracer: error: --rules cannot trace legacy xtables")
    assert "Traceback" not in proc.stderr
    assert "tracer_" not in topo.in_node("nft", "list", "tables")
