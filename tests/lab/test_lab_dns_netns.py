"""Real dnsmasq and real DNS traffic between two network namespaces the test
makes for itself (not the lab: names trdns-*, addresses 10.199.x.x), taken
down in the fixture's finalizer whatever happens. Root."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer import netns as nsmod
from tracer.errors import LabError, UsageError
from tracer.lab import dns_traffic, dnsmasq, procs
from tracer.lab.dns_wire import HEADER

pytestmark = pytest.mark.root

POD = "udp-demo-7f8c9d6b5-k2p4z"


@dataclass(frozen=True)
class Pair:
    server_netns: str
    client_netns: str
    server_ip: str
    client_ips: tuple[str, str]
    pod_dir: Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def pair(tmp_path) -> Iterator[Pair]:
    tag = secrets.token_hex(3)
    srv, cli = f"trdns-{tag}-s", f"trdns-{tag}-c"
    net = f"10.199.{secrets.randbelow(250) + 1}"
    made = []
    try:
        for ns in (srv, cli):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # Made inside the namespaces: the veth never exists on the host.
        _ip("link", "add", "eth0", "netns", srv, "type", "veth", "peer", "name", "eth0", "netns", cli)
        _ip("-n", srv, "addr", "add", f"{net}.1/24", "dev", "eth0")
        _ip("-n", cli, "addr", "add", f"{net}.2/24", "dev", "eth0")
        _ip("-n", cli, "addr", "add", f"{net}.3/24", "dev", "eth0")
        for ns in (srv, cli):
            _ip("-n", ns, "link", "set", "eth0", "up")
        yield Pair(srv, cli, f"{net}.1", (f"{net}.2", f"{net}.3"), tmp_path / "pods" / POD)
    finally:
        inodes = {os.stat(f"/run/netns/{ns}").st_ino for ns in made}
        procs.stop(procs.running_in(inodes))
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _start(pair: Pair, port: int = 53) -> dnsmasq.Dnsmasq:
    files = dnsmasq.files(pair.pod_dir, port)
    pid = dnsmasq.start(netns=pair.server_netns, pod=POD, ip=pair.server_ip, node="node-a",
                        files=files)
    assert procs.netns_inode(pid) == os.stat(f"/run/netns/{pair.server_netns}").st_ino
    return files


def _bound_in(netns: str, address: str, port: int) -> socket.socket:
    """A UDP socket bound in netns (it stays there after the thread leaves)."""
    with nsmod.entered(nsmod.resolve(netns)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    return sock


def test_fifty_queries_each_a_new_flow_witnessed_by_the_query_log(pair):
    files = _start(pair)
    pid = dnsmasq.running(files)
    assert pid is not None and procs.comm(pid) == "dnsmasq"
    # dnsmasq dropped to nobody after binding port 53.
    assert Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2] == ["65534"] * 2
    assert oct(os.stat(files.query_log).st_mode & 0o777) == "0o600"
    source = pair.client_ips[1]
    r = dns_traffic.run_dns_traffic(
        address=pair.server_ip, port=53, source_netns=pair.client_netns, queries=50,
        concurrency=4, timeout=2.0, source_address=source, query_logs={files.query_log: POD},
    )
    assert (r.ok, r.failed, r.errors) == (50, 0, {})
    assert r.by_pod == {POD: 50}
    assert r.flows == 50
    assert r.served_by_pod == {POD: 50}
    assert r.served_by_client == {source: 50}
    assert set(r.latency_ms) == {"p50", "p90", "p99", "max", "mean"}
    assert "ok 50  failed 0  flows 50" in dns_traffic.format_result(r)


def test_every_query_a_new_flow_even_from_few_ports(pair):
    # 128 source ports for 50 queries: the kernel's random picks would share
    # ports (a shared port is the same conntrack flow); the engine asks again.
    subprocess.run(["ip", "netns", "exec", pair.client_netns, "sysctl", "-qw",
                    "net.ipv4.ip_local_port_range=40000 40127"], check=True)
    files = _start(pair)
    r = dns_traffic.run_dns_traffic(address=pair.server_ip, port=53,
                                    source_netns=pair.client_netns, queries=50, concurrency=1,
                                    query_logs={files.query_log: POD})
    assert (r.ok, r.flows, r.served_by_pod) == (50, 50, {POD: 50})


def test_stopped_server_failures_are_counted(pair):
    files = _start(pair)
    pid = dnsmasq.stop(files)
    assert pid is not None and not procs.alive(pid)
    assert dnsmasq.stop(files) is None  # nothing left to stop
    r = dns_traffic.run_dns_traffic(address=pair.server_ip, port=53,
                                    source_netns=pair.client_netns, queries=20, timeout=0.2)
    assert (r.ok, r.failed, r.by_pod) == (0, 20, {})
    # Nothing listens: an ICMP port unreachable (refused) where the kernel's
    # rate limit lets one out, silence (timeout) for the rest.
    assert sum(r.errors.values()) == 20 and set(r.errors) <= {"timeout", "refused"}
    assert r.errors.get("timeout", 0) > 0


def test_silent_server_times_out(pair):
    silent = _bound_in(pair.server_netns, pair.server_ip, 53)  # never reads, never answers
    try:
        r = dns_traffic.run_dns_traffic(address=pair.server_ip, port=53,
                                        source_netns=pair.client_netns, queries=8,
                                        concurrency=8, timeout=0.3)
    finally:
        silent.close()
    assert (r.ok, r.failed, r.errors, r.flows) == (0, 8, {"timeout": 8}, 8)


def test_wrong_answers_are_bad_answers(pair):
    liar = _bound_in(pair.server_netns, pair.server_ip, 53)
    liar.settimeout(5)

    def answer_with_wrong_id(n: int) -> None:
        with contextlib.suppress(OSError):
            for i in range(n):
                data, peer = liar.recvfrom(512)
                txid = HEADER.unpack_from(data)[0]
                reply = bytearray(data)
                reply[0:2] = ((txid + 1) & 0xFFFF).to_bytes(2, "big")
                reply[2] |= 0x80  # QR
                liar.sendto(bytes(reply) if i % 2 else bytes(reply[:7]), peer)

    t = threading.Thread(target=answer_with_wrong_id, args=(6,), daemon=True)
    t.start()
    try:
        r = dns_traffic.run_dns_traffic(address=pair.server_ip, port=53,
                                        source_netns=pair.client_netns, queries=6,
                                        concurrency=1, timeout=2.0)
    finally:
        t.join(5)
        liar.close()
    assert (r.ok, r.failed) == (0, 6)
    assert r.errors == {"bad answer: wrong id": 3, "bad answer: truncated header": 3}


def test_source_address_not_in_the_namespace_is_a_usage_error(pair):
    _start(pair)
    with pytest.raises(UsageError) as exc:
        dns_traffic.run_dns_traffic(address=pair.server_ip, port=53,
                                    source_netns=pair.client_netns, queries=3,
                                    source_address="10.199.0.254")
    assert exc.value.exit_code == 2
    assert str(exc.value) == (
        f"source address 10.199.0.254 is not an address in {pair.client_netns}"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queries": 0}, "--queries must be >= 1, got 0"),
        ({"concurrency": 0}, "--concurrency must be >= 1, got 0"),
        ({"timeout": 0}, "--timeout must be > 0, got 0"),
        ({"port": 0}, "port must be 1..65535, got 0"),
        ({"address": "10.199.1"}, "not an IP address: '10.199.1' does not appear"),
        ({"source_address": "fd00::1"}, "the source address and the target are not of one"),
        ({"source_netns": "trdns-none"}, "no network namespace 'trdns-none'"),
    ],
)
def test_bad_arguments_are_usage_errors(pair, kwargs, message):
    args = {"address": pair.server_ip, "port": 53, "source_netns": pair.client_netns,
            "queries": 1, **kwargs}
    with pytest.raises(UsageError) as exc:
        dns_traffic.run_dns_traffic(**args)
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_second_server_on_the_port_fails_in_one_line(pair):
    _start(pair)
    other = dnsmasq.files(pair.pod_dir.parent / "other-pod", 53)
    with pytest.raises(LabError) as exc:
        dnsmasq.start(netns=pair.server_netns, pod="other-pod", ip=pair.server_ip,
                      node="node-a", files=other)
    assert exc.value.exit_code == 1 and "\n" not in str(exc.value)
    assert str(exc.value).startswith("dnsmasq of other-pod (port 53) did not start: ")
    assert "Address already in use" in str(exc.value)


def test_stop_never_signals_a_process_that_is_not_this_dnsmasq(pair):
    files = _start(pair, port=5353)
    real = dnsmasq.running(files)
    # A pid file that names another process (reused number, or written by
    # dnsmasq's own user, who owns it): not signalled.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        Path(files.pid_file).write_text(f"{sleeper.pid}\n")
        assert dnsmasq.stop(files) is None
        assert sleeper.poll() is None
        assert procs.alive(real)
    finally:
        sleeper.kill()
        sleeper.wait()
