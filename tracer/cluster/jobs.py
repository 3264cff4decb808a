"""deploy/capture-job.yaml -> the Job manifest of one node's capture.

The template is plain YAML with string.Template fields (${node}, ${service},
...), so it reads as the manifest it becomes and can be applied by hand after
`envsubst`-style filling. Fields are checked here, not by the cluster: a
value that would make the YAML mean something else is a UsageError.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from tracer.errors import UsageError
from tracer.option_checks import seconds

# The repository's deploy/ (tracer is installed editable from the synced
# repo, scripts/setup.sh); --templates points elsewhere.
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
JOB_TEMPLATE = "capture-job.yaml"
DEFAULT_IMAGE = "localhost/tracer:latest"
DEFAULT_NAMESPACE = "tracer"
RUN_LABEL = "tracer.dev/run"

# DNS-1123 subdomain (node names), label values, a Service as [ns/]name.
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SERVICE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")


@dataclass(frozen=True)
class JobSpec:
    run_id: str
    node: str
    service: str
    duration: float
    image: str = DEFAULT_IMAGE
    namespace: str = DEFAULT_NAMESPACE
    keep_seconds: int = 600  # how long the pod waits for the collector

    @property
    def job_name(self) -> str:
        """tracer-<run>-<node>, cut to 63 characters with a hash to stay unique."""
        name = f"tracer-{self.run_id}-{self.node}".replace(".", "-")
        if len(name) > 63:
            digest = hashlib.sha256(self.node.encode()).hexdigest()[:6]
            name = f"{name[:56].rstrip('-')}-{digest}"
        return name


def validate(spec: JobSpec) -> None:
    if not _NODE.match(spec.node):
        raise UsageError(f"node name {spec.node!r} is not a Kubernetes node name")
    if not _SERVICE.match(spec.service):
        raise UsageError(f"--svc {spec.service!r} is not [NAMESPACE/]NAME")
    if not _IMAGE.match(spec.image):
        raise UsageError(f"--image {spec.image!r} is not an image reference")
    if not _NODE.match(spec.namespace):
        raise UsageError(f"--namespace {spec.namespace!r} is not a namespace name")
    seconds(spec.duration, "--duration")  # the Job's deadline is derived from it


def load_template(templates: Path | None = None) -> string.Template:
    path = (templates or DEPLOY_DIR) / JOB_TEMPLATE
    try:
        return string.Template(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the capture Job template {path}: {exc.strerror}") from None


def render_job(spec: JobSpec, template: string.Template) -> str:
    """The Job manifest (YAML) for one node; checked to parse as one Job."""
    validate(spec)
    duration = f"{spec.duration:g}"
    text = template.substitute(
        job_name=spec.job_name,
        namespace=spec.namespace,
        run_id=spec.run_id,
        node=spec.node,
        node_label=spec.node[:63].rstrip(".-"),
        image=spec.image,
        service=spec.service,
        duration=duration,
        keep_seconds=str(spec.keep_seconds),
        # The Job may not outlive capture + collection + generous start-up.
        deadline_seconds=str(int(spec.duration) + spec.keep_seconds + 600),
    )
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or doc.get("kind") != "Job":
        raise UsageError("the capture Job template does not render to one Job")
    # Names and label values must stay strings whatever they look like (a run
    # id of digits only, a numeric node name): the API server refuses numbers.
    meta = doc.get("metadata") or {}
    pod = (doc.get("spec") or {}).get("template") or {}
    labels = {**(meta.get("labels") or {}), **((pod.get("metadata") or {}).get("labels") or {})}
    strings = [meta.get("name"), meta.get("namespace"), (pod.get("spec") or {}).get("nodeName"),
               *labels.values()]
    if not all(isinstance(v, str) for v in strings):
        raise UsageError("the capture Job template renders a name or label value that is not a "
                         "string (quote its field)")
    return text
