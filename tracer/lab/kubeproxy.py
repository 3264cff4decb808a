"""kube-proxy's part: render each node's rules for the lab's Services and
load them into the node's namespace, then read them back (digest, counters).

Two proxy modes, as kube-proxy's --proxy-mode:
  - iptables (the default): tracer.kube.iptables_render (nat) and
    tracer.kube.iptables_filter (filter: the REJECTs of Services without
    endpoints), rule for rule, loaded with the nf_tables `iptables-restore`,
    as kube-proxy on a Debian 12 node. The lab leaves out kube-proxy's
    KUBE-FORWARD and KUBE-FIREWALL rules (its chains stay empty): they would
    change how every healthy node forwards (an INVALID drop), which the
    lab's tests do not expect;
  - nftables: tracer.kube.nftables_render, kube-proxy's nftables transaction,
    loaded with `nft -f`. The lab adds one thing kube-proxy does not write: a
    `counter` in every endpoint chain's DNAT rule, the witness the tests
    compare captures with (kube-proxy's nftables rules have no counters).
Switching modes removes the other mode's rules, as kube-proxy does when it
starts in a mode (it cleans up after the other one). Endpoints are the lab's
pods with the resolved targetPort. Everything happens inside the node's
namespace only.

A dual lab (--ip-family dual) also runs kube-proxy's IPv6 proxier:
render6() gives its rules (the `ip6tables-restore` input, or the `nft -f`
transaction for table ip6 kube-proxy) over the Services that are IPv6 in the
lab, with the pods' IPv6 addresses as endpoints; render() stays IPv4 only.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import LabError, MissingPackageError, TracerError
from tracer.kube.iptables_filter import (
    FILTER_CHAINS,
    FILTER_JUMP_RULES,
    KUBE_FIREWALL,
    render_filter_table,
)
from tracer.kube.iptables_render import render_nat_table
from tracer.kube.manifest import SERVICE_CIDR6
from tracer.kube.model import Endpoint as KubeEndpoint
from tracer.kube.model import Manifest
from tracer.kube.nftables_render import render_kube_proxy_table
from tracer.kube.nftables_table import read_nft_json
from tracer.lab import kubeproxy6
from tracer.lab.plan6 import CLUSTER_CIDR6
from tracer.lab.state import LabState, Node
from tracer.system import run

# The nf_tables flavour explicitly: plain `iptables-restore` follows the
# Debian alternative, which could point at the legacy backend.
RESTORE = "iptables-nft-restore"
SAVE = "iptables-nft-save"
IPTABLES = "iptables-nft"
NFT = "nft"
NFT_TABLE = ("ip", "kube-proxy")

_PACKAGE = {RESTORE: "iptables", SAVE: "iptables", IPTABLES: "iptables", NFT: "nftables"}
# An empty nat table: restoring it (without --noflush) removes every KUBE-
# chain and jump, which is what kube-proxy's iptables cleanup amounts to here
# (the lab's nat table holds nothing else).
_EMPTY_NAT = "*nat\nCOMMIT\n"


def _require(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise MissingPackageError(program, _PACKAGE.get(program, program))
    return path


# What loading and reading back the rules needs, in either mode: nft too in
# iptables mode, to remove (or find no) table ip kube-proxy.
REQUIRED_PROGRAMS = (RESTORE, SAVE, IPTABLES, NFT)


@dataclass(frozen=True)
class Programs:
    """One family's tools: kube-proxy's proxier of that family loads its
    rules with them (a dual lab runs both, tracer/lab/kubeproxy6.py)."""

    restore: str
    save: str
    iptables: str
    table: tuple[str, str]  # its nftables table


IPV4 = Programs(RESTORE, SAVE, IPTABLES, NFT_TABLE)
IPV6 = Programs(kubeproxy6.RESTORE6, kubeproxy6.SAVE6, kubeproxy6.IP6TABLES, kubeproxy6.NFT_TABLE6)


def require_programs() -> None:
    """MissingPackageError (naming the Debian package) unless every program
    of REQUIRED_PROGRAMS is installed."""
    for program in REQUIRED_PROGRAMS:
        _require(program)


def endpoints(
    state: LabState, family: str = "ipv4"
) -> dict[tuple[str, str], list[KubeEndpoint]]:
    """(namespace, service) -> the pods behind it, one Endpoint per service
    port (its port is that port's resolved targetPort); family "ipv6": the
    pods' IPv6 addresses, of the Services that are IPv6 in the lab (the
    IPv6 EndpointSlices kube-proxy's IPv6 proxier reads)."""
    out: dict[tuple[str, str], list[KubeEndpoint]] = {}
    for svc in state.services:
        eps = out.setdefault((svc.namespace, svc.name), [])
        for port in svc.ports:
            for e in port.endpoints:
                ip = e.ip6 if family == "ipv6" else e.ip
                if ip is None:
                    continue
                ep = KubeEndpoint(ip=ip, port=e.port, node=e.node, pod=e.pod)
                if ep not in eps:
                    eps.append(ep)
    return out


def render(manifest: Manifest, state: LabState, node: Node) -> str:
    """What kube-proxy in the lab's proxy mode would load on this node: the
    `iptables-restore` input, or the `nft -f` transaction."""
    if state.proxy_mode == "nftables":
        return render_kube_proxy_table(
            manifest.services,
            endpoints(state),
            node_ips=[node.ip],
            cluster_cidr=state.cluster_cidr,
            node_name=node.name,
            endpoint_counters=True,
            replace_table=True,
        )
    # kube-proxy's one restore input: "*filter" (REJECTs; its jumps are made
    # by load(), once) then "*nat".
    return render_filter_table(
        manifest.services,
        endpoints(state),
        node_name=node.name,
        forwarding_rules=False,
        jump_rules=False,
    ) + render_nat_table(
        manifest.services,
        endpoints(state),
        node_ips=[node.ip],
        cluster_cidr=state.cluster_cidr,
        node_name=node.name,
    )


def render6(manifest: Manifest, state: LabState, node: Node) -> str | None:
    """What kube-proxy's IPv6 proxier would load on this node in a dual lab
    (None in an IPv4 lab): the `ip6tables-restore` input ("*filter" with the
    REJECTs, then "*nat"; jumps as render()'s), or the `nft -f` transaction
    that replaces table ip6 kube-proxy. Only the Services that are IPv6 in
    the lab, with the node's IPv6 address, the pods' IPv6 block and the
    IPv6 service CIDR."""
    if state.ip_family != "dual" or node.ip6 is None:
        return None
    ipv6 = {(s.namespace, s.name) for s in state.services if "ipv6" in s.ip_families}
    services = [s for s in manifest.services if s.key in ipv6]
    eps = endpoints(state, "ipv6")
    if state.proxy_mode == "nftables":
        return render_kube_proxy_table(
            services, eps, node_ips=[node.ip6], cluster_cidr=CLUSTER_CIDR6,
            node_name=node.name, service_cidrs=[SERVICE_CIDR6], endpoint_counters=True,
            replace_table=True, family="ipv6",
        )
    return render_filter_table(
        services, eps, node_name=node.name, forwarding_rules=False, jump_rules=False,
        family="ipv6",
    ) + render_nat_table(
        services, eps, node_ips=[node.ip6], cluster_cidr=CLUSTER_CIDR6, node_name=node.name,
        family="ipv6",
    )


def _split_filter(text: str) -> tuple[str, str]:
    """(the "*filter" section, the rest) of iptables-restore input."""
    head, marker, rest = text.partition("*nat\n")
    if not marker or not head.startswith("*filter"):
        return "", text
    return head, marker + rest


# kube-proxy's cleanup of its filter table (CleanupLeftovers): each chain
# flushed, then deleted (the jumps to them are removed first); with the
# (empty, unreferenced) KUBE-FIREWALL the lab declares.
_LAB_FILTER_CHAINS = (*FILTER_CHAINS, KUBE_FIREWALL)
_FILTER_CLEANUP = "\n".join(
    ["*filter", *(f":{c} - [0:0]" for c in _LAB_FILTER_CHAINS),
     *(f"-X {c}" for c in _LAB_FILTER_CHAINS), "COMMIT", ""])


def _jump_present(netns: str, jump, f: Programs) -> bool:
    return run([f.iptables, "-t", "filter", "-C", jump.source, *jump.args()],
               netns=netns, check=False).returncode == 0


def _ensure_filter_jumps(netns: str, f: Programs = IPV4) -> None:
    """kube-proxy's EnsureRule(Prepend) for its filter jumps: each one that
    is not there (`iptables -C`) is inserted first, in kube-proxy's order."""
    for jump in FILTER_JUMP_RULES:
        if not _jump_present(netns, jump, f):
            run([f.iptables, "-t", "filter", "-I", jump.source, *jump.args()], netns=netns)


def _remove_filter_rules(netns: str, f: Programs = IPV4) -> None:
    """Take kube-proxy's iptables filter chains and jumps away (a node
    switching to nftables mode)."""
    for jump in FILTER_JUMP_RULES:
        while _jump_present(netns, jump, f):
            run([f.iptables, "-t", "filter", "-D", jump.source, *jump.args()], netns=netns)
    run([f.restore, "--noflush"], netns=netns, input=_FILTER_CLEANUP)


def rules_file(state: LabState, node: Node) -> Path:
    if state.proxy_mode == "nftables":
        return Path(state.run_dir) / "nftables" / f"{node.name}.nft"
    return Path(state.run_dir) / "iptables" / f"{node.name}.rules"


def load(state: LabState, node: Node, text: str) -> str:
    """Make the node's kube-proxy rules text, in the lab's proxy mode, and
    remove the other mode's; returns the digest of what the kernel then holds
    (see digest()).

    iptables: without --noflush the whole nat table is replaced, so a reload
    after a replica change leaves no stale KUBE-SEP chain behind; the filter
    section goes in with --noflush (declaring a chain flushes it; other
    chains, Felix's, stay) and its jumps are added where missing. nftables:
    the transaction starts by deleting table ip kube-proxy, and kube-proxy's
    iptables chains go. Other filter chains and nftables tables are not
    touched.
    """
    require_programs()
    path = rules_file(state, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    text, text6 = kubeproxy6.split(text)
    try:
        _load_family(node.netns, state.proxy_mode, text, IPV4)
        if text6 is not None:
            _load_family(node.netns, state.proxy_mode, text6, IPV6)
    except TracerError as exc:
        raise LabError(f"loading kube-proxy rules into {node.netns}: {exc}") from exc
    return digest(node.netns, six=text6 is not None)


def _load_family(netns: str, proxy_mode: str, text: str, f: Programs) -> None:
    """One family's rules text (see load()), the other mode's removed."""
    if proxy_mode == "nftables":
        run([f.restore], netns=netns, input=_EMPTY_NAT)
        _remove_filter_rules(netns, f)
        run([NFT, "-f", "-"], netns=netns, input=text)
        return
    filter_text, nat_text = _split_filter(text)
    run([f.restore], netns=netns, input=nat_text)
    if filter_text:
        run([f.restore, "--noflush"], netns=netns, input=filter_text)
        _ensure_filter_jumps(netns, f)
    if nft_table(netns, f=f) is not None:
        run([NFT, "delete", "table", *f.table], netns=netns)


def nft_table(netns: str, *, json_output: bool = False, stateless: bool = False,
              f: Programs = IPV4) -> str | None:
    """`nft list table ip kube-proxy` (f: ip6's) of a lab namespace; None
    when there is no such table."""
    _require(NFT)
    _lab_only(netns)
    flags = [*(["-j"] if json_output else []), *(["-s"] if stateless else [])]
    proc = run([NFT, *flags, "list", "table", *f.table], netns=netns, check=False)
    if proc.returncode != 0:
        if "No such file or directory" in (proc.stderr or ""):
            return None
        raise LabError(f"nft list table in {netns}: {(proc.stderr or '').strip()}")
    return proc.stdout


def _lab_only(netns: str) -> None:
    if not netns.startswith("lab-"):
        raise LabError(f"refusing to read rules of non-lab namespace {netns!r}")


def save(netns: str, *, counters: bool = False, table: str = "nat", f: Programs = IPV4) -> str:
    """`iptables-save -t nat` (or another table; f: ip6tables') of a lab namespace."""
    _require(f.save)
    _lab_only(netns)
    return run([f.save, "-t", table, *(["-c"] if counters else [])], netns=netns).stdout


def digest(netns: str, *, six: bool = False) -> str:
    """sha256 of the nat rules, of kube-proxy's filter rules (the KUBE- lines)
    and of table ip kube-proxy (not counters, not comments) as the kernel
    gives them back, with six (a dual lab) the IPv6 ones too: equal digests
    mean the same rules are loaded, in either mode."""
    lines = _digest_lines(netns, IPV4)
    if six:
        lines += ["# IPv6", *_digest_lines(netns, IPV6)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _digest_lines(netns: str, f: Programs) -> list[str]:
    lines = [
        _strip_counters(line)
        for line in save(netns, f=f).splitlines()
        if line and not line.startswith("#")
    ]
    lines += [line for line in save(netns, table="filter", f=f).splitlines()
              if "KUBE-" in line and not line.startswith("#")]
    table = nft_table(netns, stateless=True, f=f)
    if table is not None:
        lines += [f"# table {' '.join(f.table)}", *table.splitlines()]
    return lines


def _strip_counters(line: str) -> str:
    return re.sub(r"\[\d+:\d+\]", "", line)


def render_all(manifest: Manifest, state: LabState, node: Node) -> str:
    """The node's whole rules text: render() and, in a dual lab, render6()
    after kubeproxy6.SECTION (load() splits them again)."""
    return kubeproxy6.combine(render(manifest, state, node), render6(manifest, state, node))


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
    """Endpoint DNAT rules -> packets, keyed "ip:port", optionally only those
    of one service ("default/nginx-demo-1" or "nginx-demo-1"): KUBE-SEP-*
    rules in iptables mode, the lab's counters on endpoint-* chains in
    nftables mode. One packet per new connection: NAT chains see only a
    connection's first packet."""
    table = nft_table(netns, json_output=True)
    if table is not None:
        return _nft_dnat_counters(table, service)
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


def _nft_dnat_counters(json_text: str, service: str | None) -> dict[str, int]:
    """endpoint-HASH-ns/name/proto/port__ip/port chains: their DNAT rule's counter."""
    out: dict[str, int] = {}
    for chain, rules in read_nft_json(json_text).chains.items():
        if not chain.startswith("endpoint-"):
            continue
        if service is not None:
            # "endpoint-HASH8-ns/name/proto/port__ip/port" -> "ns/name"
            full = "/".join(chain.split("-", 2)[-1].split("/")[:2])
            if service not in (full, full.split("/", 1)[-1]):
                continue
        for rule in rules:
            if rule.dnat_to is not None and rule.packets is not None:
                ip, port = rule.dnat_to
                key = f"{ip}:{port}"
                out[key] = out.get(key, 0) + rule.packets
    return out


def nft_endpoint_counters(netns: str) -> dict[str, int]:
    """endpoint-* chain -> packets its DNAT rule counted (nftables mode)."""
    table = nft_table(netns, json_output=True)
    if table is None:
        return {}
    out = {}
    for chain, rules in read_nft_json(table).chains.items():
        for rule in rules:
            if chain.startswith("endpoint-") and rule.dnat_to and rule.packets is not None:
                out[chain] = out.get(chain, 0) + rule.packets
    return out
