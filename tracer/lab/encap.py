"""Calico's encapsulation between the lab's nodes, programmed as Felix does it.

`tracer lab up --encap MODE`:

none   Calico in BGP mode without encapsulation (the seed article): BIRD
       installs each other node's block via that node (tracer/lab/bird.py).

vxlan  Calico's VXLAN mode (IPPool vxlanMode: Always). On every node, what
       Felix's vxlan_mgr and vxlanfdb program:
         vxlan.calico  VNI 4096 and UDP port 4789 (FelixConfiguration
                       vxlanVNI/vxlanPort defaults), on eth0 with the node's
                       address as source, learning off, MTU 1500 - 50 (outer
                       IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14, Calico's
                       VXLAN overhead), a MAC of its own, the node's tunnel
                       address as a /32
         per peer      a permanent ARP entry (peer's tunnel address -> peer's
                       VTEP MAC: the inner Ethernet header) and a permanent
                       FDB entry (that MAC -> peer's node address: where the
                       outer packet goes), so nothing is flooded or learnt
         routes        the peer's block via the peer's tunnel address dev
                       vxlan.calico onlink, and a blackhole for the node's own
                       block, both proto 80 (Felix's route protocol)
       BIRD keeps running and still announces the blocks to the ToR; it no
       longer programs pool routes into the kernel, as Calico's
       calico_kernel_programming filter does for a VXLAN pool ("VXLAN routes
       are handled by Felix"; tracer/lab/bird.py).

ipip   Calico's IPIP mode (ipipMode: Always): tunl0 (the ipip module's
       fallback device) up with MTU 1500 - 20 and the tunnel address /32, the
       peer's block via the peer's node address dev tunl0 onlink. Calico's
       own BIRD build programs these routes (krt_tunnel); upstream BIRD has
       no such attribute, so the lab programs them as Felix does when it owns
       the cluster routes (FelixConfiguration programClusterRoutes: Enabled,
       proto 80), and BIRD leaves the pool alone as in VXLAN mode. Needs a
       kernel with IPIP (CONFIG_NET_IPIP).

A node's tunnel address is the first address of its block: Calico's IPAM
hands it out from the node's block, and the lab's pods start 8 addresses in.
Pods get the tunnel's MTU on both ends of their veth, as Calico's CNI plugin
sets them. Only lab namespaces are touched (tracer/lab/netdev.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import LabError
from tracer.lab import netdev
from tracer.lab.state import LabState, Node, Pod
from tracer.system import run

FELIX_ROUTE_PROTO = 80  # felix/dataplane/linux/dataplanedefs.DefaultRouteProto
HOST_MTU = 1500  # the lab's eth0 veths
OVERHEAD = {"none": 0, "vxlan": 50, "ipip": 20}

VXLAN_DEVICE = "vxlan.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
IPIP_DEVICE = "tunl0"
DEVICES = {"vxlan": VXLAN_DEVICE, "ipip": IPIP_DEVICE}


def mtu(mode: str) -> int:
    """The MTU of the tunnel device and of every pod interface in mode."""
    return HOST_MTU - OVERHEAD[mode]


@dataclass(frozen=True)
class Vtep:
    """One node's end of the tunnels."""

    node: str
    netns: str
    host_ip: str  # the outer source/destination: the node's eth0 address
    block: str  # the node's IPAM block
    tunnel_ip: str  # the tunnel device's address, first of the block
    mac: str  # vxlan.calico's MAC (VXLAN mode)


def vtep_mac(node_name: str) -> str:
    """A locally administered unicast MAC derived from the node name: Calico
    gives each VTEP a MAC of its own (kept on the Node resource); a hash keeps
    the lab's stable from one `up` to the next."""
    b = bytearray(hashlib.sha256(f"vxlan/{node_name}".encode()).digest()[:6])
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def vtep_of(node: Node) -> Vtep:
    block = ipaddress.ip_network(node.pod_cidr)
    return Vtep(node.name, node.netns, node.ip, node.pod_cidr, str(block.network_address),
                vtep_mac(node.name))


def vteps(state: LabState) -> tuple[Vtep, ...]:
    return tuple(vtep_of(n) for n in state.nodes)


# Kernel module of each tunnel (a built-in one shows in /sys/module too).
KERNEL_MODULES = {"vxlan": "vxlan", "ipip": "ipip"}
SYS_MODULE = Path("/sys/module")


def require_kernel_support(mode: str) -> None:
    """Fail before anything changes when the kernel cannot make mode's tunnel
    (IPIP needs CONFIG_NET_IPIP, which not every kernel sets). Loads the
    module if it must."""
    module = KERNEL_MODULES.get(mode)
    if module is None or (SYS_MODULE / module).exists():
        return
    if shutil.which("modprobe"):
        run(["modprobe", "-q", module], check=False)
    if not (SYS_MODULE / module).exists():
        raise LabError(
            f"--encap {mode}: this kernel has no {module} tunnels "
            f"(CONFIG_{'VXLAN' if mode == 'vxlan' else 'NET_IPIP'} is not set and "
            f"`modprobe {module}` found no module); try it on a kernel that has them")


# --- what to program (pure) ---------------------------------------------------


def device_commands(mode: str, me: Vtep) -> list[str]:
    """`ip` lines that make and configure the node's tunnel device."""
    if mode == "vxlan":
        return [
            f"link add {VXLAN_DEVICE} address {me.mac} mtu {mtu(mode)} type vxlan "
            f"id {VXLAN_VNI} local {me.host_ip} dev eth0 dstport {VXLAN_PORT} nolearning",
            f"link set {VXLAN_DEVICE} up",
            f"addr add {me.tunnel_ip}/32 dev {VXLAN_DEVICE}",
        ]
    if mode == "ipip":
        return [
            f"link set {IPIP_DEVICE} mtu {mtu(mode)} up",
            f"addr add {me.tunnel_ip}/32 dev {IPIP_DEVICE}",
        ]
    return []


def neighbour_commands(mode: str, peers: Iterable[Vtep]) -> list[str]:
    """`ip` lines: VXLAN's static ARP entries, peer tunnel address -> VTEP MAC."""
    if mode != "vxlan":
        return []
    return [f"neigh replace {p.tunnel_ip} lladdr {p.mac} dev {VXLAN_DEVICE} nud permanent"
            for p in peers]


def fdb_commands(mode: str, peers: Iterable[Vtep]) -> list[str]:
    """`bridge` lines: VXLAN's static FDB entries, VTEP MAC -> peer node address."""
    if mode != "vxlan":
        return []
    return [f"fdb replace {p.mac} dev {VXLAN_DEVICE} dst {p.host_ip} self permanent"
            for p in peers]


def expected_routes(mode: str, me: Vtep, peers: Iterable[Vtep]) -> set[tuple[str, str, str, str]]:
    """(dst, gateway, dev, type) of every proto-80 route the node must have."""
    if mode == "none":
        return set()
    out = {(me.block, "", "", "blackhole")}
    for p in peers:
        via = p.tunnel_ip if mode == "vxlan" else p.host_ip
        out.add((p.block, via, DEVICES[mode], "unicast"))
    return out


def route_commands(mode: str, me: Vtep, peers: Iterable[Vtep]) -> list[str]:
    lines = []
    for dst, via, dev, kind in sorted(expected_routes(mode, me, peers)):
        if kind == "blackhole":
            lines.append(f"route replace blackhole {dst} proto {FELIX_ROUTE_PROTO}")
        else:
            lines.append(f"route replace {dst} via {via} dev {dev} onlink proto {FELIX_ROUTE_PROTO}")
    return lines


def _peers(all_vteps: Sequence[Vtep], me: Vtep) -> list[Vtep]:
    return [v for v in all_vteps if v.node != me.node]


# --- programming ------------------------------------------------------------------


def clear(state: LabState) -> None:
    """Remove whatever any mode programmed: the VXLAN device (its ARP and FDB
    entries and routes go with it), tunl0's address and link state, every
    proto-80 route. Leaves the nodes as mode none wants them."""
    for n in state.nodes:
        _clear_node(n.netns)


def _clear_node(netns: str) -> None:
    links = netdev.links(netns)
    if VXLAN_DEVICE in links:
        netdev.delete_links(netns, [VXLAN_DEVICE])
    lines = []
    if IPIP_DEVICE in links:
        # The fallback device cannot be deleted (the ipip module owns it):
        # Felix takes its address and brings it down.
        lines += [f"addr flush dev {IPIP_DEVICE}", f"link set {IPIP_DEVICE} down"]
    lines.append(f"route flush proto {FELIX_ROUTE_PROTO}")
    netdev.ip_batch(netns, lines)


def _ensure_ipip(netns: str) -> None:
    """tunl0 exists in every namespace once the ipip module is loaded; create
    it (loading the module) if it is not there, or say why it cannot be."""
    if IPIP_DEVICE in netdev.links(netns):
        return
    try:
        netdev.ip_batch(netns, [f"link add {IPIP_DEVICE} type ipip"])
    except LabError as exc:
        raise LabError(
            f"--encap ipip needs IPIP tunnels, which this kernel lacks (CONFIG_NET_IPIP, "
            f"`modprobe ipip`): {exc}") from exc


def apply(state: LabState) -> None:
    """Program state.encap on every node from scratch (what `clear` leaves)."""
    mode = state.encap
    all_vteps = vteps(state)
    for me in all_vteps:
        _clear_node(me.netns)
        if mode == "none":
            continue
        peers = _peers(all_vteps, me)
        if mode == "ipip":
            _ensure_ipip(me.netns)
        netdev.ip_batch(me.netns, [
            *device_commands(mode, me),
            *neighbour_commands(mode, peers),
            *route_commands(mode, me, peers),
        ])
        netdev.bridge_batch(me.netns, fdb_commands(mode, peers))


def set_pod_mtu(state: LabState, pods: Sequence[Pod]) -> None:
    """Both ends of each pod's veth to the mode's MTU."""
    value = mtu(state.encap)
    for n in state.nodes:
        netdev.ip_batch(n.netns, [f"link set {p.veth} mtu {value}" for p in pods
                                  if p.node == n.name])
    for p in pods:
        netdev.ip_batch(p.netns, [f"link set eth0 mtu {value}"])


# --- checking -----------------------------------------------------------------------


def problem(state: LabState) -> str | None:
    """What differs from state.encap on the nodes right now (None: nothing)."""
    all_vteps = vteps(state)
    for me in all_vteps:
        why = _node_problem(state.encap, me, _peers(all_vteps, me))
        if why:
            return f"{me.node}: {why}"
    want = mtu(state.encap)
    for n in state.nodes:
        links = netdev.links(n.netns)
        for p in state.pods_on(n.name):
            have = links.get(p.veth, {}).get("mtu")
            if have is not None and have != want:
                return f"{n.name}: {p.veth} has MTU {have}, not {want}"
    return None


def _node_problem(mode: str, me: Vtep, peers: list[Vtep]) -> str | None:
    links = netdev.links(me.netns)
    if mode != "vxlan" and VXLAN_DEVICE in links:
        return f"{VXLAN_DEVICE} present in {mode} mode"
    if mode != "ipip" and IPIP_DEVICE in links and (
        "UP" in links[IPIP_DEVICE].get("flags", []) or netdev.addresses(me.netns, IPIP_DEVICE)
    ):
        return f"{IPIP_DEVICE} configured in {mode} mode"
    if mode != "none":
        why = _device_problem(mode, me)
        if why:
            return why
    if mode == "vxlan":
        neigh = {(x.get("dst"), x.get("lladdr")) for x in netdev.neighbours(me.netns, VXLAN_DEVICE)
                 if "PERMANENT" in x.get("state", [])}
        fdb = {(x.get("mac"), x.get("dst")) for x in netdev.fdb(me.netns, VXLAN_DEVICE)
               if x.get("state") == "permanent"}
        for p in peers:
            if (p.tunnel_ip, p.mac) not in neigh:
                return f"no permanent ARP entry {p.tunnel_ip} -> {p.mac} on {VXLAN_DEVICE}"
            if (p.mac, p.host_ip) not in fdb:
                return f"no permanent FDB entry {p.mac} -> {p.host_ip} on {VXLAN_DEVICE}"
    have = {
        (r["dst"], r.get("gateway", ""), r.get("dev", ""), r.get("type", "unicast"))
        for r in netdev.routes(me.netns, "proto", str(FELIX_ROUTE_PROTO))
    }
    want = expected_routes(mode, me, peers)
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        return f"proto {FELIX_ROUTE_PROTO} routes differ: missing {missing}, unexpected {extra}"
    return None


def _device_problem(mode: str, me: Vtep) -> str | None:
    dev = DEVICES[mode]
    link = netdev.link_details(me.netns, dev)
    if link is None:
        return f"no {dev}"
    if "UP" not in link.get("flags", []):
        return f"{dev} is down"
    if link.get("mtu") != mtu(mode):
        return f"{dev} has MTU {link.get('mtu')}, not {mtu(mode)}"
    if netdev.addresses(me.netns, dev) != [f"{me.tunnel_ip}/32"]:
        return f"{dev} lacks its tunnel address {me.tunnel_ip}/32 (or has others)"
    if mode == "vxlan":
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        want = {"id": VXLAN_VNI, "port": VXLAN_PORT, "learning": False, "local": me.host_ip}
        have = {k: data.get(k) for k in want}
        if info.get("info_kind") != "vxlan" or have != want or link.get("address") != me.mac:
            return f"{dev} is not as Felix makes it: {have}, MAC {link.get('address')}"
    return None
