"""Every analysis command on IPv6 and on mixed (dual-stack) captures.

The IPv6 capture is the IPv4 seed scenario's twin (tests/analysis/synthetic6.py):
the same connections, endpoints, drops, duplicates and clocks, written as the
capture engine writes IPv6 packets. So each command's IPv6 answer must be the
IPv4 twin's with the addresses translated back, and a mixed capture's IPv4
half must answer as the IPv4 capture alone does. On the code before IPv6
support every command here failed: an IPv6 address string raised in the
loader (ipaddress.IPv4Address)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.analysis import synthetic as s4
from tests.analysis import synthetic6 as s6
from tests.cli_run import one_line_error, run
from tracer.analysis.addresses import int_to_ip
from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble

KW = dict(
    connections=300, rate_per_s=300,
    clients=("192.168.64.10", "192.168.64.11", "192.168.64.12"),
    pinned_clients={"192.168.64.12": 4}, drop_fraction=0.03, duplicate_fraction=0.02,
    clock_error_ns={s4.NODE_A: 0, s4.NODE_B: 7_300_000}, seed=21,
)
# The mixed capture's IPv6 clients are others than its IPv4 ones.
KW6_MIXED = {**KW, "clients": ("192.168.64.20", "192.168.64.21"), "pinned_clients": {}, "seed": 22}


def _tree_hash(paths) -> str:
    h = hashlib.sha256()
    for root in paths:
        for f in sorted(Path(root).rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class Twins:
    def __init__(self, root: Path):
        self.sim4 = s4.simulate(s4.Scenario(**KW))
        self.sim6 = s6.to_ipv6(self.sim4)
        self.mixed, self.mixed4, self.mixed6 = s6.mixed(s4.Scenario(**KW), s4.Scenario(**KW6_MIXED))
        self.v4 = [str(p) for p in self.sim4.write(root / "v4").values()]
        self.v6 = [str(p) for p in self.sim6.write(root / "v6").values()]
        self.mx = [str(p) for p in self.mixed.write(root / "mixed").values()]


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Twins:
    return Twins(tmp_path_factory.mktemp("ipv6"))


def _addresses() -> list[tuple[str, str]]:
    """(IPv6 twin, IPv4) of every address the scenarios use, longest first."""
    v4 = {s4.VIP, s4.NODE_B_IP, "10.96.112.40", *(p.ip for p in s4.PODS),
          *(f"192.168.64.{i}" for i in range(10, 30))}
    return sorted(((s6.v6_of(a), a) for a in v4), key=lambda p: -len(p[0]))


def as_ipv4(text: str) -> str:
    """An IPv6 twin's output with its addresses written as the IPv4 run's."""
    for six, four in _addresses():
        text = text.replace(f"[{six}]", four)
    for six, four in _addresses():
        text = re.sub(rf"(?<![0-9a-f:]){re.escape(six)}(?![0-9a-f:])", four, text)
    return text


def _cli(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def _loaded(out: str):
    return json.loads(out)


# ---------------------------------------------------------------- packets and clocks


def test_ipv6_packets_equal_ground_truth_and_the_ipv4_twins(twins):
    """Without an IP ID, tuple + seq + ack + length still put every event in
    its packet and cross the nodes; the clock offset is recovered as well."""
    p6, p4 = (assemble(load_events(paths)) for paths in (twins.v6, twins.v4))
    truth = pd.concat([twins.sim6.events[s4.NODE_A], twins.sim6.events[s4.NODE_B]],
                      ignore_index=True)["_packet"].to_numpy()
    m = pd.DataFrame({"pk": p6.events["packet"].to_numpy(),
                      "truth": truth[p6.events["row"].to_numpy()]})
    # Two equal segments crossing together (a retransmission, a wire
    # duplicate) differ in IPv4 by their IP ID; in IPv6 they are identical
    # and may be crossed the wrong way round, but never silently.
    mixing = m.groupby("pk")["truth"].nunique()
    mixing = set(mixing[mixing > 1].index)
    flagged = set(p6.events.loc[p6.events["ambiguous"].to_numpy(), "packet"])
    assert mixing <= flagged and len(mixing) <= 4
    split = m.groupby("truth")["pk"].nunique()
    assert set(m[m["truth"].isin(split[split > 1].index)]["pk"]) <= mixing
    assert p6.count == p4.count == len(np.unique(truth))
    assert len(p6.links) == len(p4.links)
    assert p6.links["ambiguous"].sum() >= p4.links["ambiguous"].sum()
    b6, b4 = p6.clocks.nodes[s4.NODE_B], p4.clocks.nodes[s4.NODE_B]
    assert abs(b6.offset_ns - 7_300_000) <= b6.uncertainty_ns
    assert abs(b6.offset_ns - b4.offset_ns) <= b4.uncertainty_ns


# ---------------------------------------------------------------- the commands, IPv6


@pytest.mark.parametrize("command", ["fairness", "diagnose"])
def test_ipv6_answers_are_the_ipv4_twins(capsys, twins, command):
    """fairness and diagnose (JSON) on the IPv6 capture = on the IPv4 one,
    once the addresses are translated back; the capture is left untouched."""
    before = _tree_hash(twins.v6)
    out6 = _cli(capsys, command, *twins.v6, "--json")
    out4 = _cli(capsys, command, *twins.v4, "--json")
    assert "[fd00:10:217:120::72]:80" in out6
    assert _loaded(as_ipv4(out6)) == _loaded(out4)
    assert _tree_hash(twins.v6) == before


def test_ipv6_fairness_counts_the_truth(capsys, twins):
    doc = _loaded(_cli(capsys, "fairness", *twins.v6, "--json"))
    truth = twins.sim6.connections["endpoint_ip"].value_counts()
    got = {e["endpoint"]: e["connections"] for e in doc["overall"]["endpoints"]}
    assert got == {f"[{ip}]:80": int(n) for ip, n in truth.items()}
    assert {e["promised_share"] for e in doc["overall"]["endpoints"]} == {0.5}
    assert doc["per_family"] == []
    assert {g["label"] for g in doc["per_client"]} == {s6.v6_of(c) for c in KW["clients"]}


def test_ipv6_latency_is_the_ipv4_twins(capsys, twins):
    out6 = _loaded(as_ipv4(_cli(capsys, "latency", *twins.v6, "--json")))
    out4 = _loaded(_cli(capsys, "latency", *twins.v4, "--json"))
    assert out6.keys() == out4.keys()
    assert out6["nat_hook"] == out4["nat_hook"]
    assert out6["node_traversal"] == out4["node_traversal"]


def test_ipv6_timeline_flow(capsys, twins):
    conn = twins.sim6.connections.iloc[0]
    flow = f"[{conn.client}]:{conn.client_port}->[{s6.VIP6}]:8088/tcp"
    docs = [json.loads(x) for x in _cli(capsys, "timeline", *twins.v6, "--flow", flow,
                                        "--json", "--limit", "0").splitlines()]
    assert len(docs) >= 9
    assert docs[0]["src"] == f"[{conn.client}]:{conn.client_port}"
    assert docs[0]["dst"] == f"[{s6.VIP6}]:8088"
    # The same packets as the IPv4 twin's flow, hop by hop.
    conn4 = twins.sim4.connections.iloc[0]
    flow4 = f"{conn4.client}:{conn4.client_port}->{s4.VIP}:8088/tcp"
    docs4 = [json.loads(x) for x in _cli(capsys, "timeline", *twins.v4, "--flow", flow4,
                                         "--json", "--limit", "0").splitlines()]
    assert [len(d["hops"]) for d in docs] == [len(d["hops"]) for d in docs4]
    text = _cli(capsys, "timeline", *twins.v6, "--flow", flow, "--limit", "1")
    assert f"[{conn.client}]:{conn.client_port} -> [{s6.VIP6}]:8088" in text
    assert " id 0" not in text and "hlim 64" in text and "ttl " not in text
    text4 = _cli(capsys, "timeline", *twins.v4, "--flow", flow4, "--limit", "1")
    assert " id " in text4 and "ttl 64" in text4 and "hlim" not in text4  # IPv4 as before
    # A bare IPv6 address (no port) selects the client's packets too.
    bare = _cli(capsys, "timeline", *twins.v6, "--flow", str(conn.client), "--limit", "0", "--json")
    assert len(bare.splitlines()) > len(docs)


@pytest.mark.parametrize("flow, message", [
    ("[fd00:64::10", "expected [IPV6]:PORT"),
    ("[fd00:64::10]:99999", "port '99999' is not a number 0-65535"),
    ("fd00:64::zz->[fd00:64::57]:8088", "'fd00:64::zz' is not an IPv4 or IPv6 address"),
])
def test_bad_ipv6_flows_are_one_line_usage_errors(capsys, twins, flow, message):
    code, out, err = run(capsys, "timeline", *twins.v6, "--flow", flow)
    assert code == 2 and out == ""
    assert message in one_line_error(err)


def test_correlate_keeps_ipv6_addresses(capsys, twins, tmp_path):
    before = _tree_hash(twins.mx)
    merged = tmp_path / "merged"
    _cli(capsys, "correlate", *twins.mx, "-o", str(merged))
    assert _tree_hash(twins.mx) == before
    a = load_events(twins.mx).events
    b = load_events([merged]).events
    for col in ("src", "dst", "nat_src", "nat_dst"):
        assert _texts(a[col]) == _texts(b[col])
    merged_fair = _loaded(_cli(capsys, "fairness", str(merged), "--json"))
    nodes_fair = _loaded(_cli(capsys, "fairness", *twins.mx, "--json"))
    assert merged_fair["per_family"] == nodes_fair["per_family"]


def _texts(keys: pd.Series) -> list[str]:
    return sorted(int_to_ip(int(k)) for k in pd.unique(keys))


# ---------------------------------------------------------------- mixed captures


def test_mixed_fairness_judges_each_family_against_its_own_promise(capsys, twins):
    doc = _loaded(_cli(capsys, "fairness", *twins.mx, "--json"))
    fam = {g["label"]: g for g in doc["per_family"]}
    assert list(fam) == ["IPv4", "IPv6"]
    for label, sim, form in (("IPv4", twins.mixed4, "{}:80"), ("IPv6", twins.mixed6, "[{}]:80")):
        truth = sim.connections["endpoint_ip"].value_counts()
        got = {e["endpoint"]: e["connections"] for e in fam[label]["endpoints"]}
        assert got == {form.format(ip): int(n) for ip, n in truth.items()}
        assert [e["promised_share"] for e in fam[label]["endpoints"]] == [0.5, 0.5]
    # The IPv4 family of the mixed capture is the IPv4 run alone, figure for figure.
    alone = _loaded(_cli(capsys, "fairness", *twins.v4, "--json"))["overall"]
    assert fam["IPv4"]["chi_square"] == alone["chi_square"]
    assert fam["IPv4"]["endpoints"] == alone["endpoints"]
    assert doc["overall"]["connections"] == 2 * KW["connections"]
    text = _cli(capsys, "fairness", *twins.mx)
    assert "Per family (a dual-stack Service's IPv4 and IPv6 ports are separate promises):" in text


def test_mixed_diagnose_and_latency(capsys, twins):
    doc = _loaded(_cli(capsys, "diagnose", *twins.mx, "--json"))
    alone4 = _loaded(_cli(capsys, "diagnose", *twins.v4, "--json"))
    assert doc["connections"]["total"] == 2 * alone4["connections"]["total"]
    eps = {e["endpoint"] for e in doc["endpoints"]}
    assert {"10.217.120.72:80", "[fd00:10:217:120::72]:80"} <= eps
    lat = _loaded(_cli(capsys, "latency", *twins.mx, "--json"))
    assert lat["nat_hook"] and lat["cross_node_hop"]


def test_ipv6_udp_flows_and_icmpv6_errors(tmp_path, capsys):
    """UDP flows (answered, retried, refused by the pod's ICMPv6 port
    unreachable, unanswered) and TCP beside them are judged in IPv6 as their
    IPv4 twins are, and the refusals are named as ICMPv6 ones."""
    from tests.analysis.synthetic_udp import simulate_udp

    kinds = ["answer", "retry", "no_socket", "icmp", "silent", "icmp", "answer", "answer_lost"]
    args = dict(endpoints=[0, 1, 0, 1, 1, 0, 1, 1], tcp_connections=4)
    paths4 = list(map(str, simulate_udp(kinds, **args).write(tmp_path / "v4")))
    sim6 = s6.udp_to_ipv6(simulate_udp(kinds, **args))
    paths6 = list(map(str, sim6.write(tmp_path / "v6")))
    before = _tree_hash(paths6)
    d4 = _loaded(_cli(capsys, "diagnose", *paths4, "--json"))
    d6 = _loaded(_cli(capsys, "diagnose", *paths6, "--json"))
    assert d6["connections"] == d4["connections"]
    assert d6["connections"]["unreachable"] == 2
    icmp = [g["icmp"] for g in d6["failures"] if g["outcome"] == "unreachable"]
    assert {(i["type"], i["code"], i["name"], i["sent_by"]) for i in icmp} == {
        (1, 4, "port unreachable", "pod")}
    assert {i["sender"] for i in icmp} == {p.ip for p in s6.PODS6}
    text = _cli(capsys, "diagnose", *paths6)
    assert "refused by ICMPv6 1/4 (port unreachable) from fd00:10:217:" in text
    fair = _loaded(_cli(capsys, "fairness", *paths6, "--json"))
    assert fair["unit"] == "connections and flows" and fair["overall"]["connections"] == 12
    assert _tree_hash(paths6) == before


# ---------------------------------------------------------------- pcapng


def _tshark(*args: str) -> list[str]:
    assert shutil.which("tshark"), "tshark is missing: run scripts/setup.sh"
    out = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_pcapng_of_a_mixed_capture_is_read_by_tshark(capsys, twins, tmp_path):
    """IPv6 packets with IPv6 headers (link type 229) next to IPv4 ones; with
    the payload zero-filled tshark finds every TCP checksum good."""
    merged = tmp_path / "merged"
    _cli(capsys, "correlate", *twins.mx, "-o", str(merged))
    before = _tree_hash([merged])
    pcap = tmp_path / "mixed.pcapng"
    _cli(capsys, "export", str(merged), "--pcap", str(pcap), "--payload", "zeros")
    assert _tree_hash([merged]) == before
    rows = _tshark("-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                   "-T", "fields", "-e", "ip.src", "-e", "ipv6.src", "-e", "ipv6.dst",
                   "-e", "ipv6.hlim", "-e", "tcp.checksum.status", "-e", "ip.checksum.status",
                   "-e", "tcp.srcport")
    ev = load_events([merged]).events
    assert len(rows) == len(ev)
    fields = [r.split("\t") for r in rows]
    v6 = [f for f in fields if f[1]]
    v4 = [f for f in fields if f[0]]
    assert len(v6) == int((ev["src"].to_numpy() >= 2**32).sum()) and len(v4) + len(v6) == len(ev)
    assert {f[1] for f in v6} <= {s6.v6_of(a) for _, a in _addresses()}
    assert {f[4] for f in fields} == {"1"}  # every TCP checksum good, both families
    assert {f[5] for f in v4} == {"1"}
    assert {int(f[3]) for f in v6} <= {62, 63, 64}
    # tcpdump reads it too, and writes IPv6 as IPv6.
    assert shutil.which("tcpdump")
    lines = subprocess.run(["tcpdump", "-nr", str(pcap)], capture_output=True, text=True,
                           timeout=120).stdout.splitlines()
    # (A zero payload to a port tcpdump dissects, e.g. OpenFlow's, adds a line.)
    lines = [x for x in lines if x[:2].isdigit()]
    assert len(lines) == len(ev)
    assert any(f"IP6 {s6.v6_of('192.168.64.20')}." in line for line in lines)
    assert any("IP 192.168.64.10." in line for line in lines)


def test_key_columns_are_uint32_without_ipv6(twins):
    """IPv4 frames keep the 32-bit columns they always had (speed); IPv6 or
    mixed ones widen every address column to int64 together."""
    cols = ("src", "dst", "nat_src", "nat_dst", "out_src", "out_dst", "quoted_src", "outer_dst")
    for paths, dtype in ((twins.v4, np.uint32), (twins.v6, np.int64), (twins.mx, np.int64)):
        ev = load_events(paths).events
        assert {ev[c].dtype for c in cols} == {np.dtype(dtype)}


def test_pcapng_of_an_ipv6_capture_is_raw_ipv6(capsys, twins, tmp_path):
    pcap = tmp_path / "v6.pcapng"
    _cli(capsys, "export", twins.v6[1], "--pcap", str(pcap), "--payload", "zeros")
    rows = _tshark("-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-T", "fields",
                   "-e", "frame.protocols", "-e", "tcp.checksum.status")
    assert rows and {r.split("\t")[1] for r in rows} == {"1"}
    assert {r.split("\t")[0] for r in rows} == {"ipv6:tcp"}  # no link layer
    lines = subprocess.run(["tcpdump", "-nr", str(pcap)], capture_output=True, text=True,
                           timeout=120).stdout.splitlines()
    assert all(" IP6 fd00:" in x for x in lines if x[:2].isdigit())


# ---------------------------------------------------------------- representation


def test_address_keys():
    from tracer.analysis.addresses import IPV6_BASE, endpoint, family, ip_to_int, is_ipv6

    assert ip_to_int("10.0.0.1") == 167772161 and ip_to_int("") == 0  # IPv4 as before
    key = ip_to_int("2001:db8::1")
    assert key >= IPV6_BASE and family(key) == 6 and family(167772161) == 4
    assert ip_to_int("2001:DB8:0::1") == key and ip_to_int("2001:db8::2") != key
    assert int_to_ip(key) == "2001:db8::1"
    assert endpoint(key, 80) == "[2001:db8::1]:80" and endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert is_ipv6(np.array([key, 167772161, 0])).tolist() == [True, False, False]
    # Tuple keys built from addresses stay within int64 and exact in float64.
    assert (key << 24) < 2**63 and float(key) == key
    with pytest.raises(ValueError):
        ip_to_int("fd00::zz")


def test_networks_of_both_families():
    from tracer.analysis.addresses import Networks, ip_to_int

    nets = Networks(["10.217.0.0/16", "fd00:10:217::/48", "bogus"])
    keys = np.array([ip_to_int(a) for a in
                     ("10.217.1.2", "10.218.0.1", "fd00:10:217:120::72", "fd00:64::10", "")])
    assert nets.contains_column(keys).tolist() == [True, False, True, False, False]
    assert [nets.contains(int(k)) for k in keys] == [True, False, True, False, False]
    assert nets.unreadable == ("bogus",)


def test_ipv6_pod_cidrs_and_source_ranges():
    """externalTrafficPolicy Local short-circuits IPv6 pods (an IPv6 pod CIDR);
    loadBalancerSourceRanges admit IPv6 clients by IPv6 ranges."""
    from tracer.analysis.addresses import ip_to_int
    from tracer.analysis.denials import source_ranges
    from tracer.analysis.service import SOURCE_EXTERNAL, SOURCE_POD, parse_service

    port = {"protocol": "tcp", "port": 80, "family": "ipv6", "external_policy": "Local",
            "load_balancer_ips": ["FD00:64::100"], "pod_cidrs": ["fd00:10:217::/48"],
            "load_balancer_source_ranges": ["fd00:64::/64"],
            "endpoints": [{"ip": "fd00:10:217:120::72", "port": 80},
                          {"ip": "fd00:10:217:121::8", "port": 80}],
            "local_endpoints": [{"ip": "fd00:10:217:120::72", "port": 80}]}
    (p,) = parse_service({"name": "web", "ports": [port]})
    lb = ip_to_int("fd00:64::100")
    assert p.source_kind(ip_to_int("fd00:10:217:121::8"), False) == SOURCE_POD
    assert p.source_kind(ip_to_int("fd00:64::10"), False) == SOURCE_EXTERNAL
    assert len(p.promise_for(lb, 80, 6, ip_to_int("fd00:64::10"))) == 1
    assert len(p.promise_for(lb, 80, 6, ip_to_int("fd00:10:217:121::8"))) == 2
    (rule,) = source_ranges({"ports": [port]})
    assert "fd00:64::100" in rule.lb_ips
    assert rule.admits("fd00:64::10") and not rule.admits("fd00:65::10")
    assert not rule.admits("192.168.64.10")


def test_icmpv6_errors_are_named_as_icmpv6():
    from tracer.analysis.addresses import ip_to_int
    from tracer.analysis.icmp import error_text, icmp_name, judgement_text

    assert icmp_name(1, 4, v6=True) == "port unreachable"
    assert icmp_name(3, 3) == "port unreachable"  # ICMPv4 as before
    assert error_text(1, 4, ip_to_int("fd00:64::57")) == "icmp 1/4 port unreachable from fd00:64::57"
    doc = {"type": 1, "code": 4, "sender": "fd00:64::57", "sent_by": "node", "node": "lab-node-a"}
    assert judgement_text(doc) == ("refused by ICMPv6 1/4 (port unreachable) from fd00:64::57 "
                                   "(node lab-node-a)")
