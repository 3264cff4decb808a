"""The real capture program sees a real ICMP error about the Service's flow,
outside the lab: two private network namespaces joined by a veth, a REJECT
rule (--reject-with icmp-port-unreachable) in the server's, a client that
connects and is refused. The error's own tuple (server -> client, ICMP) is
not the Service's; only the packet it quotes is, so before the program
parsed the quote it recorded nothing here.

The rx, tx and drop probes are the ones the tracer chooses on this kernel
(tracepoints see every namespace); the Service is one key, the server's
address and port, written into the program's svc_keys map as the capture
would. No NAT probe: netfilter links live in the namespace that makes them,
and there is no NAT here."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tracer.btf import Btf
from tracer.capture.abi import (
    EVENT_DTYPE,
    EVENT_SIZE,
    PROBE_RX,
    ROLE_FRONTEND,
    STAT_ICMP_UNQUOTED,
    be16_as_loaded,
    be32_as_loaded,
)
from tracer.capture.backends import select_backends
from tracer.capture.counters import read_kernel_counters
from tracer.capture.features import KernelFeatures
from tracer.capture.program import ProgramSettings, load_and_attach

pytestmark = pytest.mark.root

TAG = f"icmpt{os.getpid() % 100000}"
CLIENT_NS, SERVER_NS = f"{TAG}-c", f"{TAG}-s"
# Addresses of no lab and no real network: these namespaces only.
CLIENT, SERVER, PORT = "10.199.77.1", "10.199.77.2", 8080


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def rejecting_pair() -> Iterator[None]:
    try:
        _sh("ip", "netns", "add", CLIENT_NS)
        _sh("ip", "netns", "add", SERVER_NS)
        _sh("ip", "link", "add", f"{TAG}a", "netns", CLIENT_NS, "type", "veth", "peer", "name",
            f"{TAG}b", "netns", SERVER_NS)
        for ns, dev, addr in ((CLIENT_NS, f"{TAG}a", CLIENT), (SERVER_NS, f"{TAG}b", SERVER)):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "netns", "exec", SERVER_NS, "iptables", "-A", "INPUT", "-p", "tcp", "--dport",
            str(PORT), "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
        yield
    finally:
        for ns in (CLIENT_NS, SERVER_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _connect_refused() -> int:
    """Connect from the client namespace; the client's source port."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(); s.bind(('{CLIENT}',0)); print(s.getsockname()[1], flush=True)\n"
        f"try:\n s.settimeout(5); s.connect(('{SERVER}',{PORT})); sys.exit(3)\n"
        "except ConnectionRefusedError: sys.exit(0)\n"
    )
    r = subprocess.run(["ip", "netns", "exec", CLIENT_NS, "python3", "-c", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return int(r.stdout.split()[0])


def test_real_icmp_port_unreachable_is_captured_by_its_quote(rejecting_pair):
    kf = KernelFeatures()
    btf = kf.btf or Btf.load()
    backends = select_backends(kf, ("rx", "tx", "drop"))
    prog = load_and_attach(backends, ProgramSettings(scope_netns=False), btf)
    try:
        keys = prog.table("svc_keys")
        k = keys.Key()
        k.addr, k.port, k.proto = be32_as_loaded(SERVER), be16_as_loaded(PORT), 6
        keys[k] = keys.Leaf(ROLE_FRONTEND)
        records: list[bytes] = []

        def collect(_ctx, data, size):
            records.append(ctypes.string_at(data, size))

        prog.table("events").open_ring_buffer(collect)
        sport = _connect_refused()
        time.sleep(0.5)
        # The program wakes the reader only every WAKEUP_EVERY events: consume
        # what is there instead of waiting for a wakeup.
        prog.bpf.ring_buffer_consume()  # type: ignore[attr-defined]
        counters = read_kernel_counters(prog)
    finally:
        prog.close()
    assert all(len(r) == EVENT_SIZE for r in records)
    ev = np.frombuffer(b"".join(records), dtype=EVENT_DTYPE)
    ip = lambda a: socket.inet_ntoa(int(a).to_bytes(4, "big"))  # noqa: E731
    icmp = ev[ev["proto"] == 1]
    assert len(icmp), f"no ICMP event among {len(ev)}"
    for e in icmp:
        assert (ip(e["saddr"]), ip(e["daddr"])) == (SERVER, CLIENT)
        assert (e["icmp_type"], e["icmp_code"], e["quoted_proto"]) == (3, 3, 6)
        assert (ip(e["quoted_saddr"]), int(e["quoted_sport"])) == (CLIENT, sport)
        assert (ip(e["quoted_daddr"]), int(e["quoted_dport"])) == (SERVER, PORT)
    # Received by the client's veth: before conntrack, only the quote says
    # it is the Service's.
    rx = icmp[(icmp["probe"] == PROBE_RX) & (icmp["ifname"] == f"{TAG}a".encode())]
    assert len(rx) == 1
    # The SYN it quotes was captured too (its own tuple is the Service's).
    syn = ev[(ev["proto"] == 6) & (ev["sport"] == sport) & ((ev["tcp_flags"] & 0x12) == 0x02)]
    assert len(syn) >= 1
    assert counters[STAT_ICMP_UNQUOTED] == 0
