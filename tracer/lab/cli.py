"""`tracer lab ...` commands: parse options, call tracer.lab, print. The
library is imported inside each command so `tracer --help` stays fast."""

from __future__ import annotations

import json

import click


@click.group("lab")
def lab() -> None:
    """The built-in lab: the seed article's two Kubernetes nodes in network
    namespaces (kube-proxy iptables or nftables rules, Calico-style BGP routing with BIRD,
    optionally Calico's VXLAN or IPIP tunnels between the nodes, nginx pods). All commands
    need root."""


@lab.command("up")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Kubernetes manifest to deploy (default: the shipped nginx-demo.yaml).")
@click.option("--replicas", type=click.IntRange(min=0), default=None,
              help="Override every Deployment's replica count.")
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds to wait for BGP to converge.")
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default="iptables",
              show_default=True,
              help="kube-proxy mode whose rules the nodes get: the nat table (iptables) "
                   "or table ip kube-proxy (nftables).")
@click.option("--encap", type=click.Choice(["none", "vxlan", "ipip"]), default="none",
              show_default=True,
              help="Calico's encapsulation between the nodes: none (BGP routes only), vxlan "
                   "(vxlan.calico, VNI 4096, UDP 4789) or ipip (tunl0; needs CONFIG_NET_IPIP).")
@click.option("--ip-family", type=click.Choice(["ipv4", "dual"]), default="ipv4",
              show_default=True,
              help="dual: every host, node and pod gets an IPv6 address too (fd00:... twins "
                   "of the IPv4 ones), and BGP routes the IPv6 pod blocks.")
@click.option("--json", "as_json", is_flag=True, help="Print the lab state as JSON.")
def up_command(manifest: str | None, replicas: int | None, timeout: float, proxy_mode: str,
               encap: str, ip_family: str, as_json: bool) -> None:
    """Build the lab, or bring it in line with the manifest (idempotent)."""
    from tracer.lab import controller

    result = controller.up(manifest, replicas, timeout=timeout, proxy_mode=proxy_mode,
                           encap=encap, ip_family=ip_family)
    if as_json:
        click.echo(json.dumps({"action": result.action, "seconds": round(result.seconds, 3),
                               "changes": list(result.changes),
                               "state": json.loads(result.state.to_json())},
                              indent=2, sort_keys=True))
        return
    s = result.state
    click.echo(f"lab {result.action} in {result.seconds:.2f}s: {len(s.nodes)} nodes, "
               f"{len(s.pods)} pods, {len(s.services)} services, kube-proxy {s.proxy_mode} mode, "
               f"encapsulation {s.encap}" + (", dual stack" if s.ip_family == "dual" else ""))
    for change in result.changes:
        click.echo(f"  {change}")
    for p in s.pods:
        click.echo(f"  pod {p.name} on {p.node} {p.ip}" + (f" {p.ip6}" if p.ip6 else "")
                   + f" ({p.veth})")
    for svc in s.services:
        addrs = [a for a in (svc.cluster_ip, *svc.external_ips) if a]
        np = f", nodePort {svc.node_port}" if svc.node_port else ""
        click.echo(f"  service {svc.name}: {', '.join(addrs)} port {svc.port}{np}")


@lab.command("down")
@click.option("--json", "as_json", is_flag=True)
def down_command(as_json: bool) -> None:
    """Remove every namespace, process and file the lab made (idempotent)."""
    from tracer.lab import controller

    result = controller.down()
    if as_json:
        click.echo(json.dumps({"namespaces": list(result.namespaces),
                               "processes": list(result.processes),
                               "run_dir_removed": result.run_dir_removed,
                               "seconds": round(result.seconds, 3)}, indent=2, sort_keys=True))
    elif result.was_up:
        click.echo(f"lab down in {result.seconds:.2f}s: removed {len(result.namespaces)} "
                   f"namespaces, stopped {len(result.processes)} processes")
    else:
        click.echo("lab was not up: nothing to remove")


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON for scripts.")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool) -> int:
    """Nodes, pods, BGP sessions and routes, services. Exit 0 when the lab is
    up and healthy, 1 otherwise."""
    from tracer.lab import status

    st = status.status()
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(status.format_status(st))
    return 0 if st.up and st.healthy else 1


@lab.group("fault")
def fault_commands() -> None:
    """Break the lab the way real clusters break (tracer/lab/fault_kinds.py)."""


@fault_commands.command("add")
@click.argument("kind")
@click.option("--node", default=None, help="Node to break (a, b, node-a, ...).")
@click.option("--pod", default=None, help="Pod to break (faults that act on one pod).")
def fault_add_command(kind: str, node: str | None, pod: str | None) -> None:
    """Inject fault KIND (tracer lab fault list shows the kinds)."""
    from tracer.lab import controller

    fault = controller.add_fault(kind, node=node, pod=pod)
    click.echo(f"fault added: {fault.describe()}")


@fault_commands.command("list")
def fault_list_command() -> None:
    """The fault kinds, and the faults in effect."""
    from tracer.lab import controller

    for line in controller.fault_lines():
        click.echo(line)


@fault_commands.command("clear")
@click.argument("kind", required=False)
def fault_clear_command(kind: str | None) -> None:
    """Take back every fault, or those of KIND."""
    from tracer.lab import controller

    cleared = controller.clear_faults(kind)
    click.echo("\n".join(f"fault cleared: {f.describe()}" for f in cleared) or "no fault to clear")


@lab.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def exec_command(name: str, argv: tuple[str, ...]) -> int:
    """Run a command inside a lab namespace: NAME is client, tor, node-a (or
    a), node-b, a pod name, or a lab-* namespace (lab-node-a, lab-pod-...).
    Exits with its exit code.

    Example: tracer lab exec node-a -- iptables -t nat -L KUBE-SERVICES -n"""
    from tracer.lab import controller

    args = list(argv)
    if args[:1] == ["--"]:
        args = args[1:]
    return controller.exec_in(name, args)


@lab.command("traffic")
@click.option("--requests", "-n", type=click.IntRange(min=1), default=None,
              help="Exact number of requests (default 100 unless --duration).")
@click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Run wrk for this many seconds instead of an exact count.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--target",
              type=click.Choice(["external-ip", "node-port", "cluster-ip", "load-balancer"]),
              default="external-ip", show_default=True)
@click.option("--keepalive", is_flag=True, help="Reuse connections (default: one per request).")
@click.option("--node", type=click.Choice(["a", "b"]), default="a", show_default=True,
              help="Node whose IP the node-port target uses.")
@click.option("--from", "source", default=None,
              help="client, a node (a, node-b) or a pod name (default: client; a pod for "
                   "cluster-ip).")
@click.option("--clients", type=click.IntRange(min=1), default=None,
              help="Spread the connections over the client's first N addresses in turn "
                   "(session affinity, source ranges); results per address.")
@click.option("--service", default=None, help="Service to target (default: the first that fits).")
@click.option("--family", type=click.Choice(["ipv4", "ipv6"]), default="ipv4", show_default=True,
              help="Address family of the target (ipv6: a dual-stack lab's IPv6 Service addresses).")
@click.option("--path", default="/", show_default=True,
              help="URL path to request (every pod serves /large, a 64 KiB page, as well).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds each connect and read may take.")
@click.option("--json", "as_json", is_flag=True)
def traffic_command(requests, duration, concurrency, target, keepalive, node, source, clients,
                    service, family, path, timeout, as_json) -> int:
    """Send real HTTP requests to a lab Service and report what happened
    (to a UDP Service: DNS queries, each from a new source port, answered by
    the pods' dnsmasq). Exits 1 if any request failed."""
    from tracer.lab import traffic

    result = traffic.run_traffic(
        requests=requests, duration=duration, concurrency=concurrency, target=target,
        keepalive=keepalive, node=node, source=source, service=service, path=path,
        timeout=timeout, clients=clients, family=family,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(traffic.format_result(result))
    return 1 if result.failed else 0
