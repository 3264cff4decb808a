"""Three private network namespaces for the rule-tracing tests and bench:

    client 192.168.64.1 --veth-- 192.168.64.57 node 10.217.121.1 --veth "cali1234"-- pod 10.217.121.8, .9

The node namespace holds the Service rules and the trace table, and
forwards between client and pod; a TCP server in the pod accepts on port 80.
Names are tracer-test-rules-<pid>-<role>; nothing outside them is touched."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

from tracer import netns

VIP, VIP_PORT = "10.96.88.88", 8088
OTHER_VIP, OTHER_PORT = "10.96.88.89", 8089
POD_IP, OTHER_POD_IP, POD_PORT = "10.217.121.8", "10.217.121.9", 80
NODE_IP = "192.168.64.57"
CLIENT_IP = "192.168.64.1"
TCP = 6


def sh(*argv: str, input: str | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class Topology:
    def __init__(self, tag: str = "") -> None:
        base = f"tracer-test-rules-{os.getpid()}{tag}"
        self.client, self.node, self.pod = (f"{base}-client", f"{base}-node", f"{base}-pod")
        self._server: socket.socket | None = None

    def path(self, name: str) -> Path:
        return Path("/run/netns") / name

    def in_node(self, *argv: str, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.node, *argv, input=input)

    def up(self) -> Topology:
        for name in (self.client, self.node, self.pod):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", "trc0", "netns", self.client, "type", "veth", "peer", "name", "eth0",
           "netns", self.node)
        sh("ip", "-n", self.client, "link", "set", "trc0", "name", "eth0")
        sh("ip", "link", "add", "trp0", "netns", self.pod, "type", "veth", "peer", "name", "cali1234",
           "netns", self.node)
        sh("ip", "-n", self.pod, "link", "set", "trp0", "name", "eth0")
        for name, dev, addrs in ((self.client, "eth0", [f"{CLIENT_IP}/24"]),
                                 (self.node, "eth0", [f"{NODE_IP}/24"]),
                                 (self.node, "cali1234", ["10.217.121.1/24"]),
                                 (self.pod, "eth0", [f"{POD_IP}/24", f"{OTHER_POD_IP}/24"])):
            for addr in addrs:
                sh("ip", "-n", name, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", name, "link", "set", dev, "up")
        for net in ("10.96.0.0/12", "10.217.0.0/16"):
            sh("ip", "-n", self.client, "route", "add", net, "via", NODE_IP)
        sh("ip", "-n", self.pod, "route", "add", "default", "via", "10.217.121.1")
        self.in_node("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._serve()
        return self

    def _serve(self) -> None:
        with netns.entered(self.path(self.pod)):
            server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", POD_PORT))
        server.listen(512)
        self._server = server

        def accept_forever() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=accept_forever, daemon=True).start()

    def connect(self, addr: str, port: int, timeout: float = 1.0) -> bool:
        """One TCP connection from the client; True when it was accepted."""
        with netns.entered(self.path(self.client)):
            sock = socket.socket()
        sock.settimeout(timeout)
        try:
            sock.connect((addr, port))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
        for name in (self.client, self.node, self.pod):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)

    def __enter__(self) -> Topology:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()
