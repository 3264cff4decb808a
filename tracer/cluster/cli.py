"""`tracer cluster ...` commands: parse options, call tracer.cluster, print.
The library is imported inside each command so `tracer --help` stays fast."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("cluster")
def cluster() -> None:
    """Many nodes of a real Kubernetes cluster, through kubectl: per-node
    capture Jobs (deploy/), collected and merged on this machine."""


@cluster.command("capture")
@click.option("--svc", "service", required=True, metavar="[NAMESPACE/]NAME",
              help="Service to trace; each node resolves it from its own kube-proxy rules.")
@click.option("--nodes", default="", metavar="A,B,...",
              help="Nodes to capture on (default: every node).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), required=True,
              metavar="S", help="Seconds each node captures, from when its probes are attached.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              metavar="DIR", help="New directory: nodes/<node>/ captures and merged/.")
@click.option("--image", default=None, help="Container image with tracer (deploy/Containerfile).")
@click.option("--namespace", default=None, help="Namespace of the capture Jobs (default: tracer).")
@click.option("--kubectl", "kubectl_program", default="kubectl", show_default=True,
              help="kubectl to run.")
@click.option("--context", default=None, help="kubeconfig context.")
@click.option("--templates", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory with capture-job.yaml (default: the repository's deploy/).")
@click.option("--start-timeout", type=float, default=300.0, show_default=True,
              help="Seconds for every node's probes to attach.")
@click.option("--keep", is_flag=True, help="Leave the Jobs in the cluster (for a look).")
def capture_command(service: str, nodes: str, duration: float, output: Path, image: str | None,
                    namespace: str | None, kubectl_program: str, context: str | None,
                    templates: Path | None, start_timeout: float, keep: bool) -> None:
    """Capture one Service on many nodes at once and merge the captures."""
    from tracer.cluster.capture import ClusterCaptureOptions, run_cluster_capture
    from tracer.cluster.jobs import DEFAULT_IMAGE, DEFAULT_NAMESPACE

    opts = ClusterCaptureOptions(
        service=service, duration=duration, output=output,
        nodes=tuple(n.strip() for n in nodes.split(",") if n.strip()),
        image=image or DEFAULT_IMAGE, namespace=namespace or DEFAULT_NAMESPACE,
        kubectl=kubectl_program, context=context, templates=templates,
        start_timeout=start_timeout, keep=keep,
    )
    result = run_cluster_capture(opts, progress=lambda s: click.echo(s, err=True))
    for line in result.lines():
        click.echo(line)
