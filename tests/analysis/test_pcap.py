"""pcapng export, read back by Debian's tshark and tcpdump."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tracer.analysis.events import load_events
from tracer.analysis.packets import assemble
from tracer.analysis.pcap import export_pcapng, headers
from tracer.errors import CaptureFileError


def _run(*cmd: str) -> list[str]:
    assert shutil.which(cmd[0]), (
        f"{cmd[0]} is missing: run scripts/setup.sh (Debian package {cmd[0]})"
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.fixture(scope="module")
def exported(small, tmp_path_factory):
    packets = assemble(load_events(small.both))
    path = tmp_path_factory.mktemp("pcap") / "trace.pcapng"
    n = export_pcapng(packets, path)
    return packets, path, n


def test_tshark_and_tcpdump_read_every_packet(exported):
    packets, path, n = exported
    assert n == len(packets.events)
    assert len(_run("tshark", "-r", str(path))) == n
    lines = _run("tcpdump", "-nr", str(path))
    assert len(lines) == n
    assert any(
        "192.168.64.10." in line and "> 192.168.64.57.8088: Flags [S]" in line for line in lines
    )


def test_tshark_shows_the_comments(exported):
    packets, path, _ = exported
    field = "frame.comment"
    comments = _run("tshark", "-r", str(path), "-T", "fields", "-e", field)
    if not any(comments):  # older Wireshark releases call it pkt_comment
        comments = _run("tshark", "-r", str(path), "-T", "fields", "-e", "pkt_comment")
    assert len(comments) == len(packets.events)
    assert all("node=lab-node-" in c and "probe=" in c for c in comments)
    nat = [c for c in comments if "probe=nat" in c]
    assert nat and all("hook=" in c and "before=" in c and "nat_ns=" in c for c in nat)
    assert any("nat=dnat first" in c for c in nat)
    assert any("drop_reason=NETFILTER_DROP" in c for c in comments)


def test_one_interface_per_node_netns_ifname(exported):
    packets, path, _ = exported
    names = set(_run("tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name"))
    ev = packets.events
    expected = {
        f"{n}/{ns}/{i}"
        for n, ns, i in zip(
            ev["node"].astype(str), ev["netns"].astype(str), ev["ifname"].astype(str), strict=True
        )
    }
    assert names == expected


def test_timestamps_are_time_ns(exported):
    packets, path, _ = exported
    first = _run("tshark", "-r", str(path), "-c", "1", "-T", "fields", "-e", "frame.time_epoch")[0]
    assert abs(float(first) - packets.events["t"].min() / 1e9) < 1e-6


def test_checksums_are_correct(small, tmp_path):
    """With the payload zero-filled, tshark validates IP and TCP checksums (1 = good)."""
    path = tmp_path / "zeros.pcapng"
    export_pcapng(small.both, path, payload="zeros")
    status = _run(
        "tshark",
        "-r",
        str(path),
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-T",
        "fields",
        "-e",
        "ip.checksum.status",
        "-e",
        "tcp.checksum.status",
    )
    assert set(status) == {"1\t1"}


def test_ip_header_checksum_sums_to_zero(scenario):
    ev = load_events(scenario.both).events.head(200)
    hdr, hlen = headers(ev)
    words = hdr[:, :20].astype(np.uint32).reshape(-1, 10, 2)
    total = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    while (total > 0xFFFF).any():
        total = (total & 0xFFFF) + (total >> 16)
    assert (total == 0xFFFF).all()
    # TCP headers keep their captured length (options written as NOPs).
    assert (hlen == 20 + ev["tcp_hlen"].to_numpy()).all()


def test_tcp_checksum_covers_pseudo_header_and_options(scenario):
    ev = load_events(scenario.both).events.head(200)
    hdr, hlen = headers(ev)
    for row, n in zip(hdr, hlen, strict=True):
        ip, tcp = row[:20], row[20:n]
        seg_len = (int(ip[2]) << 8 | int(ip[3])) - 20  # payload bytes are zeros
        words = [int(tcp[i]) << 8 | int(tcp[i + 1]) for i in range(0, len(tcp), 2)]
        words += [int(ip[i]) << 8 | int(ip[i + 1]) for i in range(12, 20, 2)]
        total = sum(words) + 6 + seg_len
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
        assert total == 0xFFFF


def test_unwritable_output(scenario, tmp_path):
    with pytest.raises(CaptureFileError):
        export_pcapng(scenario.both, tmp_path / "no" / "such" / "dir" / "x.pcapng")
