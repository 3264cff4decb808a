"""The Services the traffic-policy and source-range tests share: each policy
case kube-proxy distinguishes, on node-a (192.168.64.57) with one endpoint
there and one on node-b.

    ns-p/itp-local        ClusterIP, internalTrafficPolicy Local
    ns-p/itp-local-np     NodePort, internalTrafficPolicy Local, external Cluster
    ns-p/etp-local-lb     LoadBalancer, externalTrafficPolicy Local, LB IP
                          192.0.2.10 admitting 203.0.113.0/25 and the node's
                          own /24 (so kube-proxy also admits the LB IP itself)
    ns-p/itp-local-none   ClusterIP, internalTrafficPolicy Local, no endpoint
                          on node-a (kube-proxy DROPs its cluster IP)

tests/kube/data/kube_proxy_policies*.txt are these rendered and loaded into a
private namespace, then read back with iptables-nft-save and
`nft list table ip kube-proxy` (regenerate with
`python -m tests.kube.policy_services DIR` as root)."""

from __future__ import annotations

from tracer.kube.model import Endpoint, Service, ServicePort

NODE = "node-a"
NODE_IP = "192.168.64.57"
CLUSTER_CIDR = "10.217.0.0/16"
LOCAL_EP = Endpoint("10.217.1.5", 80, node=NODE)
REMOTE_EP = Endpoint("10.217.2.5", 80, node="node-b")


def _service(name: str, type_: str, ip: str, **more) -> Service:
    node_port = more.pop("node_port", None)
    return Service("ns-p", name, type_, ip, (), (ServicePort("", "TCP", 80, 80, node_port),),
                   (("app", name),), **more)


SERVICES = (
    _service("itp-local", "ClusterIP", "10.96.10.10", internal_traffic_policy="Local"),
    _service("itp-local-np", "NodePort", "10.96.10.11", node_port=30111,
             internal_traffic_policy="Local"),
    _service("etp-local-lb", "LoadBalancer", "10.96.10.12", node_port=30112,
             external_traffic_policy="Local", load_balancer_ips=("192.0.2.10",),
             load_balancer_source_ranges=("203.0.113.0/25", "192.168.64.0/24")),
    _service("itp-local-none", "ClusterIP", "10.96.10.13", internal_traffic_policy="Local"),
)
ENDPOINTS = {s.key: [LOCAL_EP, REMOTE_EP] for s in SERVICES[:3]}
ENDPOINTS[SERVICES[3].key] = [REMOTE_EP]
RENDER = {"node_ips": [NODE_IP], "cluster_cidr": CLUSTER_CIDR, "node_name": NODE}


def _regenerate(directory: str) -> None:  # pragma: no cover - a root helper
    import subprocess
    from pathlib import Path

    from tracer.kube.iptables_filter import render_filter_table
    from tracer.kube.iptables_render import render_nat_table
    from tracer.kube.nftables_render import render_kube_proxy_table

    ns = "tracer-fixture-policies"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def run(*args: str, text: str | None = None) -> str:
            return subprocess.run(["ip", "netns", "exec", ns, *args], input=text, text=True,
                                  capture_output=True, check=True).stdout

        run("iptables-restore", text=render_nat_table(SERVICES, ENDPOINTS, **RENDER))
        run("iptables-restore", "--noflush",
            text=render_filter_table(SERVICES, ENDPOINTS, node_name=NODE))
        run("nft", "-f", "-", text=render_kube_proxy_table(SERVICES, ENDPOINTS, **RENDER))
        out = Path(directory)
        out.joinpath("kube_proxy_policies.txt").write_text(run("iptables-save"))
        out.joinpath("kube_proxy_nft_policies.txt").write_text(
            run("nft", "list", "table", "ip", "kube-proxy"))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":  # pragma: no cover
    import sys

    _regenerate(sys.argv[1])
