"""BIRD and nginx config rendering, birdc parsing, state JSON. No root needed
(bird and nginx check the configs' syntax themselves where they can)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tracer.errors import LabError, UsageError
from tracer.kube.manifest import load_manifest
from tracer.lab import bird, nginx
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan
from tracer.lab.state import LabState, load_state, save_state, try_load_state


@pytest.fixture(scope="module")
def planned():
    return make_plan(load_manifest(DEFAULT_MANIFEST), run_dir="/run/tracer-lab")


def _node_cfg(s, i=0):
    return bird.render_node_config(s.nodes[i], tor_ip=s.tor.ip, asn=s.asn,
                                   cluster_cidr=s.cluster_cidr)


def test_node_bird_config_is_calico_like(planned):
    cfg = _node_cfg(planned)
    assert "router id 192.168.64.57;" in cfg
    assert "route 10.217.120.64/26 blackhole;" in cfg
    assert "local 192.168.64.57 as 64512;" in cfg
    assert "neighbor 192.168.64.1 as 64512;" in cfg
    assert "filter calico_export_to_bgp_peers" in cfg
    assert "export filter calico_kernel_programming" in cfg
    assert 'interface -"cali*", "*";' in cfg
    assert 'log "/run/tracer-lab/bird/node-a.log" all;' in cfg
    assert "10.217.121.0/26" not in cfg  # only its own block


def test_tor_bird_config_is_a_route_reflector(planned):
    cfg = bird.render_tor_config(planned.tor, planned.nodes, asn=64512,
                                 cluster_cidr=planned.cluster_cidr)
    assert "router id 192.168.64.1;" in cfg
    assert cfg.count("rr client;") == 2
    assert "neighbor 192.168.64.57 as 64512;" in cfg
    assert "neighbor 192.168.64.58 as 64512;" in cfg
    assert "protocol bgp node_a" in cfg and "protocol bgp node_b" in cfg
    assert "blackhole" not in cfg  # the ToR owns no block
    assert "static" not in cfg  # and has no static routes: all comes from BGP


@pytest.mark.skipif(shutil.which("bird", path="/usr/sbin:/usr/bin") is None,
                    reason="bird2 not installed")
def test_bird_accepts_the_configs(planned, tmp_path):
    configs = {
        "tor": bird.render_tor_config(planned.tor, planned.nodes, asn=64512,
                                      cluster_cidr=planned.cluster_cidr),
        "node-a": _node_cfg(planned, 0),
        "node-b": _node_cfg(planned, 1),
    }
    for name, cfg in configs.items():
        path = tmp_path / f"{name}.conf"
        # Log into tmp: `bird -p` opens the log file while parsing.
        path.write_text(cfg.replace("/run/tracer-lab/bird", str(tmp_path)))
        proc = subprocess.run(["/usr/sbin/bird", "-p", "-c", str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


BIRDC = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
static1    Static     master4    up     2026-11-25 10:42:22
kernel1    Kernel     master4    up     2026-11-25 10:42:22
device1    Device     ---        up     2026-11-25 10:42:22
direct1    Direct     ---        up     2026-11-25 10:42:22
tor        BGP        ---        up     2026-11-25 10:42:23  Established
node_b     BGP        ---        start  2026-11-25 10:42:23  Active    Socket: Connection refused
"""


def test_parse_birdc_protocols():
    protos = bird.parse_protocols(BIRDC)
    assert [p.name for p in protos] == ["static1", "kernel1", "device1", "direct1", "tor",
                                        "node_b"]
    tor, node_b = protos[-2:]
    assert tor.established and tor.proto == "BGP" and tor.since == "2026-11-25 10:42:23"
    assert not node_b.established
    assert node_b.state == "start" and node_b.info.startswith("Active")
    assert "Connection refused" in node_b.info


def test_expected_routes(planned):
    want = bird.expected_routes(planned.nodes)
    assert want == {
        "lab-node-a": {("10.217.121.0/26", "192.168.64.58")},
        "lab-node-b": {("10.217.120.64/26", "192.168.64.57")},
    }


def test_nginx_config(planned):
    pod = planned.pods[0]
    cfg = nginx.render_config(pod)
    base = f"/run/tracer-lab/pods/{pod.name}"
    assert f"pid {base}/nginx.pid;" in cfg
    assert f"access_log {base}/access.log lab;" in cfg
    assert f"error_log {base}/error.log warn;" in cfg
    assert "listen 80;" in cfg
    assert f"client_body_temp_path {base}/tmp/body;" in cfg
    assert "/var/log/nginx" not in cfg and "/var/lib/nginx" not in cfg
    page = nginx.render_page(pod)
    assert f"pod={pod.name} ip=10.217.120.72 node=node-a" in page


def test_nginx_log_format_is_json():
    # What nginx substitutes, then the line must be one JSON object.
    sample = {
        "$time_iso8601": "2026-11-25T10:42:24+00:00", "$msec": "1795603344.835",
        "$remote_addr": "192.168.64.57", "$remote_port": "38424",
        "$server_addr": "10.217.121.8", "$server_port": "80", "$connection": "1",
        "$connection_requests": "1", "$request": "GET / HTTP/1.1", "$status": "200",
        "$bytes_sent": "460", "$request_time": "0.000",
    }
    line = nginx.LOG_FORMAT.replace("{pod}", "p1")
    for var in sorted(sample, key=len, reverse=True):
        line = line.replace(var, sample[var])
    d = json.loads(line)
    assert d["remote_addr"] == "192.168.64.57" and d["connection"] == 1 and d["pod"] == "p1"


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None,
                    reason="nginx-light not installed")
@pytest.mark.root
def test_nginx_accepts_the_config(planned, tmp_path):
    from dataclasses import replace

    from tracer.lab.plan import nginx_files

    pod = replace(planned.pods[0], nginx=nginx_files(tmp_path, planned.pods[0].name))
    nginx.prepare(pod)
    tmp_path.chmod(0o755)
    proc = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-c", pod.nginx.config, "-e", pod.nginx.error_log,
         "-p", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_state_json_round_trip(planned, tmp_path):
    from dataclasses import replace

    s = replace(planned, run_dir=str(tmp_path))
    save_state(s)
    back = load_state(tmp_path)
    assert back == s
    assert isinstance(back.pods, tuple) and isinstance(back.pods[0].ports, tuple)
    assert json.loads((tmp_path / "state.json").read_text())["schema"] == 1


def test_state_missing_or_garbage(tmp_path):
    assert try_load_state(tmp_path) is None
    with pytest.raises(LabError, match="tracer lab up"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    assert try_load_state(tmp_path) is None
    (tmp_path / "state.json").write_text('{"schema": 999}')
    assert try_load_state(tmp_path) is None


def test_state_lookups(planned):
    s: LabState = planned
    a, b = s.pods
    assert s.node("a").name == "node-a" and s.node("lab-node-b").name == "node-b"
    assert s.node("node-b").netns == "lab-node-b" and s.node("192.168.64.57").name == "node-a"
    assert s.pod(a.ip) == a and s.pod(b.netns) == b
    assert s.pods_on("b") == (b,)
    assert s.netns_of("client") == "lab-client"
    assert s.netns_of("tor") == "lab-tor"
    assert s.netns_of("a") == "lab-node-a" and s.netns_of("node-b") == "lab-node-b"
    assert s.netns_of(a.name) == a.netns
    assert s.netns_of("lab-node-b") == "lab-node-b"
    assert s.namespaces[:4] == ("lab-tor", "lab-client", "lab-node-a", "lab-node-b")
    with pytest.raises(UsageError, match="no lab namespace"):
        s.netns_of("nope")
    with pytest.raises(UsageError, match="no lab node"):
        s.node("c")
