"""tcpdump as a witness that loses nothing, or says so.

Tests hold the tracer (and the lab) against what tcpdump saw on a device.
A witness that misses packets makes those tests fail at random, so:

- tcpdump writes a pcap file, not text to a pipe: a test reads its pipe only
  after the traffic, and once the pipe's 64 KiB are full tcpdump blocks on the
  write, the rest waits in the socket and SIGTERM loses it (CI: 27 SYNs seen
  for 29 connections; "268 packets captured, 341 received by filter" when
  reproduced with 60 requests);
- traffic starts only after tcpdump says "listening on" (its socket is bound),
  not after a fixed sleep;
- `--immediate-mode` hands packets over as they come (a TPACKET_V3 block is
  retired only every second, and what sits in one is lost at SIGINT); a ring
  slot is as big as the snapshot length, so 256 bytes (every header, outer
  IPv4 + UDP + VXLAN + Ethernet + inner IPv4 + TCP) in a 16 MiB buffer hold a
  whole burst (the default 256 KiB snapshot leaves 64 slots, and a burst of
  60 connections overflows them);
- it stops with SIGINT, and its own count must say it kept every packet the
  filter took: captured = received by filter, 0 dropped by kernel.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_COUNT = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)$", re.M)


@contextmanager
def recording(netns: str, device: str, bpf_filter: str, pcap: Path,
              snaplen: int = 256) -> Iterator[Path]:
    """tcpdump on `device` of `netns` into `pcap` for the body of the with
    block; raises AssertionError afterwards if it lost a packet."""
    dump = subprocess.Popen(
        ["ip", "netns", "exec", netns, "tcpdump", "-i", device, "-n", "--immediate-mode",
         "-s", str(snaplen), "-B", "16384", "-U", "-Z", "root", "-w", str(pcap), bpf_filter],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(dump)
        yield pcap
        time.sleep(0.5)  # the last replies reach the device
    finally:
        dump.send_signal(signal.SIGINT)
        _, err = dump.communicate(timeout=10)
    assert_kept_everything(err)


def assert_kept_everything(stderr: str) -> None:
    """tcpdump's closing counts: every packet the filter took was written."""
    counts = {what: int(n) for n, what in _COUNT.findall(stderr)}
    assert len(counts) == 3, f"tcpdump printed no closing counts: {stderr[-500:]}"
    assert counts["dropped by kernel"] == 0, stderr[-500:]
    assert counts["captured"] == counts["received by filter"], stderr[-500:]


def text(pcap: Path, *options: str) -> list[str]:
    """The recording as tcpdump prints it (`-nn` and `options`), one line each."""
    out = subprocess.run(["tcpdump", "-nn", "-r", str(pcap), *options],
                         capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _wait_listening(dump: subprocess.Popen, timeout: float = 10) -> None:
    """tcpdump says "listening on" once its socket is bound."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and dump.poll() is None:
        line = dump.stderr.readline()
        if "listening on" in line:
            return
    raise AssertionError(f"tcpdump did not start: {line}")
