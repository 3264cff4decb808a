"""`tracer cluster capture`: the same per-node capture the lab tests exercise
(`tracer capture --svc ... --duration S`), run on selected Kubernetes nodes as
Jobs, collected with kubectl, merged with tracer.analysis.correlate.

Steps, each one kubectl call or a few:
  1. `get nodes`: which nodes there are; --nodes must name some of them;
  2. `apply -f -` one Job per node (deploy/capture-job.yaml);
  3. `get pods -l tracer.dev/run=RUN` until every node's pod is Ready (its
     probes are attached: the capture wrote its metadata file), then the duration;
  4. per pod: `exec ... cat /captures/.done` until the capture has exited
     (its exit code), `exec ... tar` of /captures/NODE into OUT/nodes/NODE,
     `exec ... touch /captures/.collected` so the pod ends;
  5. `delete job -l tracer.dev/run=RUN` (unless keep);
  6. merge the node captures into OUT/merged (two nodes or more).
"""

from __future__ import annotations

import io
import secrets
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.capfile import read_meta
from tracer.cluster.jobs import (
    DEFAULT_IMAGE,
    DEFAULT_NAMESPACE,
    RUN_LABEL,
    JobSpec,
    load_template,
    render_job,
)
from tracer.cluster.kubectl import Kubectl, KubectlError
from tracer.errors import TracerError, UsageError
from tracer.option_checks import seconds
from tracer.safe_output import output_dir

CAPTURES = "/captures"


class ClusterCaptureError(TracerError):
    """A node's capture did not start, failed, or could not be collected."""


@dataclass(frozen=True)
class ClusterCaptureOptions:
    service: str
    duration: float
    output: Path
    nodes: tuple[str, ...] = ()  # empty: every node
    image: str = DEFAULT_IMAGE
    namespace: str = DEFAULT_NAMESPACE
    kubectl: str = "kubectl"
    context: str | None = None
    templates: Path | None = None
    start_timeout: float = 300.0  # image pull + BCC compile + attach
    finish_timeout: float = 120.0  # after the duration, for the capture to write and exit
    poll_interval: float = 2.0
    keep: bool = False  # leave the Jobs (and pods) for a look
    run_id: str | None = None


@dataclass
class NodeCapture:
    node: str
    pod: str
    path: Path
    exit_code: int


@dataclass
class ClusterCaptureResult:
    run_id: str
    output: Path
    nodes: list[NodeCapture] = field(default_factory=list)
    merged: Path | None = None
    merge_summary: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"cluster capture {self.run_id}: {len(self.nodes)} nodes -> {self.output}"]
        out += [f"  {n.node}: {n.path} (pod {n.pod})" for n in self.nodes]
        if self.merged is not None:
            out += [f"  merged -> {self.merged}", *(f"    {line}" for line in self.merge_summary)]
        else:
            out.append("  one node: nothing to merge")
        return out


def run_cluster_capture(
    opts: ClusterCaptureOptions,
    progress: Callable[[str], None] = lambda s: None,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterCaptureResult:
    seconds(opts.duration, "--duration")  # inf or nan would never end (nor fit a deadline)
    seconds(opts.start_timeout, "--start-timeout")
    out = Path(opts.output)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty: give a new directory")
    # The caller's own directory, 0700 (tracer.safe_output), before any Job runs.
    output_dir(out).close()
    kubectl = Kubectl(program=opts.kubectl, context=opts.context, namespace=opts.namespace)
    template = load_template(opts.templates)
    run_id = opts.run_id or secrets.token_hex(3)

    nodes = _select_nodes(kubectl, opts.nodes)
    specs = [JobSpec(run_id=run_id, node=n, service=opts.service, duration=opts.duration,
                     image=opts.image, namespace=opts.namespace) for n in nodes]
    manifests = [render_job(s, template) for s in specs]  # all checked before any is applied

    result = ClusterCaptureResult(run_id=run_id, output=out)
    progress(f"tracer: starting captures of {opts.service} on {', '.join(nodes)} (run {run_id})")
    try:
        kubectl.run(["apply", "-f", "-"], input="---\n".join(manifests))
        pods = _wait_ready(kubectl, run_id, nodes, opts, sleep)
        progress(f"tracer: all {len(nodes)} captures attached; capturing for {opts.duration:g}s")
        sleep(opts.duration)
        output_dir(out / "nodes").close()
        for node in nodes:
            code = _wait_done(kubectl, pods[node], node, opts, sleep)
            path = _collect(kubectl, pods[node], node, out / "nodes")
            result.nodes.append(NodeCapture(node=node, pod=pods[node], path=path, exit_code=code))
            progress(f"tracer: collected {node}")
    finally:
        if not opts.keep:
            try:
                kubectl.run(["delete", "job", "-l", f"{RUN_LABEL}={run_id}", "--wait=false"])
            except TracerError as exc:
                progress(f"tracer: cleanup failed ({exc}); delete the Jobs labelled {RUN_LABEL}={run_id}")
    if len(result.nodes) >= 2:
        from tracer.analysis.correlate import merge

        merged = merge([str(n.path) for n in result.nodes], out / "merged")
        result.merged = Path(merged.path)
        result.merge_summary = [
            f"{merged.events} events from {len(merged.nodes)} nodes",
            *merged.clocks.summary(),
            f"{merged.links} cross-node packet hops matched",
        ]
    return result


def _select_nodes(kubectl: Kubectl, wanted: Sequence[str]) -> list[str]:
    doc = kubectl.json(["get", "nodes"], namespaced=False)
    known = [item["metadata"]["name"] for item in doc.get("items", [])]
    if not known:
        raise ClusterCaptureError("the cluster has no nodes")
    if not wanted:
        return known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"no node {', '.join(unknown)} in the cluster (nodes: {', '.join(known)})")
    return list(dict.fromkeys(wanted))


def _pod_problem(pod: dict[str, Any]) -> str | None:
    """Why a capture pod will never become Ready (None: it may yet)."""
    status = pod.get("status", {})
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"pod {status.get('phase').lower()}"
    for cs in status.get("containerStatuses", []) or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                                     "CreateContainerError", "InvalidImageName"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return f"container exited ({terminated.get('exitCode')})"
    return None


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", []) or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _wait_ready(kubectl: Kubectl, run_id: str, nodes: list[str], opts: ClusterCaptureOptions,
                sleep: Callable[[float], None]) -> dict[str, str]:
    deadline = time.monotonic() + opts.start_timeout
    while True:
        doc = kubectl.json(["get", "pods", "-l", f"{RUN_LABEL}={run_id}"])
        pods: dict[str, dict[str, Any]] = {}
        for pod in doc.get("items", []):
            node = pod.get("spec", {}).get("nodeName")
            if node in nodes:
                pods[node] = pod
        for node, pod in pods.items():
            problem = _pod_problem(pod)
            if problem:
                name = pod["metadata"]["name"]
                raise ClusterCaptureError(
                    f"capture on {node} did not start: {problem}{_log_tail(kubectl, name)}")
        if len(pods) == len(nodes) and all(_ready(p) for p in pods.values()):
            return {node: pod["metadata"]["name"] for node, pod in pods.items()}
        if time.monotonic() > deadline:
            waiting = [n for n in nodes if n not in pods or not _ready(pods[n])]
            raise ClusterCaptureError(
                f"captures not attached within {opts.start_timeout:.0f}s on {', '.join(waiting)}")
        sleep(opts.poll_interval)


def _exec(kubectl: Kubectl, pod: str, *command: str) -> str:
    return kubectl.run(["exec", pod, "-c", "tracer", "--", *command])


def _wait_done(kubectl: Kubectl, pod: str, node: str, opts: ClusterCaptureOptions,
               sleep: Callable[[float], None]) -> int:
    deadline = time.monotonic() + opts.finish_timeout
    while True:
        text = _exec(kubectl, pod, "sh", "-c", f"cat {CAPTURES}/.done 2>/dev/null || true").strip()
        if text:
            code = int(text) if text.lstrip("-").isdigit() else -1
            if code != 0:
                log = _exec(kubectl, pod, "sh", "-c", f"tail -n 3 {CAPTURES}/capture.log || true")
                last = log.strip().splitlines()[-1] if log.strip() else "no output"
                raise ClusterCaptureError(f"capture on {node} failed (exit {code}): {last}")
            return code
        if time.monotonic() > deadline:
            raise ClusterCaptureError(f"capture on {node} did not finish {opts.finish_timeout:.0f}s "
                                      "after its duration")
        sleep(opts.poll_interval)


def _collect(kubectl: Kubectl, pod: str, node: str, into: Path) -> Path:
    """`tar` of the node's capture directory, streamed through kubectl exec
    (what `kubectl cp` does, without its need for a tar it parses itself)."""
    data = kubectl.run_bytes(["exec", pod, "-c", "tracer", "--", "tar", "-C", CAPTURES, "-cf", "-",
                              node, f"{node}.summary.json"])
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = [m for m in tar.getmembers()
                       if m.name == f"{node}.summary.json" or m.name.split("/", 1)[0] == node]
            for member in members:
                _check_member(member, node)
                # Packet headers: the node's modes do not travel (0600/0700,
                # docs/capture-format.md), whatever the image's umask was.
                member.mode = 0o700 if member.isdir() else 0o600
            # Checked by hand: Debian 12's Python 3.11.2 predates extractall(filter=).
            tar.extractall(into, members=members)
    except (tarfile.TarError, OSError) as exc:
        raise ClusterCaptureError(f"capture of {node} could not be unpacked: {exc}") from None
    path = into / node
    try:
        read_meta(path)
    except TracerError as exc:
        raise ClusterCaptureError(f"capture of {node} is not usable: {exc}") from None
    _exec(kubectl, pod, "touch", f"{CAPTURES}/.collected")
    return path


def _check_member(member: tarfile.TarInfo, node: str) -> None:
    """Only plain files and directories, inside the node's directory."""
    parts = Path(member.name).parts
    if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
        raise ClusterCaptureError(f"capture of {node} holds an unexpected entry {member.name!r}")


def _log_tail(kubectl: Kubectl, pod: str) -> str:
    try:
        lines = kubectl.run(["logs", pod, "-c", "tracer", "--tail=3"]).strip().splitlines()
    except KubectlError:
        return ""
    return f" (log: {lines[-1]})" if lines else ""
