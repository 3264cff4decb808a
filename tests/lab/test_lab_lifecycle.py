"""up / down / reconcile against the running kernel: idempotence, recovery from
half-failed builds, scaling, and that the host is left exactly as it was.

Every test leaves the default lab up for the tests after it (the session's
`lab` fixture takes it down at the end)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tracer.lab import access_log, controller, kubeproxy, procs, traffic
from tracer.lab.state import RUN_DIR, load_state, try_load_state

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _out(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


def host_snapshot() -> dict[str, object]:
    """What the lab must never change in the namespace the tests run in."""
    sysctls = {}
    for p in [Path("/proc/sys/net/ipv4/ip_forward"),
              *sorted(Path("/proc/sys/net/ipv4/conf/all").iterdir()),
              *sorted(Path("/proc/sys/net/ipv4/conf/default").iterdir()),
              *sorted(Path("/proc/sys/net/bridge").glob("*"))]:
        with contextlib.suppress(OSError):
            sysctls[str(p)] = p.read_text()
    return {
        # -o: one line per link; statistics are not part of it.
        "links": _out("ip", "-o", "link", "show"),
        "addrs": _out("ip", "-o", "addr", "show"),
        "routes": _out("ip", "route", "show", "table", "all"),
        "rules": _out("ip", "rule", "show"),
        "iptables": re.sub(r"\[\d+:\d+\]", "", "\n".join(
            line for line in _out("iptables-save").splitlines() if not line.startswith("#"))),
        "sysctls": sysctls,
    }


def lab_leftovers() -> list[str]:
    found = []
    netns = _out("ip", "netns", "list")
    found += [f"netns {n.split()[0]}" for n in netns.splitlines()
              if n.startswith(("lab-tor", "lab-client", "lab-node-", "lab-pod-"))]
    for name in os.listdir("/sys/class/net"):
        if name.startswith(("cali", "lan-", "br-lan")):
            found.append(f"host link {name}")
    host = os.stat("/proc/self/ns/net").st_ino
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not procs.alive(pid := int(entry)):
            continue
        # Ours by command line (masters, bird), or any nginx/bird outside the
        # host's namespace (workers, whose command line names nothing).
        if str(RUN_DIR) in procs.cmdline(pid) or (
                procs.comm(pid) in ("nginx", "bird") and procs.netns_inode(pid) != host):
            found.append(f"process {pid}: {procs.cmdline(pid)}")
    if RUN_DIR.exists():
        found.append(f"run dir {RUN_DIR}")
    return found


def no_cali_in_any_netns() -> bool:
    for n in _out("ip", "netns", "list").split("\n"):
        if n.strip():
            name = n.split()[0]
            links = subprocess.run(["ip", "-n", name, "-o", "link"], capture_output=True,
                                   text=True).stdout
            if "cali" in links:
                return False
    return True


def test_down_removes_everything_and_the_host_is_unchanged(lab):
    old = load_state()
    controller.down()
    assert lab_leftovers() == []
    before = host_snapshot()
    try:
        state = controller.up().state
        r = traffic.run_traffic(requests=50, concurrency=5, state=state)
        assert r.ok == 50
        pids = [state.tor.bird.pid, *(n.bird.pid for n in state.nodes),
                *(p.nginx.pid for p in state.pods)]
        assert all(procs.alive(p) for p in pids)
        result = controller.down()
        assert set(result.namespaces) == set(state.namespaces)
        assert set(pids) <= set(result.processes)
        assert not any(procs.alive(p) for p in pids)
        assert lab_leftovers() == []
        assert no_cali_in_any_netns()
        assert host_snapshot() == before
        # down is idempotent
        again = controller.down()
        assert not again.was_up
        proc = subprocess.run(["tracer", "lab", "down"], capture_output=True, text=True)
        assert proc.returncode == 0 and "nothing to remove" in proc.stdout
        # status of a lab that is down: exit 1, says so
        st = subprocess.run(["tracer", "lab", "status"], capture_output=True, text=True)
        assert st.returncode == 1 and "lab: down" in st.stdout
    finally:
        new = controller.up().state
    assert [p.name for p in new.pods] == [p.name for p in old.pods]


def test_down_finds_processes_in_namespaces_no_longer_named(lab_state):
    """A pod netns deleted by hand keeps living while its nginx runs in it;
    down still stops that nginx (and its worker) and removes its veth."""
    victim = lab_state.pods[0]
    subprocess.run(["ip", "netns", "del", victim.netns], check=True)
    assert procs.alive(victim.nginx.pid)
    try:
        controller.down()
        assert lab_leftovers() == []
        assert not procs.alive(victim.nginx.pid)
    finally:
        controller.up()


def test_up_twice_is_a_fast_noop_that_keeps_counters(lab_state):
    s = lab_state
    r = traffic.run_traffic(requests=20, state=s)
    assert r.ok == 20
    counters = kubeproxy.dnat_counters(s.node("a").netns, "nginx-demo-1")
    t0 = time.monotonic()
    again = controller.up()
    assert time.monotonic() - t0 < 1.0
    assert again.action == "unchanged"
    assert again.state == s
    assert kubeproxy.dnat_counters(s.node("a").netns, "nginx-demo-1") == counters
    proc = subprocess.run(["tracer", "lab", "up"], capture_output=True, text=True)
    assert proc.returncode == 0 and "lab unchanged" in proc.stdout


def test_replicas_3_then_back_to_2(lab_reup):
    two = load_state()
    three = lab_reup(replicas=3)
    assert [(p.node, p.ip) for p in three.pods] == [
        ("node-a", "10.217.120.72"), ("node-b", "10.217.121.8"), ("node-a", "10.217.120.73")]
    # Scaling up keeps the running pods (same nginx processes).
    assert three.pods[:2] == two.pods
    a = three.node("a")
    nat = subprocess.run(["ip", "netns", "exec", a.netns, "iptables-save", "-t", "nat"],
                         capture_output=True, text=True, check=True).stdout
    svc_chain = re.search(r'-A KUBE-SERVICES .*--comment "default/nginx-demo-1 cluster IP".*'
                          r"-j (KUBE-SVC-\S+)", nat).group(1)
    lb = [line for line in nat.splitlines()
          if line.startswith(f"-A {svc_chain} ") and "KUBE-SEP-" in line]
    assert len(lb) == 3
    probs = [float(m.group(1)) if (m := re.search(r"--probability (\S+)", x)) else None
             for x in lb]
    assert probs[0] == pytest.approx(1 / 3, abs=1e-6)
    assert probs[1] == pytest.approx(1 / 2, abs=1e-6)
    assert probs[2] is None
    assert sorted(re.search(r"--to-destination (\S+)", x).group(1) for x in nat.splitlines()
                  if x.startswith("-A KUBE-SEP-") and "nginx-demo-1 " not in x
                  and "default/nginx-demo-1" in x and "DNAT" in x) == sorted(
        f"{p.ip}:80" for p in three.pods)

    r = traffic.run_traffic(requests=300, concurrency=6, state=three)
    assert r.ok == 300 and set(r.by_pod) == {p.name for p in three.pods}
    assert r.by_pod == r.served_by_pod

    back = lab_reup(replicas=None)
    assert back.pods == two.pods
    assert not Path(three.pods[2].nginx.root).parent.exists()
    assert three.pods[2].netns not in _out("ip", "netns", "list")
    nat = subprocess.run(["ip", "netns", "exec", a.netns, "iptables-save", "-t", "nat"],
                         capture_output=True, text=True, check=True).stdout
    assert three.pods[2].ip not in nat


def test_up_recovers_after_bird_was_killed(lab_state):
    s = lab_state
    os.kill(s.node("b").bird.pid, signal.SIGKILL)
    st = subprocess.run(["tracer", "lab", "status", "--json"], capture_output=True, text=True)
    assert st.returncode == 1 and "bird of node-b is not running" in st.stdout
    result = controller.up()
    assert result.action == "created"  # infrastructure broken: rebuilt
    assert traffic.run_traffic(requests=20, state=result.state).ok == 20


def test_up_recovers_after_a_pod_namespace_was_deleted(lab_state):
    s = lab_state
    victim = s.pods[1]
    subprocess.run(["ip", "netns", "del", victim.netns], check=True)
    result = controller.up()
    assert result.action == "reconciled"
    assert any(victim.name in c for c in result.changes)
    new = result.state
    assert new.pod(victim.name).nginx.pid != victim.nginx.pid
    assert new.pods[0] == s.pods[0]  # the other pod was left alone
    assert not procs.alive(victim.nginx.pid)  # the old nginx was stopped
    r = traffic.run_traffic(requests=60, state=new)
    assert r.ok == 60 and set(r.by_pod) == {p.name for p in new.pods}


def test_up_recovers_after_nginx_died(lab_state):
    s = lab_state
    os.kill(s.pods[0].nginx.pid, signal.SIGKILL)
    result = controller.up()
    assert result.action == "reconciled"
    assert traffic.run_traffic(requests=40, state=result.state).failed == 0


def test_up_recovers_after_an_interrupted_up(lab):
    """SIGKILL a `tracer lab up` in the middle of its build (nothing of ours
    runs to clean up), then `up` again."""
    controller.down()
    proc = subprocess.Popen(["tracer", "lab", "up"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # Wait until the build is under way (namespaces exist), then kill it.
    deadline = time.monotonic() + 10
    while "lab-node-a" not in _out("ip", "netns", "list") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert try_load_state() is None  # state is written only once the lab is up
    result = controller.up()
    assert result.action == "created"
    assert traffic.run_traffic(requests=40, state=result.state).ok == 40
    # Nothing of the interrupted build survived: one bird per router, one
    # nginx master per pod.
    masters = [int(e) for e in os.listdir("/proc") if e.isdigit() and procs.alive(int(e))
               and procs.cmdline(int(e)).startswith("nginx: master")
               and str(RUN_DIR) in procs.cmdline(int(e))]
    assert sorted(masters) == sorted(p.nginx.pid for p in result.state.pods)
    birds = [int(e) for e in os.listdir("/proc") if e.isdigit() and procs.alive(int(e))
             and procs.comm(int(e)) == "bird" and str(RUN_DIR) in procs.cmdline(int(e))]
    assert len(birds) == 3


def test_up_sweeps_leftover_namespaces_without_state(lab):
    controller.down()
    subprocess.run(["ip", "netns", "add", "lab-node-a"], check=True)
    subprocess.run(["ip", "netns", "add", "lab-pod-ghost-0123456789-abcde"], check=True)
    st = subprocess.run(["tracer", "lab", "status"], capture_output=True, text=True)
    assert st.returncode == 1 and "without state" in st.stdout
    result = controller.up()
    assert result.action == "created"
    assert "lab-pod-ghost-0123456789-abcde" not in _out("ip", "netns", "list")
    assert traffic.run_traffic(requests=10, state=result.state).ok == 10


def test_access_log_reader_by_pod_name(lab_state):
    s = lab_state
    marks = access_log.offsets(s)
    traffic.run_traffic(requests=30, state=s)
    total = 0
    for p in s.pods:
        entries = access_log.read_access_log(p.name, offset=marks[p.name])
        assert all(e.pod == p.name and e.server_addr == p.ip for e in entries)
        total += len(entries)
    assert total == 30
