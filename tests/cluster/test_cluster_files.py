"""What can be checked here of the Vagrant cluster and the deploy/ manifests,
without VMs or a cluster: `vagrant validate` (Debian's vagrant with Debian's
vagrant-libvirt, which validates the libvirt provider block; VirtualBox's is
ignored as VirtualBox is not installed), shellcheck on the provisioning
scripts, and the configuration they apply, parsed: three nodes with the
seed's addresses, Calico BGP without encapsulation, kube-proxy in iptables
mode, the shipped manifest, least-privilege capture pods. Fails (never skips)
when vagrant or shellcheck is missing: scripts/setup.sh installs them."""

from __future__ import annotations

import ipaddress
import re
import shutil
import string
import subprocess
from pathlib import Path

import pytest
import yaml

from tracer.kube.manifest import SHIPPED_MANIFEST, load_manifest
from tracer.lab import plan

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
DEPLOY = ROOT / "deploy"
VAGRANTFILE = (ROOT / "Vagrantfile").read_text()


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (scripts/setup.sh installs it)", pytrace=False)
    return path


def vagrant(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Vagrant's state (.vagrant/) and home out of the repository and ~.
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
           "VAGRANT_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    return subprocess.run([need("vagrant"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_vagrant_validate(tmp_path):
    plugins = vagrant(tmp_path, "plugin", "list")
    assert "vagrant-libvirt" in plugins.stdout, plugins.stdout + plugins.stderr
    checked = vagrant(tmp_path, "validate")  # libvirt: the default usable provider
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "validated successfully" in checked.stdout
    ignoring = vagrant(tmp_path, "validate", "--ignore-provider")
    assert ignoring.returncode == 0 and ignoring.stdout.count("Ignoring provider config") == 3


def test_vagrant_validate_catches_mistakes(tmp_path):
    """The check has teeth: a misspelt libvirt option and a missing
    provisioning script both fail it."""
    broken = tmp_path / "repo"
    shutil.copytree(VAGRANT_DIR, broken / "vagrant")
    (broken / "Vagrantfile").write_text(VAGRANTFILE.replace("lv.memory =", "lv.memmory ="))
    env = {"PATH": "/usr/bin:/bin", "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
           "VAGRANT_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    run = [need("vagrant"), "validate"]
    proc = subprocess.run(run, cwd=broken, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "memmory" in proc.stderr
    (broken / "Vagrantfile").write_text(VAGRANTFILE)
    (broken / "vagrant" / "worker.sh").unlink()
    proc = subprocess.run(run, cwd=broken, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "worker.sh" in proc.stderr


def test_provisioning_scripts_are_shellcheck_clean():
    scripts = sorted(VAGRANT_DIR.glob("*.sh"))
    assert [s.name for s in scripts] == ["control-plane.sh", "node.sh", "tracer.sh", "worker.sh"]
    proc = subprocess.run([need("shellcheck"), "--shell=sh", *map(str, scripts)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    for script in scripts:
        assert script.read_text().startswith("#!/bin/sh\n")
        assert "set -eu" in script.read_text()
        assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


def test_three_nodes_with_the_seed_addresses():
    names = re.findall(r'name: "([^"]+)", ip: "?([A-Z_0-9.]+)"?', VAGRANTFILE)
    cp_ip = re.search(r'CONTROL_PLANE_IP = "([\d.]+)"', VAGRANTFILE).group(1)
    nodes = {name: (cp_ip if ip == "CONTROL_PLANE_IP" else ip) for name, ip in names}
    assert list(nodes) == ["control-plane", "worker-1", "worker-2"]
    # worker-1 is the seed's worker, whose address is the Service's external IP.
    demo1 = load_manifest(SHIPPED_MANIFEST).service("nginx-demo-1")
    assert nodes["worker-1"] == demo1.external_ips[0] == plan.NODE_SPECS[0].ip
    assert nodes["worker-2"] == plan.NODE_SPECS[1].ip
    lan = ipaddress.ip_network(plan.LAN_CIDR)
    assert all(ipaddress.ip_address(ip) in lan for ip in nodes.values())
    # Provisioning: every node gets Kubernetes and tracer; roles get their script.
    assert 'path: "vagrant/node.sh"' in VAGRANTFILE and 'path: "vagrant/tracer.sh"' in VAGRANTFILE
    assert 'path: "vagrant/control-plane.sh"' in VAGRANTFILE and 'path: "vagrant/worker.sh"' in VAGRANTFILE
    assert "/vagrant/scripts/setup.sh" in (VAGRANT_DIR / "tracer.sh").read_text()


def test_kubeadm_config_kube_proxy_iptables_and_cidrs():
    docs = {d["kind"]: d for d in yaml.safe_load_all((VAGRANT_DIR / "kubeadm-config.yaml").read_text())}
    assert docs["KubeProxyConfiguration"]["mode"] == "iptables"
    cluster = docs["ClusterConfiguration"]["networking"]
    assert cluster["podSubnet"] == plan.CLUSTER_CIDR == docs["KubeProxyConfiguration"]["clusterCIDR"]
    # The manifest's fixed cluster IPs are inside the service CIDR.
    service_cidr = ipaddress.ip_network(cluster["serviceSubnet"])
    for service in load_manifest(SHIPPED_MANIFEST).services:
        assert ipaddress.ip_address(service.cluster_ip) in service_cidr
    # The join token: kubeadm's format, the Vagrantfile's value, filled in by the script.
    token = re.search(r'JOIN_TOKEN = "([^"]+)"', VAGRANTFILE).group(1)
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
    assert docs["InitConfiguration"]["bootstrapTokens"][0]["token"] == "@JOIN_TOKEN@"
    assert "s/@JOIN_TOKEN@/${JOIN_TOKEN}/g" in (VAGRANT_DIR / "control-plane.sh").read_text()


def test_calico_bgp_without_encapsulation():
    docs = list(yaml.safe_load_all((VAGRANT_DIR / "calico-installation.yaml").read_text()))
    (installation,) = [d for d in docs if d["kind"] == "Installation"]
    network = installation["spec"]["calicoNetwork"]
    assert network["bgp"] == "Enabled"
    pools = network["ipPools"]
    assert pools and all(p["encapsulation"] == "None" for p in pools)
    assert [p["cidr"] for p in pools] == [plan.CLUSTER_CIDR]
    assert all(p["blockSize"] == 26 for p in pools)  # the lab's per-node /26 blocks
    assert network["nodeAddressAutodetectionV4"]["cidrs"] == [plan.LAN_CIDR]


def test_the_shipped_manifest_is_applied():
    script = (VAGRANT_DIR / "control-plane.sh").read_text()
    applied = re.search(r"kubectl apply -f /vagrant/(\S+nginx-demo\.yaml)", script).group(1)
    assert ROOT / applied == SHIPPED_MANIFEST
    manifest = load_manifest(ROOT / applied)
    assert [s.name for s in manifest.services] == ["nginx-demo-1", "nginx-demo-2"]
    assert manifest.deployments[0].replicas == 2


def capture_pod_specs() -> list[tuple[str, dict]]:
    job = string.Template((DEPLOY / "capture-job.yaml").read_text()).substitute(
        job_name="tracer-abc-worker-1", namespace="tracer", run_id="abc", node="worker-1",
        node_label="worker-1", image="localhost/tracer:latest", service="nginx-demo-1",
        duration="10", keep_seconds="600", deadline_seconds="1210")
    (job_doc,) = yaml.safe_load_all(job)
    (daemonset,) = yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text())
    return [("capture-job", job_doc["spec"]["template"]["spec"]),
            ("daemonset", daemonset["spec"]["template"]["spec"])]


@pytest.mark.parametrize("which", ["capture-job", "daemonset"])
def test_capture_pods_have_least_privilege(which):
    spec = dict(capture_pod_specs())[which]
    assert spec["hostNetwork"] is True and spec["hostPID"] is False
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == ["BPF", "PERFMON", "NET_ADMIN"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf", "/run/netns",
                 "/lib/modules", "/usr/src"):
        assert mounts[path]["readOnly"] is True, path
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume and mount["mountPath"] != "/captures":
            assert volume["hostPath"]["path"] == mount["mountPath"]
    # Every capability the README explains, and no other.
    readme = (DEPLOY / "README.md").read_text()
    for cap in sc["capabilities"]["add"]:
        assert f"`CAP_{cap}`" in readme


def test_namespace_and_containerfile():
    namespace, account = yaml.safe_load_all((DEPLOY / "namespace.yaml").read_text())
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert account["automountServiceAccountToken"] is False
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert "python3-bpfcc" in containerfile and "nftables" in containerfile
    assert "pip install --no-cache-dir -e /opt/tracer" in containerfile
