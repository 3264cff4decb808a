"""Capturing across Calico's tunnel (lab `--encap vxlan` or `ipip`), shared by
the host test (tests/capture/test_capture_encap.py, VXLAN) and the kernel VM
guest (tests/kernel_vm/guest/encap_checks.py, IPIP: kernels built without
CONFIG_NET_IPIP have none).

`run()` captures node A and node B side by side while the client talks to the
external IP (DNATed on node A, half of it to the pod on node B through the
tunnel) and records node A's uplink with tcpdump; `check()` holds the two
captures against the witnesses: the KUBE-SEP-* counters and nginx's logs
(the DNAT choices), tshark's decoding of the tunnel packets on the wire (the
inner tuples and outer addresses the engine reported), and the path on node
B (uplink, tunnel device, pod veth); then `tracer timeline` on both captures
must join every connection's packets across the tunnel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests import tcpdump_witness
from tests.capture.lab_capture import captures, last_bindings, sep_counters, sh
from tracer.capfile import load
from tracer.lab.state import LabState
from tracer.lab.traffic import TrafficResult, run_traffic

CLIENT = "192.168.64.10"
NODE_A, NODE_B = "192.168.64.57", "192.168.64.58"
DEVICE = {"vxlan": "vxlan.calico", "ipip": "tunl0"}


@dataclass
class Run:
    state: LabState
    kind: str
    a: Path
    b: Path
    pcap: Path
    traffic: TrafficResult
    sep: Counter  # endpoint IP -> DNAT rule hits on node A during the run


def run(state: LabState, kind: str, tmp: Path, requests: int = 60, ready_timeout: float = 60) -> Run:
    """Both captures start together, so that their BCC compiles overlap; under
    qemu without KVM one compile alone can take a minute, so the VM guest
    passes a longer `ready_timeout`. They stop node B first, then node A, as
    the nested captures this replaced did (lab_capture.captures)."""
    assert state.encap == kind, f"the lab is in {state.encap} mode, not {kind}"
    sh("lab-node-a", "conntrack", "-F")
    before = sep_counters("lab-node-a")
    pcap = tmp / "node-a-eth0.pcap"
    specs = {node: (["--svc", "nginx-demo-1", "--netns", f"lab-node-{node}"], tmp / node)
             for node in ("a", "b")}
    with captures(specs, ready_timeout=ready_timeout, stop_last_first=True) as runs, \
            tcpdump_witness.recording("lab-node-a", "eth0", "not tcp port 179", pcap):
        result = run_traffic(requests=requests, concurrency=4, target="external-ip")
    a, b = runs["a"], runs["b"]
    assert a.returncode == 0 and b.returncode == 0, a.stderr_lines + b.stderr_lines
    assert result.ok == requests and result.failed == 0
    meta = load(tmp / "a").meta
    chain_ip = {e["chain"]: e["ip"] for p in meta["service"]["ports"] for e in p["endpoints"]}
    after = sep_counters("lab-node-a")
    sep = Counter({chain_ip[c]: n - before.get(c, 0) for c, n in after.items() if c in chain_ip})
    return Run(state, kind, tmp / "a", tmp / "b", pcap, result, +sep)


def _tunnel_packets(pcap: Path, kind: str) -> list[tuple]:
    """Tunnel packets on the wire as tshark decodes them: (outer src, outer
    dst, inner src, inner sport, inner dst, inner dport, inner IP ID, raw seq)."""
    tshark = shutil.which("tshark")
    assert tshark, "tshark missing: run scripts/setup.sh"
    proto = "vxlan" if kind == "vxlan" else "ip.proto == 4"
    out = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", f"{proto} and tcp", "-T", "fields", "-E", "separator=;",
         "-e", "ip.src", "-e", "ip.dst", "-e", "ip.id", "-e", "tcp.srcport", "-e", "tcp.dstport",
         "-e", "tcp.seq_raw"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        src, dst, ip_id, sport, dport, seq = line.split(";")
        (osrc, isrc), (odst, idst) = src.split(","), dst.split(",")
        inner_id = int(ip_id.split(",")[1], 16)
        rows.append((osrc, odst, isrc, int(sport), idst, int(dport), inner_id, int(seq)))
    return rows


def _engine_tunnel(ev, probe: str) -> list[tuple]:
    sel = ev[(ev.probe == probe) & (ev.ifname == "eth0") & (ev.encap != "")]
    return [(r.outer_saddr, r.outer_daddr, r.saddr, r.sport, r.daddr, r.dport, r.ip_id, r.seq)
            for r in sel.itertuples()]


def check(r: Run) -> None:
    kind, dev = r.kind, DEVICE[r.kind]
    pod_ip = {p.name: p.ip for p in r.state.pods}
    pod_b = next(p for p in r.state.pods if p.node == "node-b")
    ca, cb = load(r.a), load(r.b)
    ea, eb = ca.events, cb.events
    for cap in (ca, cb):
        assert cap.meta["complete"] and cap.meta["stats"]["lost"] == 0

    # The DNAT choices on node A, against the rule counters and nginx.
    nat = ea[ea.probe == "nat"]
    dnat = nat[(nat.nat_kind == "dnat") & nat.nat_first]
    assert Counter(dnat.nat_daddr.astype(str)) == r.sep
    final = last_bindings(dnat)
    assert Counter(final.nat_daddr.astype(str)) == Counter(
        {pod_ip[p]: n for p, n in r.traffic.served_by_pod.items()})
    to_b = final[final.nat_daddr == pod_b.ip]
    assert len(to_b) > 0, "no connection went to the pod on node B"
    # Masqueraded to node A's tunnel address: the tunnel device is the way out.
    snat = nat[(nat.nat_kind == "snat") & nat.nat_first & (nat.nat_daddr == pod_b.ip)]
    tunnel_a = {str(x) for x in snat.nat_saddr}
    assert len(tunnel_a) == 1 and tunnel_a != {NODE_A}

    # Node A's uplink: the service's packets to and from B are all in the
    # tunnel, reported with their inner tuple (to the pod on B, from A's
    # tunnel address) and the nodes as outer addresses; ct is the tunnel's: 0.
    tx_a = ea[(ea.probe == "tx") & (ea.netns == "lab-node-a") & (ea.ifname == "eth0")]
    assert set(tx_a[tx_a.daddr == pod_b.ip].encap) == {kind}
    enc = ea[ea.encap != ""]
    assert set(enc.encap) == {kind} and set(enc.ifname) == {"eth0"} and (enc.ct == 0).all()
    out_a = enc[enc.probe == "tx"]
    assert set(zip(out_a.outer_saddr, out_a.outer_daddr, strict=True)) == {(NODE_A, NODE_B)}
    assert set(out_a.daddr) == {pod_b.ip} and set(out_a.saddr) == tunnel_a
    assert set(out_a[out_a.tcp_flags == 2].sport) == {
        int(x) for x in snat[snat.nat_daddr == pod_b.ip].nat_sport}

    # Witness: tshark's decoding of the tunnel packets on node A's wire.
    wire = _tunnel_packets(r.pcap, kind)
    wire_out = [w for w in wire if w[:2] == (NODE_A, NODE_B)]
    wire_in = [w for w in wire if w[:2] == (NODE_B, NODE_A)]
    assert wire_out and wire_in
    assert Counter(_engine_tunnel(ea, "tx")) == Counter(wire_out)
    assert Counter(_engine_tunnel(ea, "rx")) == Counter(wire_in)

    # Node B: each tunnel packet arrives on its uplink (still encapsulated, the
    # same inner packets node A sent), is decapsulated on the tunnel device
    # and goes into the pod's cali* veth, on one skb.
    rx_b = eb[(eb.probe == "rx") & (eb.netns == "lab-node-b") & (eb.ifname == "eth0")]
    assert set(rx_b.encap) == {kind}
    assert Counter(_engine_tunnel(eb, "rx")) == Counter(_engine_tunnel(ea, "tx"))
    on_dev = eb[(eb.probe == "rx") & (eb.ifname == dev)]
    into_pod = eb[(eb.probe == "tx") & (eb.ifname == pod_b.veth)]
    assert set(on_dev.encap) == {""} and set(into_pod.encap) == {""}
    key = ["skb", "ip_id", "seq"]
    arrived = set(map(tuple, rx_b[key].to_numpy().tolist()))
    assert set(map(tuple, on_dev[key].to_numpy().tolist())) == arrived
    assert set(map(tuple, into_pod[key].to_numpy().tolist())) == arrived
    syn_b = rx_b[rx_b.tcp_flags == 2]
    assert len(syn_b) == len(dnat[dnat.nat_daddr == pod_b.ip])
    # Replies leave B through the tunnel to A's tunnel address.
    tx_b = eb[(eb.probe == "tx") & (eb.netns == "lab-node-b") & (eb.ifname == "eth0")]
    assert set(tx_b.encap) == {kind} and set(tx_b.daddr) == tunnel_a
    assert set(zip(tx_b.outer_saddr, tx_b.outer_daddr, strict=True)) == {(NODE_B, NODE_A)}

    _check_timeline(r, tunnel_a.pop(), pod_b)


def _timeline(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "tracer", "timeline", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _check_timeline(r: Run, tunnel_a: str, pod_b) -> None:
    """`tracer timeline` on both captures: every connection to the pod on B
    has its SYN's journey from node A's uplink into the pod, across the
    tunnel, the tunnel hops marked; replies come back the same way."""
    kind, dev = r.kind, DEVICE[r.kind]
    docs = [json.loads(x) for x in _timeline(str(r.a), str(r.b), "--json", "--limit", "0")]
    crossing = [d for d in docs if d["nodes"] == ["lab-node-a", "lab-node-b"]]
    syns = [d for d in crossing if d["hops"][0]["tcp_flags"] == "S"]
    connections_to_b = r.traffic.served_by_pod.get(pod_b.name, 0)
    assert len(syns) >= connections_to_b > 0
    expected = [
        ("lab-node-a", "rx", "eth0", None), ("lab-node-a", "nat", "eth0", None),
        ("lab-node-a", "nat", dev, None), ("lab-node-a", "tx", dev, None),
        ("lab-node-a", "tx", "eth0", kind), ("lab-node-b", "rx", "eth0", kind),
        ("lab-node-b", "rx", dev, None), ("lab-node-b", "tx", pod_b.veth, None),
        ("lab-node-b", "rx", "eth0", None),
    ]
    for d in syns:
        got = [(h["node"], h["probe"], h["ifname"], (h["encap"] or {}).get("kind")) for h in d["hops"]]
        assert got == expected, json.dumps(d, indent=1)
        assert d["outcome"].startswith(f"delivered into {pod_b.netns}")
        assert not d["ambiguous"]
        assert d["hops"][5]["from_node"] == "lab-node-a"
        assert d["hops"][4]["encap"] == {"kind": kind, "outer_src": NODE_A, "outer_dst": NODE_B}
        assert d["hops"][3]["src"].startswith(f"{tunnel_a}:")
    # Replies: from the pod on B, through the tunnel, un-NATed on A to the client.
    back = [d for d in docs if d["nodes"] == ["lab-node-b", "lab-node-a"]]
    assert len(back) >= connections_to_b
    for d in back:
        assert d["hops"][-1]["dst"].startswith(f"{CLIENT}:")
        assert [h["encap"]["kind"] for h in d["hops"] if h["encap"]] == [kind, kind]
    # The text view says which hops were in the tunnel.
    text = _timeline(str(r.a), str(r.b), "--packet", str(syns[0]["packet"]))
    marked = [line for line in text if f"in {kind} " in line]
    assert len(marked) == 2 and f"in {kind} {NODE_A} -> {NODE_B}" in marked[0]
