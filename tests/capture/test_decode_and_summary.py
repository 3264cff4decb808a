"""Decoding raw struct tracer_event arrays into capture columns, and the
running summary over them: pure, with events built as the kernel would."""

from __future__ import annotations

import socket

import numpy as np

from tracer.capfile import SCHEMA
from tracer.capture.abi import EVENT_DTYPE, RECORD_DTYPE
from tracer.capture.decode import EventDecoder
from tracer.capture.summary import CaptureSummary, render_summary


def _be32(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "big")


def make_events() -> np.ndarray:
    ev = np.zeros(5, EVENT_DTYPE)
    ev["ts_ns"] = [100, 200, 300, 400, 500]
    ev["probe"] = [1, 3, 3, 2, 4]  # rx, nat, nat, tx, drop
    ev["hook"] = [255, 0, 4, 255, 255]
    ev["saddr"] = [_be32("192.168.64.10")] * 3 + [_be32("192.168.64.57")] * 2
    ev["daddr"] = [_be32("192.168.64.57")] * 2 + [_be32("10.217.121.8")] * 3
    ev["sport"] = 43210
    ev["dport"] = [8088, 8088, 80, 80, 80]
    ev["nat_saddr"] = [0, _be32("192.168.64.10"), _be32("192.168.64.57"), 0, 0]
    ev["nat_daddr"] = [0, _be32("10.217.121.8"), _be32("10.217.121.8"), 0, 0]
    ev["nat_sport"] = [0, 43210, 61000, 0, 0]
    ev["nat_dport"] = [0, 80, 80, 0, 0]
    ev["nat_kind"] = [0, 1, 2, 0, 0]
    ev["nat_first"] = [0, 1, 1, 0, 0]
    ev["nat_ns"] = [0, 15000, 900, 0, 0]
    ev["ifname"] = [b"eth0", b"eth0", b"eth0", b"eth0", b"cali1bc655db699"]
    ev["netns_ino"] = [11, 11, 11, 11, 12]
    ev["drop_reason"] = [0, 0, 0, 0, 3]
    ev["tcp_flags"] = 2
    ev["seq"] = 0x01020304
    return ev


def test_decode_columns():
    dec = EventDecoder("lab-node-a", 1_000, {11: "lab-node-a"}, {3: "NO_SOCKET"})
    t = dec.to_table(make_events())
    assert t.schema == SCHEMA
    df = t.to_pandas()
    assert list(df["probe"]) == ["rx", "nat", "nat", "tx", "drop"]
    assert list(df["hook"]) == ["", "prerouting", "postrouting", "", ""]
    assert list(df["nat_kind"]) == ["", "dnat", "snat", "", ""]
    assert df.loc[1, "nat_daddr"] == "10.217.121.8" and df.loc[0, "nat_daddr"] == ""
    assert df.loc[0, "saddr"] == "192.168.64.10" and df.loc[0, "dport"] == 8088
    assert df.loc[0, "seq"] == 0x01020304
    assert list(df["netns"]) == ["lab-node-a"] * 4 + [""]
    assert df.loc[4, "drop_reason"] == "NO_SOCKET" and df.loc[0, "drop_reason"] == ""
    assert df.loc[4, "ifname"] == "cali1bc655db699"
    assert df.loc[0, "time_ns"] == 1_100


def test_decode_tunnel_columns():
    """A VXLAN packet on node A's uplink: the tuple is the inner packet's,
    encap and the outer (node) addresses come in their own columns; events
    in no tunnel have '' there, whatever the kernel left in the fields."""
    ev = make_events()
    ev["encap"] = [0, 0, 0, 1, 2]
    ev["outer_saddr"] = [_be32("1.2.3.4"), 0, 0, _be32("192.168.64.57"), _be32("192.168.64.57")]
    ev["outer_daddr"] = [0, 0, 0, _be32("192.168.64.58"), _be32("192.168.64.58")]
    df = EventDecoder("lab-node-a", 0, {11: "lab-node-a", 12: "lab-pod"}).to_table(ev).to_pandas()
    assert list(df["encap"]) == ["", "", "", "vxlan", "ipip"]
    assert list(df["outer_saddr"]) == ["", "", "", "192.168.64.57", "192.168.64.57"]
    assert list(df["outer_daddr"]) == ["", "", "", "192.168.64.58", "192.168.64.58"]
    assert df.loc[3, "daddr"] == "10.217.121.8" and df.loc[3, "dport"] == 80


def test_record_dtype_views_ring_memory():
    rec = np.zeros(2, RECORD_DTYPE)
    rec["hdr_len"] = 104
    rec["ev"] = make_events()[:2]
    raw = rec.tobytes()
    back = np.frombuffer(raw, RECORD_DTYPE)
    assert (back["ev"]["ts_ns"] == [100, 200]).all()


def test_summary_counts_dnat_choices_not_packets():
    t = EventDecoder("n", 0).to_table(make_events())
    s = CaptureSummary(service={"ports": [{"endpoints": [
        {"ip": "10.217.120.72", "port": 80, "share": 0.5, "chain": "KUBE-SEP-A"},
        {"ip": "10.217.121.8", "port": 80, "share": 0.5, "chain": "KUBE-SEP-B"}]}]})
    s.add(t)
    s.add(t.slice(1, 1))  # a second DNAT first packet
    d = s.to_dict()
    assert d["new_connections"] == {"10.217.121.8:80": 2}
    assert d["nat_by_kind"] == {"dnat": 2, "snat": 1}
    text = render_summary(s, title="t", stats={"lost": 0})
    assert "KUBE-SEP-A" in text and "lost events: 0" in text
    assert "rules promise 50.0%" in text
    lost = render_summary(s, title="t", stats={"lost": 7, "lost_by_probe": {"rx": 7}})
    assert "lost events: 7" in lost and "ring buffer was full" in lost


def test_status_line_in_place_on_a_terminal_sparse_in_a_log():
    from tracer.capture.live import StatusLine

    out: list[tuple[str, bool]] = []
    tty = StatusLine(lambda t, nl: out.append((t, nl)), is_tty=True)
    tty.status("a")
    tty.notice("changed")
    assert out == [("\ra\033[K", False), ("", True), ("changed", True)]
    out.clear()
    log = StatusLine(lambda t, nl: out.append((t, nl)), is_tty=False, every=3)
    for i in range(7):
        log.status(str(i))
    log.end_line()
    assert out == [("2", True), ("5", True)]


def test_values_sharing_a_name_share_one_dictionary_entry():
    ev = make_events()
    ev["netns_ino"] = [11, 12, 13, 11, 14]  # none named: all ''
    df = EventDecoder("n", 0).to_table(ev).to_pandas()
    assert list(df["netns"].astype(str)) == [""] * 5
    assert list(df["netns_ino"]) == [11, 12, 13, 11, 14]


def test_an_unmeasured_nat_time_is_shown_as_such_and_left_out_of_the_latency():
    """nat_ns 0: the exit probe found no entry (bpf/nat.bpf.h); the rewrite
    is shown, its time is not, and the summary's latency leaves it out."""
    from tracer.capture.live import format_events

    ev = make_events()
    ev["nat_ns"] = [0, 0, 900, 0, 0]  # the DNAT's time was not measured
    t = EventDecoder("n", 0).to_table(ev)
    lines = format_events(t)
    assert lines[1].endswith("[time not measured first]") and lines[2].endswith("[0.9us first]")
    s = CaptureSummary()
    s.add(t)
    latency = {(r["hook"], r["first"]): r["count"] for r in s.to_dict()["nat_latency_ns"]}
    assert latency == {("postrouting", True): 1}
    assert s.to_dict()["nat_by_kind"] == {"dnat": 1, "snat": 1}
    text = render_summary(s, title="t", stats={"lost": 0, "nat_untimed": 1})
    assert "NAT hook time not measured: 1 packet(s)" in text
    assert "not measured" not in render_summary(s, title="t", stats={"lost": 0, "nat_untimed": 0})


def test_decode_icmp_error_columns():
    """An ICMP 3/3 on the client's side, as the kernel writes it: the
    quoted tuple in network order (ports too) comes out as the capture's
    quoted_* columns; events with no quote read '' and 0."""
    ev = make_events()
    ev["proto"][3] = 1
    ev["icmp_type"][3], ev["icmp_code"][3], ev["quoted_proto"][3] = 3, 3, 6
    ev["quoted_saddr"][3] = _be32("192.168.64.10")
    ev["quoted_daddr"][3] = _be32("10.96.0.10")
    ev["quoted_sport"][3], ev["quoted_dport"][3] = 40000, 80
    ev["quoted_saddr"][4] = _be32("1.2.3.4")  # left by the kernel, but no quote: not shown
    # The raw bytes as the C struct holds them: big-endian address and ports.
    raw = ev[3:4].tobytes()
    assert raw[112:116] == socket.inet_aton("192.168.64.10") and raw[120:122] == (40000).to_bytes(2, "big")
    df = EventDecoder("lab-node-a", 0).to_table(ev).to_pandas()
    assert list(df["quoted_saddr"]) == ["", "", "", "192.168.64.10", ""]
    assert list(df["quoted_daddr"]) == ["", "", "", "10.96.0.10", ""]
    assert (df.loc[3, "icmp_type"], df.loc[3, "icmp_code"], df.loc[3, "quoted_proto"]) == (3, 3, 6)
    assert (df.loc[3, "quoted_sport"], df.loc[3, "quoted_dport"]) == (40000, 80)
    assert list(df["icmp_type"]) == [0, 0, 0, 3, 0]
