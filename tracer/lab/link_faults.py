"""Fault kinds of a node's links (tracer/lab/fault_kinds.py collects them):
an MTU that the network does not carry, and strict reverse-path filtering on
an interface that sees asymmetric traffic."""

from __future__ import annotations

from typing import Any

from tracer.errors import LabError, UsageError
from tracer.lab import encap as lab_encap
from tracer.lab import netdev
from tracer.lab.faults import Fault, FaultKind, last_node
from tracer.lab.nginx import LARGE_PATH
from tracer.lab.state import LabState, Pod

UPLINK = "eth0"  # every lab node's NIC on the LAN (tracer/lab/build.py)


# --- mtu-blackhole: a node set up for jumbo frames on a LAN that carries 1500 ---
#
# Felix sizes the tunnel device and the pods' interfaces from the node's NIC
# MTU. On a node whose NIC was given 9000 on a LAN whose ports carry 1500,
# every full-size segment a pod on it sends leaves in a 1550-byte VXLAN
# frame, and the switch port drops it without a word (a switch sends no ICMP).
# The handshake and small requests fit, so they work; large responses vanish.
#
# A veth passes a GSO packet whole, whatever its size (is_skb_forwardable()
# lets every GSO skb through, net/core/dev.c), where a real NIC cuts it into
# MTU-sized frames on the wire: gso_max_segs 1 makes the node's uplink
# segment in software, so the frames it sends are the ones a NIC would.
JUMBO_MTU = 9000
GSO_MAX_SEGS_DEFAULT = 65535  # the kernel's GSO_MAX_SEGS


def _mtu_commands(state: LabState, node: str, nic_mtu: int, gso_max_segs: int) -> None:
    """The node's uplink to nic_mtu, its tunnel device and its pods' veths
    (both ends) to what Felix derives from it."""
    tunnel_mtu = nic_mtu - lab_encap.OVERHEAD[state.encap]
    pods = state.pods_on(node)
    netdev.ip_batch(state.node(node).netns, [
        f"link set {UPLINK} mtu {nic_mtu} gso_max_segs {gso_max_segs}",
        f"link set {lab_encap.DEVICES[state.encap]} mtu {tunnel_mtu}",
        *(f"link set {p.veth} mtu {tunnel_mtu}" for p in pods),
    ])
    for p in pods:
        netdev.ip_batch(p.netns, [f"link set eth0 mtu {tunnel_mtu}"])


def _mtu_apply(state: LabState, node: str, pod: Pod | None) -> dict[str, Any]:
    if state.encap == "none":
        raise UsageError("mtu-blackhole needs the lab with a tunnel (tracer lab up --encap vxlan)")
    _mtu_commands(state, node, JUMBO_MTU, 1)
    return {"nic_mtu": JUMBO_MTU, "lan_mtu": lab_encap.HOST_MTU,
            "tunnel": lab_encap.DEVICES[state.encap]}


def _mtu_remove(state: LabState, fault: Fault) -> None:
    _mtu_commands(state, fault.node, lab_encap.HOST_MTU, GSO_MAX_SEGS_DEFAULT)


def _mtu_in_effect(state: LabState, fault: Fault) -> bool:
    link = netdev.links(state.node(fault.node).netns).get(UPLINK, {})
    return link.get("mtu") == fault.detail["nic_mtu"]


MTU_BLACKHOLE = FaultKind(
    name="mtu-blackhole", family="routing",  # the path MTU is a property of the route
    summary="a node's NIC set to jumbo frames (MTU 9000, tunnel and pods sized from it) on a "
            "LAN that carries 1500: small requests work, large responses from its pods vanish",
    default_target=last_node, apply=_mtu_apply, remove=_mtu_remove, in_effect=_mtu_in_effect,
    demo_encap="vxlan", demo_path=LARGE_PATH)


# --- rp-filter: strict reverse-path filtering meets asymmetric routing --------
#
# A node with a second NIC (a backend network) whose route to its peers goes
# out that NIC, while the peers reach it over the LAN: traffic from them
# arrives on eth0 but the route back leaves by eth1. With rp_filter=1 (strict,
# RFC 3704) on eth0, fib_validate_source() refuses every such packet and the
# kernel drops it (SKB_DROP_REASON_IP_RPFILTER, 6.0+; counted in TcpExt
# IPReversePathFilter). Service traffic DNATed to the node's pods on another
# node (and MASQUERADEd to that node's address) never reaches them.
BACKEND_NIC = "eth1"
# The backend network: a veth whose other end stays down in the node (a NIC
# with its cable out; kernels built without the dummy driver have veth). Its
# routes still count for the reverse-path check (ignore_routes_with_linkdown
# is 0 by default).
BACKEND_PEER = "eth1-cable"
BACKEND_CIDR = "172.31.255.0/24"
_RP_FILTER_KEY = "net/ipv4/conf/{dev}/rp_filter"


def _peer_ips(state: LabState, node: str) -> list[str]:
    return [n.ip for n in state.nodes if n.name != node]


def _rp_apply(state: LabState, node: str, pod: Pod | None) -> dict[str, Any]:
    if len(state.nodes) < 2:
        raise LabError("rp-filter needs a second node to send the asymmetric traffic")
    me = state.node(node)
    index = state.nodes.index(me) + 2
    netdev.ip_batch(me.netns, [
        f"link add {BACKEND_NIC} type veth peer name {BACKEND_PEER}",
        f"addr add {BACKEND_CIDR.rsplit('.', 1)[0]}.{index}/24 dev {BACKEND_NIC}",
        f"link set {BACKEND_NIC} up",
        *(f"route add {ip}/32 dev {BACKEND_NIC}" for ip in _peer_ips(state, node)),
    ])
    netdev.set_sysctls(me.netns, {_RP_FILTER_KEY.format(dev=UPLINK): 1})
    return {"interface": UPLINK, "rp_filter": 1, "backend_nic": BACKEND_NIC,
            "rerouted": _peer_ips(state, node)}


def _rp_remove(state: LabState, fault: Fault) -> None:
    me = state.node(fault.node)
    netdev.set_sysctls(me.netns, {_RP_FILTER_KEY.format(dev=UPLINK): 0})
    netdev.delete_links(me.netns, [BACKEND_NIC])


def _rp_in_effect(state: LabState, fault: Fault) -> bool:
    me = state.node(fault.node)
    return BACKEND_NIC in netdev.links(me.netns) and any(
        r.get("dev") == BACKEND_NIC for r in netdev.routes(me.netns))


RP_FILTER = FaultKind(
    name="rp-filter", family="routing",
    summary="strict reverse-path filtering on a node's eth0 while its route back to the "
            "other nodes leaves by a second NIC: their traffic to its pods is dropped",
    default_target=last_node, apply=_rp_apply, remove=_rp_remove, in_effect=_rp_in_effect)
