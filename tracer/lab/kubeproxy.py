"""kube-proxy's part: render each node's nat table for the lab's Services and
load it into the node's namespace, then read it back (digest, counters).

The rules come from tracer.kube.iptables_render (kube-proxy's iptables mode,
rule for rule); endpoints are the lab's pods with the resolved targetPort.
They are loaded with the nf_tables `iptables-restore`, as kube-proxy on a
Debian 12 node would, inside the node's namespace only.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import LabError, MissingPackageError, TracerError
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.model import Endpoint as KubeEndpoint
from tracer.kube.model import Manifest
from tracer.lab.state import LabState, Node
from tracer.system import run

# The nf_tables flavour explicitly: plain `iptables-restore` follows the
# Debian alternative, which could point at the legacy backend.
RESTORE = "iptables-nft-restore"
SAVE = "iptables-nft-save"


def _require(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise MissingPackageError(program, "iptables")
    return path


def endpoints(state: LabState) -> dict[tuple[str, str], list[KubeEndpoint]]:
    """(namespace, service) -> the pods behind it, one Endpoint per service
    port (its port is that port's resolved targetPort)."""
    out: dict[tuple[str, str], list[KubeEndpoint]] = {}
    for svc in state.services:
        eps = out.setdefault((svc.namespace, svc.name), [])
        for port in svc.ports:
            for e in port.endpoints:
                ep = KubeEndpoint(ip=e.ip, port=e.port, node=e.node, pod=e.pod)
                if ep not in eps:
                    eps.append(ep)
    return out


def render(manifest: Manifest, state: LabState, node: Node) -> str:
    """The `iptables-restore` input kube-proxy would write on this node."""
    return render_nat_table(
        manifest.services,
        endpoints(state),
        node_ips=[node.ip],
        cluster_cidr=state.cluster_cidr,
        node_name=node.name,
    )


def rules_file(state: LabState, node: Node) -> Path:
    return Path(state.run_dir) / "iptables" / f"{node.name}.rules"


def load(state: LabState, node: Node, text: str) -> str:
    """Replace the nat table of the node's namespace with text; returns the
    digest of what the kernel then holds (see digest()).

    Without --noflush the whole nat table is replaced, so a reload after a
    replica change leaves no stale KUBE-SEP chain behind. The filter and other
    tables are not touched.
    """
    _require(RESTORE)
    path = rules_file(state, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        run([RESTORE], netns=node.netns, input=text)
    except TracerError as exc:
        raise LabError(f"loading kube-proxy rules into {node.netns}: {exc}") from exc
    return digest(node.netns)


def save(netns: str, *, counters: bool = False) -> str:
    """`iptables-save -t nat` of a lab namespace."""
    _require(SAVE)
    if not netns.startswith("lab-"):
        raise LabError(f"refusing to read rules of non-lab namespace {netns!r}")
    return run([SAVE, "-t", "nat", *(["-c"] if counters else [])], netns=netns).stdout


def digest(netns: str) -> str:
    """sha256 of the nat rules (not counters, not comments) as the kernel
    gives them back: equal digests mean the same rules are loaded."""
    lines = [
        re.sub(r"\[\d+:\d+\]", "", line)
        for line in save(netns).splitlines()
        if line and not line.startswith("#")
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class RuleCounter:
    chain: str
    rule: str  # the rule as iptables-save prints it, without "-A <chain>"
    packets: int
    bytes: int

    @property
    def dnat_to(self) -> str | None:
        m = re.search(r"--to-destination (\S+)", self.rule)
        return m.group(1) if m else None

    @property
    def comment(self) -> str | None:
        m = re.search(r'--comment (?:"([^"]*)"|(\S+))', self.rule)
        return (m.group(1) or m.group(2)) if m else None


_COUNTED = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")


def counters(netns: str) -> list[RuleCounter]:
    """Every nat rule of the namespace with its packet and byte counters."""
    out = []
    for line in save(netns, counters=True).splitlines():
        m = _COUNTED.match(line)
        if m:
            out.append(RuleCounter(chain=m.group(3), rule=m.group(4),
                                   packets=int(m.group(1)), bytes=int(m.group(2))))
    return out


def dnat_counters(netns: str, service: str | None = None) -> dict[str, int]:
    """KUBE-SEP DNAT rules -> packets, keyed "ip:port", optionally only those
    of one service ("default/nginx-demo-1" or "nginx-demo-1"). One packet per
    new connection: the nat table sees only a connection's first packet."""
    out: dict[str, int] = {}
    for rc in counters(netns):
        if not rc.chain.startswith("KUBE-SEP-") or rc.dnat_to is None:
            continue
        if service is not None:
            # kube-proxy's comment is the service port name: "ns/name" or
            # "ns/name:port-name".
            full = (rc.comment or "").split(":", 1)[0]
            if service not in (full, full.split("/", 1)[-1]):
                continue
        out[rc.dnat_to] = out.get(rc.dnat_to, 0) + rc.packets
    return out
