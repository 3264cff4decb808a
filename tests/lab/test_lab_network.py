"""The running lab against independent witnesses: curl, ip route, birdc,
conntrack, tcpdump, iptables -L -v -x, the pods' access logs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests import tcpdump_witness
from tracer.lab import access_log, traffic

pytestmark = [pytest.mark.root, pytest.mark.lab]

EXTERNAL_IP = "192.168.64.57"
NODE_A, NODE_B = "192.168.64.57", "192.168.64.58"
BLOCK_A, BLOCK_B = "10.217.120.64/26", "10.217.121.0/26"


def sh(netns: str, *argv: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, timeout=30)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def curl(netns: str, url: str) -> str:
    return sh(netns, "curl", "-sS", "--max-time", "5", url)


def served_pod(page: str) -> str:
    m = re.search(r"pod=(\S+) ip=(\S+) node=(\S+)", page)
    assert m, page
    return m.group(1)


def test_namespaces_and_calico_wiring(lab_state):
    s = lab_state
    for p in s.pods:
        node = s.node(p.node)
        link = json.loads(sh(node.netns, "ip", "-j", "-d", "link", "show", p.veth))[0]
        assert link["address"] == "ee:ee:ee:ee:ee:ee"
        assert link["linkinfo"]["info_kind"] == "veth"
        assert sh(node.netns, "sysctl", "-n", f"net.ipv4.conf.{p.veth}.proxy_arp").strip() == "1"
        route = sh(node.netns, "ip", "route", "show", f"{p.ip}/32")
        assert route.split() == [p.ip, "dev", p.veth, "scope", "link"]
        assert sh(p.netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0").split()[3] == (
            f"{p.ip}/32")
        routes = sh(p.netns, "ip", "route")
        assert "default via 169.254.1.1 dev eth0" in routes
        assert "169.254.1.1 dev eth0 scope link" in routes
    # The ToR switches the LAN without passing frames to its IP firewall.
    bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    if sh(s.tor.netns, "sh", "-c", f"test -e {bridge_nf} && echo y", check=False).strip():
        assert sh(s.tor.netns, "cat", bridge_nf).strip() == "0"
    for n in s.nodes:
        assert sh(n.netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
        assert sh(n.netns, "ip", "-o", "-4", "addr", "show", "dev", "eth0").split()[3] == (
            f"{n.ip}/24")


def test_bgp_routes(lab_state):
    def bird_routes(netns):
        return {(r["dst"], r.get("gateway"), r.get("dev"))
                for r in json.loads(sh(netns, "ip", "-j", "route", "show", "proto", "bird"))}

    a, b = lab_state.node("a"), lab_state.node("b")
    assert (BLOCK_B, NODE_B, "eth0") in bird_routes(a.netns)
    assert (BLOCK_A, NODE_A, "eth0") in bird_routes(b.netns)
    tor = bird_routes(lab_state.tor.netns)
    assert {(BLOCK_A, NODE_A, "br-lan"), (BLOCK_B, NODE_B, "br-lan")} <= tor
    # The text form the docs quote, and no static route anywhere for blocks.
    assert f"{BLOCK_B} via {NODE_B} dev eth0 proto bird" in sh(a.netns, "ip", "route")
    assert "static" not in sh(lab_state.tor.netns, "ip", "route", "show", "proto", "static")
    assert sh(lab_state.tor.netns, "ip", "route", "show", "default") == ""  # no uplink
    # Each node's own block as Calico has it: a blackhole from BIRD.
    assert f"blackhole {BLOCK_A} proto bird" in sh(a.netns, "ip", "route")
    for node in (a, b):
        out = subprocess.run(["birdc", "-s", node.bird.socket, "show", "protocols"],
                             capture_output=True, text=True, check=True).stdout
        assert re.search(r"^tor\s+BGP\s+---\s+up\s+.*Established", out, re.M), out


def test_curl_external_ip_node_ports_and_cluster_ip(lab_state):
    s = lab_state
    names = {p.name for p in s.pods}
    assert served_pod(curl(s.client.netns, f"http://{EXTERNAL_IP}:8088/")) in names
    for node in s.nodes:
        assert served_pod(curl(s.client.netns, f"http://{node.ip}:30089/")) in names
    for pod in s.pods:
        assert served_pod(curl(pod.netns, "http://10.96.88.88:8088/")) in names
        assert served_pod(curl(pod.netns, "http://10.96.88.89:8089/")) in names
    # Pod IPs are routable from the client through the ToR's BGP routes, as
    # from the corporate network in the seed article.
    for pod in s.pods:
        assert served_pod(curl(s.client.netns, f"http://{pod.ip}/")) == pod.name


def test_many_new_connections_every_pod_answers_counts_add_up(lab_state):
    s = lab_state
    marks = access_log.offsets(s)
    n = 200
    r = traffic.run_traffic(requests=n, concurrency=4, state=s)
    assert (r.ok, r.failed, r.connections) == (n, 0, n)
    assert set(r.by_pod) == {p.name for p in s.pods}
    entries = access_log.read_since(marks, s)
    assert len(entries) == n
    assert access_log.count_by_pod(entries) == r.by_pod == r.served_by_pod
    # One request per connection, each a different connection of its nginx.
    assert all(e.connection_requests == 1 and e.status == 200 for e in entries)
    for p in s.pods:
        conns = [e.connection for e in entries if e.pod == p.name]
        assert len(set(conns)) == len(conns)


def test_masquerade_and_reply_path_through_the_dnat_node(lab_state, tmp_path):
    s = lab_state
    a = s.node("a")
    # Watch the client's side: every reply must come from the VIP, never
    # from a pod address (that would mean the reply skipped node A's un-NAT).
    with tcpdump_witness.recording(s.client.netns, "eth0", "tcp and dst host 192.168.64.10",
                                   tmp_path / "client-eth0.pcap") as pcap:
        marks = access_log.offsets(s)
        r = traffic.run_traffic(requests=40, concurrency=2, state=s)
    assert r.ok == 40
    out = "\n".join(tcpdump_witness.text(pcap, "-q"))
    sources = {m.group(1) for m in re.finditer(r"IP (\S+) > 192\.168\.64\.10\.\d+", out)}
    assert sources == {f"{EXTERNAL_IP}.8088"}, out[:2000]

    entries = access_log.read_since(marks, s)
    assert len(entries) == 40 and {p.name for p in s.pods} == {e.pod for e in entries}
    # The pods see node A (the DNAT node) as the client, on both nodes.
    assert {e.remote_addr for e in entries} == {a.ip}

    # Node A's conntrack has each of these connections: client -> VIP in the
    # original direction, pod -> node A (masqueraded port) in the reply.
    ct = sh(a.netns, "conntrack", "-L", "-p", "tcp", "--orig-dst", EXTERNAL_IP,
            "--orig-port-dst", "8088", check=False)
    replies = set()
    for line in ct.splitlines():
        m = re.search(r"src=192\.168\.64\.10 dst=192\.168\.64\.57 sport=\d+ dport=8088 "
                      r"src=(\S+) dst=192\.168\.64\.57 sport=80 dport=(\d+)", line)
        if m:
            replies.add((m.group(1), int(m.group(2))))
    pod_ip = {p.name: p.ip for p in s.pods}
    for e in entries:
        assert (pod_ip[e.pod], e.remote_port) in replies, e


def _sep_packets(netns: str, service: str) -> dict[str, int]:
    """KUBE-SEP DNAT packet counters from `iptables -t nat -L -v -x -n`."""
    out = sh(netns, "iptables", "-t", "nat", "-L", "-v", "-x", "-n")
    counts: dict[str, int] = {}
    chain = None
    for line in out.splitlines():
        if line.startswith("Chain "):
            chain = line.split()[1]
            continue
        if chain and chain.startswith("KUBE-SEP-") and " DNAT " in f" {line} ":
            m = re.search(r"to:(\S+)", line)
            if m and f"/* {service} */" in line:
                counts[m.group(1)] = counts.get(m.group(1), 0) + int(line.split()[0])
    return counts


def test_traffic_counts_equal_access_logs_and_kube_sep_counters(lab_state):
    s = lab_state
    a = s.node("a")
    before = _sep_packets(a.netns, "default/nginx-demo-1")
    assert set(before) == {f"{p.ip}:80" for p in s.pods}
    marks = access_log.offsets(s)
    n = 300
    r = traffic.run_traffic(requests=n, concurrency=6, target="external-ip", state=s)
    after = _sep_packets(a.netns, "default/nginx-demo-1")
    logged = access_log.count_by_pod(access_log.read_since(marks, s))
    assert r.ok == n and r.failed == 0
    assert sum(logged.values()) == n
    by_ip = {p.ip: p.name for p in s.pods}
    delta = {by_ip[k.split(":")[0]]: after[k] - before.get(k, 0) for k in after}
    assert delta == logged == r.by_pod == r.served_by_pod


def test_node_port_on_node_b_masquerades_to_node_b(lab_state):
    s = lab_state
    marks = access_log.offsets(s)
    r = traffic.run_traffic(requests=30, concurrency=3, target="node-port", node="b", state=s)
    assert r.ok == 30
    entries = access_log.read_since(marks, s)
    assert {e.remote_addr for e in entries} == {s.node("b").ip}
    assert len(entries) == 30


def test_cluster_ip_from_a_pod_keeps_the_pod_source(lab_state):
    s = lab_state
    src = s.pods[0]
    marks = access_log.offsets(s)
    r = traffic.run_traffic(requests=40, concurrency=2, target="cluster-ip", source=src.name,
                            state=s)
    assert r.ok == 40 and r.source == src.name
    entries = access_log.read_since(marks, s)
    assert len(entries) == 40
    # Pod to another pod: no masquerade (the source is inside the cluster
    # CIDR); pod to itself: hairpin masquerade to its node's address.
    for e in entries:
        expected = src.ip if e.pod != src.name else s.node(src.node).ip
        assert e.remote_addr == expected, e


def test_keepalive_reuses_connections(lab_state):
    s = lab_state
    marks = access_log.offsets(s)
    r = traffic.run_traffic(requests=100, concurrency=2, keepalive=True, state=s)
    assert r.ok == 100 and r.connections == 2
    entries = access_log.read_since(marks, s)
    assert len(entries) == 100
    assert len({(e.pod, e.connection) for e in entries}) == 2


def test_status_json_and_exec(lab_state):
    proc = subprocess.run(["tracer", "lab", "status", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["up"] and st["healthy"] and st["problems"] == []
    assert [n["name"] for n in st["nodes"]] == ["node-a", "node-b"]
    assert [n["netns"] for n in st["nodes"]] == ["lab-node-a", "lab-node-b"]
    assert all(s["established"] for n in st["nodes"] for s in n["sessions"])
    assert {(r["dst"], r["via"]) for r in st["nodes"][0]["bgp_routes"]} >= {(BLOCK_B, NODE_B)}
    assert {p["name"]: (p["ip"], p["node"], p["veth"], p["nginx_running"])
            for p in st["pods"]} == {
        p.name: (p.ip, p.node, p.veth, True) for p in lab_state.pods}
    svc = {s["name"]: s for s in st["services"]}
    assert svc["nginx-demo-1"]["cluster_ip"] == "10.96.88.88"
    assert svc["nginx-demo-1"]["external_ips"] == [EXTERNAL_IP]
    assert svc["nginx-demo-2"]["node_port"] == 30089

    text = subprocess.run(["tracer", "lab", "status"], capture_output=True, text=True)
    assert text.returncode == 0 and "healthy" in text.stdout

    rc = subprocess.run(["tracer", "lab", "exec", "node-a", "--", "sh", "-c", "exit 7"])
    assert rc.returncode == 7
    for name, ip in [("lab-node-b", NODE_B), ("b", NODE_B), ("tor", "192.168.64.1"),
                     ("client", "192.168.64.10")]:
        out = subprocess.run(["tracer", "lab", "exec", name, "--", "ip", "-4", "-o", "addr"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and f"{ip}/24" in out.stdout, (name, out)
    out = subprocess.run(["tracer", "lab", "exec", lab_state.pods[0].name, "--", "ip", "-4",
                          "-o", "addr", "show", "eth0"], capture_output=True, text=True)
    assert out.returncode == 0 and f"{lab_state.pods[0].ip}/32" in out.stdout
    out = subprocess.run(["tracer", "lab", "exec", "nope", "--", "true"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_traffic_cli_json(lab_state):
    proc = subprocess.run(["tracer", "lab", "traffic", "--requests", "25", "--concurrency", "5",
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["ok"] == 25 and r["failed"] == 0 and r["requested"] == 25
    assert sum(r["served_by_pod"].values()) == 25 and r["by_pod"] == r["served_by_pod"]
    assert set(r["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}


def test_wrk_duration_run(lab_state):
    r = traffic.run_traffic(duration=1, concurrency=4, state=lab_state)
    assert r.engine == "wrk" and r.ok > 100 and r.failed == 0
    # wrk counts completed responses; nginx may log a few more that were in
    # flight when wrk stopped, never fewer.
    assert r.served >= r.ok
    assert set(r.served_by_pod) == {p.name for p in lab_state.pods}
