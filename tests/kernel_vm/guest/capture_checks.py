"""`tracer capture` INSIDE the Debian 6.1 VM, on the lab, with the kprobe and
fentry backends, which a kernel built without CONFIG_KPROBES, or one that
refuses fentry programs, cannot run.

Started by tests/kernel_vm/test_vm_capture.py through run_in_vm (one boot, one
pytest session); the name does not match test_*.py, so the host never collects
it. The lab comes up inside the VM (its own kernel and namespaces: no clash
with the host's lab).

Compiling is what costs time under TCG, so the captures run side by side on
one run of traffic, each its own process as a user would run it:
  auto        what the tracer picks on 6.1 (BTF tracepoints for rx, tx and
              drop; fentry for nat: no netfilter links before 6.4)
  kprobe      --backend kprobe (rx and nat)
  fentry      --backend fentry (rx and nat)
  reference   --backend raw_tracepoint: rx, tx and drop on untyped raw
              tracepoints (their fields read with bpf_probe_read_kernel),
              against which the other rx backends are compared
Each is checked against the same witnesses as on the host
(tests/capture/test_capture_lab.py): KUBE-SEP-* counters, nginx logs,
conntrack. Facts and timings go to $TRACER_VM_REPORT_DIR/report.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.capture.lab_capture import (
    TRACER,
    bpf_objects,
    capture,
    captures,
    client_connections,
    conntrack_entries,
    in_conntrack,
    last_bindings,
    sep_counters,
    sh,
    wait_until,
)
from tests.kernel_vm.guest.vm_report import in_the_vm, record  # noqa: F401 (session fixture)
from tracer.capfile import load
from tracer.lab.traffic import run_traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

CLIENT = "192.168.64.10"
NODE_A = "192.168.64.57"
REQUESTS = 60

RUNS: dict[str, list[str]] = {
    "auto": [],
    "kprobe": ["--backend", "kprobe"],
    "fentry": ["--backend", "fentry"],
    "reference": ["--backend", "raw_tracepoint"],
}
EXPECTED_BACKENDS = {
    "auto": {"rx": "tp_btf", "nat": "fentry", "tx": "tp_btf", "drop": "tp_btf"},
    "kprobe": {"rx": "kprobe", "nat": "kprobe", "tx": "tp_btf", "drop": "tp_btf"},
    "fentry": {"rx": "fentry", "nat": "fentry", "tx": "tp_btf", "drop": "tp_btf"},
    "reference": {"rx": "raw_tracepoint", "nat": "fentry", "tx": "raw_tracepoint",
                  "drop": "raw_tracepoint"},
}
RX_PAIR = "__netif_receive_skb_one_core + __netif_receive_skb_list_core"
# Programs the kernel shows for each capture (bpftool prog names, <= 15 chars).
LIST_PROGRAMS = {"kprobe": "trc_rx_list_kp", "fentry": "trc_rx_list_fe"}

# -- the list receive path ---------------------------------------------------
# veth hands packets to its peer through netif_rx() (one skb at a time) unless
# the receiving veth has NAPI, which GRO turns on (5.13+, commit d3256efd8e8b);
# then they arrive in lists (napi_gro_receive -> gro_normal_list ->
# __netif_receive_skb_list_core). veth only uses NAPI for a packet whose
# sending device has TSO off or that qualifies for GRO (veth_xmit,
# veth_skb_is_eligible_for_gro). So: GRO on node A's uplink, TSO off on the
# router's port facing it, and client -> node A packets take the list path
# while everything else takes the one-skb path.
ETHTOOL_C = r"""
import ctypes, fcntl, socket, struct, sys
SIOCETHTOOL = 0x8946
ifname, cmd, value = sys.argv[1].encode(), int(sys.argv[2], 0), int(sys.argv[3])
data = ctypes.create_string_buffer(struct.pack("<II", cmd, value))
ifreq = struct.pack("16sP", ifname, ctypes.addressof(data))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
"""
ETHTOOL_STSO, ETHTOOL_SGRO = 0x1F, 0x2C  # include/uapi/linux/ethtool.h


def ethtool(netns: str, ifname: str, cmd: int, value: int) -> None:
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", ETHTOOL_C, ifname, hex(cmd),
                    str(value)], check=True, capture_output=True, text=True)


def bpf_prog_runs() -> dict[str, int]:
    """Run count per BPF program name (kernel.bpf_stats_enabled must be 1)."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True, text=True).stdout or "[]")
    runs: Counter[str] = Counter()
    for p in progs:
        runs[p.get("name", "")] += int(p.get("run_cnt", 0))
    return dict(runs)


def tracing_links() -> set[int]:
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], check=True,
                                      capture_output=True, text=True).stdout or "[]")
    # Debian's bpftool 7.1 prints the type by name; numbers for newer types.
    return {link["id"] for link in links if link.get("type") in ("tracing", 2)}


# -- doctor ------------------------------------------------------------------
def test_doctor_reports_kprobes_and_fentry_and_no_netfilter_links():
    t0 = time.monotonic()
    proc = subprocess.run([*TRACER, "doctor", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    record(doctor=report, doctor_seconds=round(time.monotonic() - t0, 1))
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["kprobes"]["ok"] and checks["fentry"]["ok"]
    assert not checks["netfilter links"]["ok"]  # BPF_PROG_TYPE_NETFILTER is 6.4+
    assert report["can_capture"] is True
    assert report["chosen"] == EXPECTED_BACKENDS["auto"]
    available = {p: {r["backend"] for r in rows if r["available"]} for p, rows in report["backends"].items()}
    assert {"tp_btf", "fentry", "kprobe", "raw_tracepoint", "tracepoint"} <= available["rx"]
    assert available["nat"] == {"fentry", "kprobe"}


# -- one run of traffic, four captures -----------------------------------------
@pytest.fixture(scope="module")
def run(lab, tmp_path_factory) -> dict:
    """Bring up the lab, switch node A's uplink to the list receive path,
    start the four captures, send REQUESTS external-IP requests through node
    A, stop the captures; return what the witnesses and the kernel said."""
    from tracer.lab import controller

    state = controller.up().state
    tmp = tmp_path_factory.mktemp("captures")
    ethtool("lab-tor", "lan-node-a", ETHTOOL_STSO, 0)
    ethtool("lab-node-a", "eth0", ETHTOOL_SGRO, 1)
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    sh("lab-node-a", "conntrack", "-F")
    progs0, links0 = bpf_objects()
    before = sep_counters("lab-node-a")
    out: dict = {"state": state, "dirs": {name: tmp / name for name in RUNS}}
    t0 = time.monotonic()
    specs = {name: (["--svc", "nginx-demo-1", "--netns", "lab-node-a", *args], tmp / name)
             for name, args in RUNS.items()}
    with captures(specs, ready_timeout=600) as runs:
        out["all_ready_s"] = round(time.monotonic() - t0, 1)
        progs1, links1 = bpf_objects()
        out["new_progs"] = len(progs1 - progs0)
        out["new_tracing_links"] = len(tracing_links() & (links1 - links0))
        runs0 = bpf_prog_runs()
        window_start = time.monotonic_ns()
        out["traffic"] = run_traffic(requests=REQUESTS, concurrency=4, target="external-ip")
        time.sleep(1.0)
        window_end = time.monotonic_ns()
        runs1 = bpf_prog_runs()
        out["list_runs"] = {k: runs1.get(p, 0) - runs0.get(p, 0) for k, p in LIST_PROGRAMS.items()}
        out["one_runs"] = {k: runs1.get(p, 0) - runs0.get(p, 0)
                           for k, p in (("kprobe", "trc_rx_kprobe"), ("fentry", "trc_rx_fentry"))}
        t_stop = time.monotonic()
    out["stop_s"] = round(time.monotonic() - t_stop, 1)
    out["runs"] = runs
    out["window"] = (window_start, window_end)
    out["sep"] = {k: v - before.get(k, 0) for k, v in sep_counters("lab-node-a").items()
                  if v - before.get(k, 0)}
    out["conntrack"] = conntrack_entries("lab-node-a", 8088)
    out["left_behind"] = wait_until(lambda: bpf_objects()[0] <= progs0 and bpf_objects()[1] <= links0,
                                    timeout=30)
    out["captures"] = {name: load(d) for name, d in out["dirs"].items()}
    record(
        captures_ready_s=out["all_ready_s"],
        captures_stop_s=out["stop_s"],
        new_progs=out["new_progs"],
        new_tracing_links=out["new_tracing_links"],
        list_path_runs=out["list_runs"],
        one_skb_path_runs=out["one_runs"],
        traffic={"ok": out["traffic"].ok, "connections": out["traffic"].connections,
                 "served_by_pod": out["traffic"].served_by_pod},
        kube_sep=out["sep"],
        per_capture={
            name: {
                "backends": cap.meta["backends"],
                "targets": cap.meta["backend_targets"],
                "startup": cap.meta["startup"],
                "events": len(cap.events),
                "by_probe": cap.events.probe.astype(str).value_counts().to_dict(),
                "stats": cap.meta["stats"],
            }
            for name, cap in out["captures"].items()
        },
    )
    return out


def _endpoint_of_chain(meta: dict) -> dict[str, str]:
    return {ep["chain"]: ep["ip"] for port in meta["service"]["ports"] for ep in port["endpoints"]}


def _in_window(ev, window):
    return ev[(ev.ts_ns >= window[0]) & (ev.ts_ns <= window[1])]


def _rx_packets(ev) -> Counter:
    rx = ev[ev.probe == "rx"]
    return Counter(zip(rx.netns.astype(str), rx.ifname.astype(str), rx.saddr.astype(str),
                       rx.daddr.astype(str), rx.sport, rx.dport, rx.ip_id, rx.seq, rx.tcp_flags, rx.len,
                       strict=True))


def _nat_rewrites(ev) -> Counter:
    nat = ev[ev.probe == "nat"]
    return Counter(zip(nat.hook.astype(str), nat.nat_kind.astype(str), nat.nat_first,
                       nat.saddr.astype(str), nat.sport, nat.daddr.astype(str), nat.dport,
                       nat.nat_saddr.astype(str), nat.nat_sport, nat.nat_daddr.astype(str), nat.nat_dport,
                       strict=True))


def test_every_capture_ran_cleanly_with_its_backends(run):
    for name, cap in run["captures"].items():
        r = run["runs"][name]
        assert r.returncode == 0, (name, r.stderr_lines[-5:])
        assert cap.meta["complete"], name
        assert cap.meta["backends"] == EXPECTED_BACKENDS[name], name
        st = cap.meta["stats"]
        assert st["lost"] == 0, (name, st)
        assert st["events_kernel"] == st["events_read"] == st["events"] == len(cap.events), (name, st)
        assert st["nat_unpaired"] == 0, (name, st)
    targets = {name: cap.meta["backend_targets"] for name, cap in run["captures"].items()}
    for name in ("auto", "fentry", "reference"):
        assert targets[name]["nat"] == "nf_nat_inet_fn [nf_nat]", targets
    assert targets["kprobe"]["nat"] == "nf_nat_inet_fn"
    for name in ("kprobe", "fentry"):
        assert targets[name]["rx"] == RX_PAIR, targets
    assert targets["auto"]["rx"] == targets["reference"]["rx"] == "netif_receive_skb", targets


@pytest.mark.parametrize("name", ["auto", "kprobe", "fentry"])
def test_dnat_and_masquerade_agree_with_every_witness(run, name):
    cap = run["captures"][name]
    traffic, pods = run["traffic"], {p.name: p.ip for p in run["state"].pods}
    assert traffic.ok == REQUESTS and traffic.failed == 0
    ev = cap.events
    nat = ev[ev.probe == "nat"]
    dnat = nat[(nat.nat_kind == "dnat") & nat.nat_first]
    snat = nat[(nat.nat_kind == "snat") & nat.nat_first]
    # One DNAT choice per NAT binding: client -> external IP:8088 becomes
    # pod:80 (a connection may get a second binding when MASQUERADE
    # --random-fully picks a port a pod still holds in TIME_WAIT; see
    # tests/capture/test_capture_lab.py).
    assert client_connections(dnat) == traffic.connections == REQUESTS
    assert len(snat) == len(dnat)
    assert set(dnat.saddr.astype(str)) == {CLIENT} and set(dnat.daddr.astype(str)) == {NODE_A}
    assert set(dnat.dport) == {8088} and set(dnat.nat_dport) == {80}
    assert set(dnat.nat_daddr.astype(str)) <= set(pods.values())
    assert set(dnat.hook.astype(str)) == {"prerouting"}
    # MASQUERADE: the pod sees node A.
    assert set(snat.nat_saddr.astype(str)) == {NODE_A} and set(snat.hook.astype(str)) == {"postrouting"}
    rev_snat, rev_dnat = nat[nat.nat_kind == "rev_snat"], nat[nat.nat_kind == "rev_dnat"]
    assert len(rev_snat) > 0 and set(rev_snat.nat_daddr.astype(str)) == {CLIENT}
    assert set(rev_dnat.nat_saddr.astype(str)) == {NODE_A} and set(rev_dnat.nat_sport) == {8088}
    # Witness 1: KUBE-SEP-* DNAT rule counters, per endpoint (every binding).
    chain_ip = _endpoint_of_chain(cap.meta)
    assert Counter(dnat.nat_daddr.astype(str)) == Counter({chain_ip[c]: n for c, n in run["sep"].items()})
    # Witness 2: nginx access logs: the binding that carried each request is
    # its connection's last one.
    final = last_bindings(dnat)
    assert Counter(final.nat_daddr.astype(str)) == Counter(
        {pods[p]: n for p, n in traffic.served_by_pod.items()})
    # Witness 3: conntrack's original and reply tuples, per connection.
    last_snat = snat.sort_values("ts_ns").groupby("ct", observed=True).tail(1)
    masq = dict(zip(last_snat.ct, zip(last_snat.nat_saddr.astype(str), last_snat.nat_sport, strict=True),
                    strict=True))
    captured = set()
    for row in in_conntrack(final).itertuples():
        node_ip, masq_port = masq[row.ct]
        captured.add(((str(row.saddr), row.sport, str(row.daddr), row.dport),
                      (str(row.nat_daddr), row.nat_dport, node_ip, masq_port)))
    assert captured == run["conntrack"]


@pytest.mark.parametrize("name", ["auto", "kprobe", "fentry"])
def test_rx_by_function_sees_exactly_what_the_tracepoint_sees(run, name):
    """Every packet the raw tracepoint netif_receive_skb saw, the hooked
    functions saw, once, and nothing else, on the one-skb path (veth without
    NAPI, bridge) and on the list path (node A's uplink with GRO). auto is
    the same tracepoint typed by BTF (tp_btf), its fields read with plain
    loads: the same packets with the same fields."""
    ref = _rx_packets(_in_window(run["captures"]["reference"].events, run["window"]))
    got = _rx_packets(_in_window(run["captures"][name].events, run["window"]))
    assert sum(ref.values()) > 4 * REQUESTS
    missing, extra = ref - got, got - ref
    assert not missing and not extra, (sum(missing.values()), sum(extra.values()), list(missing)[:3])
    # Both paths were really taken, by packets of the service in scope.
    uplink = sum(n for k, n in got.items() if k[0] == "lab-node-a" and k[1] == "eth0")
    record(**{f"rx_compared_{name}": {"tracepoint": sum(ref.values()), "functions": sum(got.values()),
                                      "node_a_uplink_list_path": uplink}})
    assert uplink >= 3 * REQUESTS
    if name != "auto":
        assert run["list_runs"][name] > 0 and run["one_runs"][name] > 0


def test_kprobe_and_fentry_record_the_same_nat_rewrites(run):
    window = run["window"]
    by_name = {name: _nat_rewrites(_in_window(run["captures"][name].events, window))
               for name in ("auto", "kprobe", "fentry", "reference")}
    assert by_name["kprobe"] == by_name["fentry"] == by_name["auto"] == by_name["reference"]


def test_nothing_of_the_tracer_stays_in_the_kernel(run):
    # While they ran: kprobe and fentry 6 programs each (rx 2, nat 2, tx,
    # drop), auto and the reference 5 (rx 1); fentry/fexit links: 2 for
    # auto's nat, 4 for fentry, 2 for the reference's nat (tp_btf links are
    # raw tracepoint links).
    assert run["new_progs"] == 22
    assert run["new_tracing_links"] == 8
    assert run["left_behind"], "BPF programs or links of the tracer outlived it"


def test_a_sigkilled_fentry_capture_leaves_nothing(lab, tmp_path):
    """The kernel drops fentry links and programs loaded outside BCC with the
    process: they are file descriptors."""
    progs0, links0 = bpf_objects()
    with capture(["--svc", "nginx-demo-1", "--netns", "lab-node-a", "--backend", "fentry",
                  "--probes", "nat"], tmp_path / "k", ready_timeout=600, stop_signal=9):
        progs1, links1 = bpf_objects()
        assert len(progs1 - progs0) == 2 and len(tracing_links() & (links1 - links0)) == 2
    assert wait_until(lambda: bpf_objects()[0] <= progs0 and bpf_objects()[1] <= links0, timeout=30)
