"""The dual-stack lab's plan and configs (`lab up --ip-family dual`): IPv6
twins of every address, BIRD's IPv6 sessions (checked by bird itself),
nginx on both families, and an IPv4 lab left exactly as it was. No root."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tracer.errors import UsageError
from tracer.kube.manifest import load_manifest
from tracer.lab import bird, nginx, plan6
from tracer.lab.build import node_bird_config
from tracer.lab.plan import DEFAULT_MANIFEST, make_plan


@pytest.fixture(scope="module")
def dual():
    return make_plan(load_manifest(DEFAULT_MANIFEST), run_dir="/run/tracer-lab", ip_family="dual")


def test_every_address_has_its_twin(dual):
    assert (dual.tor.ip6, dual.client.ip6) == ("fd00:192:168:64::1", "fd00:192:168:64::10")
    assert [(n.ip6, n.pod_cidr6) for n in dual.nodes] == [
        ("fd00:192:168:64::57", "fd00:10:217:120::/120"),
        ("fd00:192:168:64::58", "fd00:10:217:121::/120")]
    # The seed's pod 10.217.120.72 on node A.
    assert [p.ip6 for p in dual.pods] == ["fd00:10:217:120::72", "fd00:10:217:121::8"]
    assert dual.ip_family == "dual"


def test_an_ipv4_plan_has_no_ipv6_at_all():
    s = make_plan(load_manifest(DEFAULT_MANIFEST), run_dir="/run/tracer-lab")
    assert s.ip_family == "ipv4"
    assert {s.tor.ip6, s.client.ip6, *(n.ip6 for n in s.nodes), *(p.ip6 for p in s.pods)} == {None}
    for n in s.nodes:
        assert "ipv6" not in node_bird_config(s, n)
    assert "ipv6" not in bird.render_tor_config(s.tor, s.nodes, asn=s.asn,
                                                cluster_cidr=s.cluster_cidr)
    assert "[::]" not in nginx.render_config(s.pods[0])


@pytest.mark.parametrize("family, encap, message", [
    ("ipv6", "none", "--ip-family must be one of ipv4, dual"),
    ("dual", "vxlan", "IPv6 routes over BGP only"),
])
def test_unsupported_families_are_refused(family, encap, message):
    with pytest.raises(UsageError, match=message):
        plan6.check_family(family, encap)


def test_nginx_listens_on_both_families(dual):
    cfg = nginx.render_config(dual.pods[0])
    assert "listen 80;" in cfg and "listen [::]:80;" in cfg


def test_bird6_sessions_and_blocks(dual):
    cfg = node_bird_config(dual, dual.nodes[0])
    assert "route fd00:10:217:120::/120 blackhole;" in cfg
    assert "neighbor fd00:192:168:64::1 as 64512;" in cfg
    tor = bird.render_tor_config(dual.tor, dual.nodes, asn=dual.asn, cluster_cidr=dual.cluster_cidr)
    assert "neighbor fd00:192:168:64::58 as 64512;" in tor
    assert "protocol bgp node_b_6" in tor


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 not installed")
def test_bird_accepts_the_dual_stack_configs(dual, tmp_path):
    configs = {"tor": bird.render_tor_config(dual.tor, dual.nodes, asn=dual.asn,
                                             cluster_cidr=dual.cluster_cidr)}
    configs |= {n.name: node_bird_config(dual, n) for n in dual.nodes}
    for name, cfg in configs.items():
        path = tmp_path / f"{name}.conf"
        path.write_text(cfg.replace("/run/tracer-lab/bird", str(tmp_path)))
        proc = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
