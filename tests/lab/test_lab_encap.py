"""Calico's encapsulation in the lab (`tracer lab up --encap vxlan|ipip`).

Pure part: what is programmed per mode (Felix's devices, ARP/FDB entries,
proto-80 routes, MTUs) and BIRD's kernel filter. Root part (the real lab):
VXLAN as Calico sets it up, checked with ip/bridge/birdc and with tcpdump on
node A's uplink (the traffic to node B's pod really is UDP 4789 there), the
mode switch both ways and its idempotence, repair of a deleted device, down,
and --encap ipip refused up front on a kernel without IPIP. The lab is left
in its default mode after every test."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess

import pytest

from tests import tcpdump_witness
from tracer.errors import LabError, UsageError
from tracer.kube.manifest import load_manifest
from tracer.lab import bird, controller, encap, netdev
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan
from tracer.lab.state import LabState
from tracer.lab.traffic import run_traffic

NODE_A, NODE_B = "192.168.64.57", "192.168.64.58"
BLOCK_A, BLOCK_B = "10.217.120.64/26", "10.217.121.0/26"
TUNNEL_A, TUNNEL_B = "10.217.120.64", "10.217.121.0"


@pytest.fixture(scope="module")
def planned() -> LabState:
    return make_plan(load_manifest(DEFAULT_MANIFEST), run_dir="/run/tracer-lab", encap="vxlan")


# --- pure ---------------------------------------------------------------------------


def test_plan_records_the_mode_and_refuses_unknown_ones(planned):
    assert planned.encap == "vxlan"
    assert make_plan(load_manifest(DEFAULT_MANIFEST)).encap == "none"
    with pytest.raises(UsageError, match="--encap must be one of none, vxlan, ipip"):
        make_plan(load_manifest(DEFAULT_MANIFEST), encap="geneve")
    back = LabState.from_dict(json.loads(planned.to_json()))
    assert back.encap == "vxlan"
    older = json.loads(planned.to_json())
    del older["encap"]  # a state file from before the option
    assert LabState.from_dict(older).encap == "none"


def test_vteps_tunnel_addresses_macs_and_mtus(planned):
    a, b = encap.vteps(planned)
    assert (a.node, a.host_ip, a.block, a.tunnel_ip) == ("node-a", NODE_A, BLOCK_A, TUNNEL_A)
    assert (b.node, b.host_ip, b.block, b.tunnel_ip) == ("node-b", NODE_B, BLOCK_B, TUNNEL_B)
    # The tunnel address comes from the node's block, before the pods' addresses.
    assert all(ipaddress.ip_address(v.tunnel_ip) in ipaddress.ip_network(v.block) for v in (a, b))
    assert TUNNEL_A not in {p.ip for p in planned.pods}
    for v in (a, b):
        first = int(v.mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert a.mac != b.mac and encap.vtep_mac("node-a") == a.mac  # stable
    assert (encap.mtu("none"), encap.mtu("vxlan"), encap.mtu("ipip")) == (1500, 1450, 1480)


def test_vxlan_commands_are_what_felix_programs(planned):
    a, b = encap.vteps(planned)
    dev = encap.device_commands("vxlan", a)
    assert dev[0] == (f"link add vxlan.calico address {a.mac} mtu 1450 type vxlan id 4096 "
                      f"local {NODE_A} dev eth0 dstport 4789 nolearning")
    assert f"addr add {TUNNEL_A}/32 dev vxlan.calico" in dev
    assert encap.neighbour_commands("vxlan", [b]) == [
        f"neigh replace {TUNNEL_B} lladdr {b.mac} dev vxlan.calico nud permanent"]
    assert encap.fdb_commands("vxlan", [b]) == [
        f"fdb replace {b.mac} dev vxlan.calico dst {NODE_B} self permanent"]
    assert sorted(encap.route_commands("vxlan", a, [b])) == [
        f"route replace {BLOCK_B} via {TUNNEL_B} dev vxlan.calico onlink proto 80",
        f"route replace blackhole {BLOCK_A} proto 80",
    ]


def test_ipip_and_none_commands(planned):
    a, b = encap.vteps(planned)
    assert encap.device_commands("ipip", a) == [
        "link set tunl0 mtu 1480 up", f"addr add {TUNNEL_A}/32 dev tunl0"]
    # IPIP: the peer's block via the peer's node address (no ARP, no FDB).
    assert encap.expected_routes("ipip", a, [b]) == {
        (BLOCK_A, "", "", "blackhole"), (BLOCK_B, NODE_B, "tunl0", "unicast")}
    assert encap.neighbour_commands("ipip", [b]) == encap.fdb_commands("ipip", [b]) == []
    assert encap.device_commands("none", a) == encap.route_commands("none", a, [b]) == []


def test_bird_leaves_the_pool_to_felix_with_encapsulation(planned, tmp_path):
    n = planned.nodes[0]

    def cfg(mode: str) -> str:
        return bird.render_node_config(n, tor_ip=planned.tor.ip, asn=planned.asn,
                                       cluster_cidr=planned.cluster_cidr, encap=mode)

    kernel = re.compile(r"filter calico_kernel_programming \{\n  if \( net ~ POOL \) then (\w+);")
    assert kernel.search(cfg("none")).group(1) == "accept"
    assert kernel.search(cfg("vxlan")).group(1) == "reject"
    assert kernel.search(cfg("ipip")).group(1) == "reject"
    # The blocks are still announced to the ToR in every mode; the tunnel's
    # own address route is not (Calico's reject_tunnel_routes).
    for mode in ("none", "vxlan", "ipip"):
        text = cfg(mode)
        assert f"route {BLOCK_A} blackhole;" in text
        assert '(ifname ~ "*.calico")' in text
        assert "export filter calico_export_to_bgp_peers" in text
    assert bird.expected_routes(planned.nodes, "vxlan") == {"lab-node-a": set(), "lab-node-b": set()}
    if shutil.which("bird"):
        for mode in ("none", "vxlan"):
            path = tmp_path / f"{mode}.conf"
            path.write_text(cfg(mode).replace(n.bird.log, str(tmp_path / "bird.log")))
            proc = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr


# --- the real lab ---------------------------------------------------------------------

@pytest.fixture
def vxlan_lab(lab):
    state = controller.up(encap="vxlan").state
    yield state
    controller.up()


def _routes(netns: str, *selector: str) -> set[tuple]:
    return {(r["dst"], r.get("gateway", ""), r.get("dev", ""), r.get("type", "unicast"),
             tuple(r.get("flags", []))) for r in netdev.routes(netns, *selector)}


@pytest.mark.root
@pytest.mark.lab
def test_vxlan_mode_is_programmed_as_calico_does(vxlan_lab):
    s = vxlan_lab
    assert s.encap == "vxlan"
    vteps = {v.node: v for v in encap.vteps(s)}
    for n, peer in ((s.nodes[0], s.nodes[1]), (s.nodes[1], s.nodes[0])):
        me, other = vteps[n.name], vteps[peer.name]
        link = netdev.link_details(n.netns, "vxlan.calico")
        data = link["linkinfo"]["info_data"]
        assert link["linkinfo"]["info_kind"] == "vxlan"
        assert (data["id"], data["port"], data["learning"], data["local"], data["link"]) == (
            4096, 4789, False, n.ip, "eth0")
        assert link["mtu"] == 1450 and link["address"] == me.mac and "UP" in link["flags"]
        assert netdev.addresses(n.netns, "vxlan.calico") == [f"{me.tunnel_ip}/32"]
        assert [(x["dst"], x["lladdr"], x["state"]) for x in netdev.neighbours(n.netns, "vxlan.calico")
                ] == [(other.tunnel_ip, other.mac, ["PERMANENT"])]
        assert [(x["mac"], x["dst"], x["state"]) for x in netdev.fdb(n.netns, "vxlan.calico")
                if x.get("dst")] == [(other.mac, peer.ip, "permanent")]
        # Felix's routes (proto 80); BIRD programs nothing into the node's kernel.
        assert _routes(n.netns, "proto", "80") == {
            (other.block, other.tunnel_ip, "vxlan.calico", "unicast", ("onlink",)),
            (me.block, "", "", "blackhole", ()),
        }
        assert bird.learned_routes(n.netns) == []
        # ... but BGP still runs and announces the block to the ToR.
        assert all(x.established for x in bird.bgp_sessions(n.bird))
        # Pods get the tunnel's MTU on both ends of their veth.
        links = netdev.links(n.netns)
        for p in s.pods_on(n.name):
            assert links[p.veth]["mtu"] == 1450
            assert netdev.links(p.netns)["eth0"]["mtu"] == 1450
    assert bird.installed(s.tor.netns) == {(BLOCK_A, NODE_A), (BLOCK_B, NODE_B)}
    assert encap.problem(s) is None
    again = controller.up(encap="vxlan")
    assert again.action == "unchanged"
    proc = subprocess.run(["tracer", "lab", "status", "--json"], capture_output=True, text=True)
    st = json.loads(proc.stdout)
    assert proc.returncode == 0 and st["healthy"] and st["encap"] == "vxlan"
    assert {r["dev"] for n in st["nodes"] for r in n["tunnel_routes"] if r["dev"]} == {"vxlan.calico"}


_INNER = re.compile(r"IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): Flags \[(\S+)\]")


@pytest.mark.root
@pytest.mark.lab
def test_traffic_between_nodes_is_vxlan_on_the_wire(vxlan_lab, tmp_path):
    """tcpdump on node A's uplink while the client talks to the external IP:
    whatever goes to the pod on node B is UDP 4789 from A to B with the
    masqueraded connection inside, and no plain TCP to the pod crosses."""
    pod_b = next(p for p in vxlan_lab.pods if p.node == "node-b")
    with tcpdump_witness.recording("lab-node-a", "eth0", f"udp port 4789 or host {pod_b.ip}",
                                   tmp_path / "node-a-eth0.pcap") as pcap:
        result = run_traffic(requests=40, concurrency=4, target="external-ip")
    lines = tcpdump_witness.text(pcap)
    assert result.ok == 40 and result.failed == 0
    served_b = result.served_by_pod.get(pod_b.name, 0)
    assert served_b > 0
    outer = [line for line in lines if " > " in line and ".4789: VXLAN" in line]
    to_b = [line for line in outer if f"IP {NODE_A}." in line and f" > {NODE_B}.4789" in line]
    from_b = [line for line in outer if f"IP {NODE_B}." in line and f" > {NODE_A}.4789" in line]
    assert to_b and from_b and "vni 4096" in to_b[0]
    # The inner packets: the masqueraded connections to the pod on B, from A's tunnel address.
    inner = [m.groups() for m in map(_INNER.search, lines) if m]
    syns = {(s, sp) for s, sp, d, dp, flags in inner if d == pod_b.ip and flags == "S"}
    assert {s for s, _ in syns} == {TUNNEL_A} and len(syns) >= served_b
    # Every line about the pod is an inner one (tcpdump prints the outer first).
    plain = [line for line in lines if pod_b.ip in line and "VXLAN" not in line
             and not line.startswith("IP ")]
    assert plain == []


@pytest.mark.root
@pytest.mark.lab
def test_switch_back_and_forth_and_repair(vxlan_lab):
    # A device deleted by hand is put back by the next up.
    subprocess.run(["ip", "-n", "lab-node-b", "link", "del", "vxlan.calico"], check=True)
    fixed = controller.up(encap="vxlan")
    assert fixed.action == "reconciled"
    assert any("reprogrammed" in c and "no vxlan.calico" in c for c in fixed.changes)
    assert encap.problem(fixed.state) is None
    assert run_traffic(requests=10, target="external-ip").failed == 0
    # Back to none: no tunnel left, BIRD routes the blocks again, pods at 1500.
    back = controller.up()
    assert back.state.encap == "none" and "encapsulation vxlan -> none" in back.changes
    for n in back.state.nodes:
        links = netdev.links(n.netns)
        assert "vxlan.calico" not in links
        assert _routes(n.netns, "proto", "80") == set()
        assert all(links[p.veth]["mtu"] == 1500 for p in back.state.pods_on(n.name))
    assert bird.installed("lab-node-a") == {(BLOCK_B, NODE_B)}
    assert bird.installed("lab-node-b") == {(BLOCK_A, NODE_A)}
    assert run_traffic(requests=10, target="external-ip").failed == 0
    # And again: the CLI takes the mode.
    proc = subprocess.run(["tracer", "lab", "up", "--encap", "vxlan"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "encapsulation vxlan" in proc.stdout and "encapsulation none -> vxlan" in proc.stdout


@pytest.mark.root
@pytest.mark.lab
def test_down_removes_the_tunnels(vxlan_lab):
    controller.down()
    names = netdev.existing_netns()
    assert not any(n.startswith("lab-") for n in names)
    host = subprocess.run(["ip", "-j", "link", "show", "type", "vxlan"], capture_output=True,
                          text=True).stdout
    assert "vxlan.calico" not in host
    built = controller.up(encap="vxlan")
    assert built.action == "created" and encap.problem(built.state) is None
    assert run_traffic(requests=10, target="external-ip").failed == 0


@pytest.mark.root
@pytest.mark.lab
def test_encap_refused_up_front_without_kernel_support(lab, monkeypatch, tmp_path):
    """A kernel without the tunnel's module (CONFIG_NET_IPIP unset): up
    says so before it changes anything. Simulated with an empty /sys/module
    and a modprobe that loads nothing, so it holds on any kernel."""
    before = controller.up()
    monkeypatch.setattr(encap, "SYS_MODULE", tmp_path)
    monkeypatch.setattr(encap, "run", lambda *args, **kwargs: None)  # modprobe loads nothing
    with pytest.raises(LabError, match="CONFIG_NET_IPIP"):
        controller.up(encap="ipip")
    with pytest.raises(LabError, match="CONFIG_VXLAN"):
        controller.up(encap="vxlan")
    monkeypatch.undo()
    after = controller.up()
    assert after.action == "unchanged" and after.state.encap == "none" == before.state.encap
