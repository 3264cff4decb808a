"""A throwaway three-namespace NAT path inside the VM, and traffic through it.

    client (10.250.1.2) --veth-- node (10.250.1.1 | 10.250.2.1) --veth-- pod (10.250.2.2)

The node DNATs a kube-proxy-style service address 10.96.0.10:80 to the pod's
nginx on 10.250.2.2:8080 (KUBE-SVC-style chain with `statistic` and `comment`
matches, through iptables-nft) and MASQUERADEs towards the pod, so every new
connection passes nf_nat_inet_fn in PRE_ROUTING and POST_ROUTING of the node
namespace. Everything lives in namespaces created here, inside the VM;
nothing is sent anywhere else.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLIENT, NODE, POD = "tvm-client", "tvm-node", "tvm-pod"
SERVICE_IP, POD_IP, POD_PORT = "10.96.0.10", "10.250.2.2", 8080

NGINX_CONF = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {ip}:{port};
        location / {{ return 200 "pod\\n"; }}
    }}
}}
"""


def sh(cmd: str, netns: str | None = None) -> str:
    argv = ["bash", "-euo", "pipefail", "-c", cmd]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} in {netns or 'root netns'}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class NatLab:
    workdir: Path
    node_netns_inode: int

    def curl_service(self, times: int) -> list[str]:
        """`times` fresh connections client -> service VIP; each is a new
        conntrack entry, so each goes through the NAT hooks."""
        return [sh(f"curl -sS --max-time 5 http://{SERVICE_IP}/", CLIENT).strip() for _ in range(times)]


@contextlib.contextmanager
def nat_lab() -> Iterator[NatLab]:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tvm-lab-") as tmp:
        work = Path(tmp)
        try:
            for ns in (CLIENT, NODE, POD):
                sh(f"ip netns add {ns}")
                sh("ip link set lo up", ns)
            sh(f"ip link add c0 netns {CLIENT} type veth peer name n0 netns {NODE}")
            sh(f"ip link add n1 netns {NODE} type veth peer name p0 netns {POD}")
            sh(
                "ip addr add 10.250.1.2/24 dev c0 && ip link set c0 up && "
                "ip route add 10.96.0.0/16 via 10.250.1.1",
                CLIENT,
            )
            sh(
                "ip addr add 10.250.1.1/24 dev n0 && ip link set n0 up && "
                "ip addr add 10.250.2.1/24 dev n1 && ip link set n1 up && "
                "sysctl -qw net.ipv4.ip_forward=1",
                NODE,
            )
            sh(
                f"ip addr add {POD_IP}/24 dev p0 && ip link set p0 up && ip route add default via 10.250.2.1",
                POD,
            )
            sh(
                "iptables -t nat -N KUBE-SVC-TVM && "
                f"iptables -t nat -A PREROUTING -d {SERVICE_IP}/32 -p tcp --dport 80 "
                "-m comment --comment 'tvm/web cluster IP' -j KUBE-SVC-TVM && "
                "iptables -t nat -A KUBE-SVC-TVM -p tcp -m statistic --mode random "
                f"--probability 1.0 -j DNAT --to-destination {POD_IP}:{POD_PORT} && "
                "iptables -t nat -A POSTROUTING -o n1 -j MASQUERADE",
                NODE,
            )
            (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, ip=POD_IP, port=POD_PORT))
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", POD, "nginx", "-p", str(work), "-c", str(work / "nginx.conf")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            _wait_listening(POD, POD_PORT)
            inode = Path(f"/run/netns/{NODE}").stat().st_ino
            yield NatLab(work, inode)
        finally:
            for p in procs:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
            for ns in (CLIENT, NODE, POD):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _wait_listening(netns: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in sh("ss -Hltn", netns):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on :{port} in {netns} after {timeout}s")
