"""Root tests: ClientIP session affinity as rendered loads into a private node
namespace (iptables-restore on both backends, nft -f), reads back from the
kernel (iptables-save, nft list / nft -j list) with its timeout, and holds
with real connections: several client addresses, three pods, each client's
repeated connections all reach one pod; without affinity they do not. The
kernel's own record is the witness: /proc/net/xt_recent/KUBE-SEP-* and the
affinity- sets hold exactly the clients each pod served.

Namespaces "tracer-test-aff-<pid>-{client,node,pod}", all deleted after; the
namespace the tests run in is never modified."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracer import netns
from tracer.kube import naming
from tracer.kube.iptables_parse import parse_iptables_nat_rules
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint, Service, ServicePort, SessionAffinity
from tracer.kube.nftables_parse import parse_kube_proxy_table, read_nft
from tracer.kube.nftables_render import render_kube_proxy_table

pytestmark = pytest.mark.root

VIP, VIP_PORT, POD_PORT = "10.96.88.88", 8088, 80
NODE_IP, NODE_POD_SIDE = "192.168.64.57", "10.217.121.1"
CLIENTS = [f"192.168.64.{11 + i}" for i in range(6)]
PODS = ["10.217.121.11", "10.217.121.12", "10.217.121.13"]
CONNECTIONS_PER_CLIENT = 6
MODES = {  # mode -> (load program, read-back command)
    "iptables-nft": (["iptables-restore", "--noflush"], ["iptables-save", "-t", "nat"]),
    "iptables-legacy": (["iptables-legacy-restore", "--noflush"],
                        ["iptables-legacy-save", "-t", "nat"]),
    "nftables": (["nft", "-f", "-"], ["nft", "list", "ruleset"]),
}


def sh(*argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr.strip()}"
    return proc.stdout


def service(affinity: SessionAffinity | None) -> Service:
    return Service(namespace="default", name="sticky", type="ClusterIP", cluster_ip=VIP,
                   external_ips=(), ports=(ServicePort("", "TCP", VIP_PORT, POD_PORT),),
                   selector=(("app", "sticky"),), session_affinity=affinity)


def rules(mode: str, svc: Service) -> str:
    endpoints = {svc.key: [Endpoint(ip, POD_PORT, node="node-a") for ip in PODS]}
    if mode == "nftables":
        return render_kube_proxy_table([svc], endpoints, node_ips=[NODE_IP], node_name="node-a")
    return render_nat_table([svc], endpoints, node_ips=[NODE_IP], node_name="node-a")


class Cluster:
    """client (the CLIENTS addresses) -- node (kube-proxy's rules) -- pod (PODS, a
    TCP server on each that answers with the address it was reached at)."""

    def __init__(self) -> None:
        base = f"tracer-test-aff-{os.getpid()}"
        self.client, self.node, self.pod = (f"{base}-client", f"{base}-node", f"{base}-pod")
        self.servers: list[socket.socket] = []

    def up(self) -> Cluster:
        for name in (self.client, self.node, self.pod):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", "tac0", "netns", self.client, "type", "veth", "peer", "name",
           "eth0", "netns", self.node)
        sh("ip", "-n", self.client, "link", "set", "tac0", "name", "eth0")
        sh("ip", "link", "add", "tap0", "netns", self.pod, "type", "veth", "peer", "name",
           "cali5678", "netns", self.node)
        sh("ip", "-n", self.pod, "link", "set", "tap0", "name", "eth0")
        for name, dev, addrs in ((self.client, "eth0", CLIENTS), (self.node, "eth0", [NODE_IP]),
                                 (self.node, "cali5678", [NODE_POD_SIDE]),
                                 (self.pod, "eth0", PODS)):
            for addr in addrs:
                sh("ip", "-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", name, "link", "set", dev, "up")
        sh("ip", "-n", self.client, "route", "add", "10.96.0.0/12", "via", NODE_IP)
        sh("ip", "-n", self.pod, "route", "add", "default", "via", NODE_POD_SIDE)
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for ip in PODS:
            self._serve(ip)
        return self

    def _serve(self, ip: str) -> None:
        with netns.entered(Path("/run/netns") / self.pod):
            server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((ip, POD_PORT))
        server.listen(64)
        self.servers.append(server)

        def answer() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(ip.encode())

        threading.Thread(target=answer, daemon=True).start()

    def ask(self, source: str) -> str:
        """One new connection from source to the Service: the pod that answered."""
        with netns.entered(Path("/run/netns") / self.client):
            sock = socket.socket()
        with sock:
            sock.settimeout(3)
            sock.bind((source, 0))
            sock.connect((VIP, VIP_PORT))
            return sock.recv(64).decode()

    def down(self) -> None:
        for server in self.servers:
            server.close()
        for name in (self.client, self.node, self.pod):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it builds private network namespaces")
    made = Cluster()
    try:
        yield made.up()
    finally:
        made.down()


def served(cluster: Cluster) -> dict[str, list[str]]:
    """client -> the pods its connections reached, in order."""
    return {c: [cluster.ask(c) for _ in range(CONNECTIONS_PER_CLIENT)] for c in CLIENTS}


def recorded(cluster: Cluster, mode: str, svc: Service) -> dict[str, set[str]]:
    """pod -> the clients the kernel's affinity record holds for it."""
    out = {}
    for pod in PODS:
        if mode == "nftables":
            name = naming.nft_affinity_set(svc.namespace, svc.name, "tcp", "", pod, POD_PORT)
            table = read_nft(sh("ip", "netns", "exec", cluster.node, "nft", "-j", "list", "table",
                                "ip", "kube-proxy"))
            out[pod] = {e.key[0] for e in table.elements[name]}
        else:
            chain = naming.endpoint_chain("default/sticky", "tcp", f"{pod}:{POD_PORT}")
            listing = sh("ip", "netns", "exec", cluster.node, "cat", f"/proc/net/xt_recent/{chain}")
            out[pod] = {line.split()[0].removeprefix("src=") for line in listing.splitlines()}
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_affinity_loads_reads_back_and_sticks(cluster: Cluster, mode: str) -> None:
    svc = service(SessionAffinity(600))
    load, read_back = MODES[mode]
    text = rules(mode, svc)
    sh("ip", "netns", "exec", cluster.node, *load, stdin=text)
    parse = parse_kube_proxy_table if mode == "nftables" else parse_iptables_nat_rules
    kernel = sh("ip", "netns", "exec", cluster.node, *read_back)
    (resolved,) = parse(kernel)
    assert resolved.ports[0].session_affinity == SessionAffinity(600)
    assert [e.ip for e in resolved.ports[0].endpoints] == PODS
    if mode == "nftables":
        json_form = sh("ip", "netns", "exec", cluster.node, "nft", "-j", "list", "table", "ip",
                       "kube-proxy")
        assert parse_kube_proxy_table(json_form)[0].ports[0].session_affinity == SessionAffinity(600)
    else:
        assert "--rcheck --seconds 600 --reap" in kernel  # iptables-save's own order

    reached = served(cluster)
    assert all(len(set(pods)) == 1 for pods in reached.values()), reached
    # The kernel's record agrees: each pod's list holds exactly its clients.
    record = recorded(cluster, mode, svc)
    assert record == {pod: {c for c, p in reached.items() if p[0] == pod} for pod in PODS}


@pytest.mark.parametrize("mode", ["iptables-nft", "nftables"])
def test_without_affinity_clients_move(cluster: Cluster, mode: str) -> None:
    """The control: the same traffic without affinity spreads each client's
    connections (all 6 clients pinned by chance: (1/3)^30)."""
    sh("ip", "netns", "exec", cluster.node, *MODES[mode][0], stdin=rules(mode, service(None)))
    reached = served(cluster)
    assert any(len(set(pods)) > 1 for pods in reached.values()), reached
    assert {p for pods in reached.values() for p in pods} <= set(PODS)
