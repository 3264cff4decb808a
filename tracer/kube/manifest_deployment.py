"""A Deployment document (apps/v1) -> Deployment, for tracer.kube.manifest:
only what the lab renders (replicas, pod labels, container ports and their
names, the image, the first HTTP liveness probe); anything else it cannot
render raises manifest_fields.Problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracer.kube import manifest_fields as fields
from tracer.kube.model import Deployment


def read_deployment(doc: Mapping[str, Any]) -> Deployment:
    fields.require_api_version(doc, "apps/v1")
    namespace, name = fields.name_and_namespace(doc)
    spec = fields.mapping(doc.get("spec"), "spec")
    replicas = spec.get("replicas", 1)  # the API server's default
    replicas = fields.number(replicas, "spec.replicas", 0, 1000)
    template = fields.mapping(spec.get("template"), "spec.template")
    template_meta = fields.mapping(template.get("metadata"), "spec.template.metadata")
    pod_labels = fields.labels(template_meta.get("labels"), "spec.template.metadata.labels")
    if not pod_labels:
        raise fields.Problem("spec.template.metadata.labels is empty: a Service could never select it")
    # apps/v1 requires spec.selector, but the seed article's manifest omits it
    # (extensions/v1beta1 defaulted it to the template labels). Accept both;
    # a selector that is present must match the template, as the API demands.
    selector_spec = spec.get("selector")
    if selector_spec is not None:
        match = fields.labels(
            fields.mapping(selector_spec, "spec.selector").get("matchLabels"),
            "spec.selector.matchLabels",
        )
        if not set(match) <= set(pod_labels):
            raise fields.Problem("spec.selector.matchLabels does not match the template labels")

    pod_spec = fields.mapping(template.get("spec"), "spec.template.spec")
    containers = fields.sequence(pod_spec.get("containers"), "spec.template.spec.containers")
    if not containers:
        raise fields.Problem("spec.template.spec.containers is empty")
    image = None
    numbers: list[int] = []
    udp: list[int] = []
    named: dict[str, int] = {}
    liveness: tuple[str | None, Any] = (None, None)
    for i, raw in enumerate(containers):
        where = f"containers[{i}]"
        container = fields.mapping(raw, where)
        if not isinstance(container.get("image"), str) or not container["image"]:
            raise fields.Problem(f"{where}.image is missing")
        image = image or container["image"]
        for j, raw_port in enumerate(fields.sequence(container.get("ports"), f"{where}.ports")):
            port = fields.mapping(raw_port, f"{where}.ports[{j}]")
            what = f"{where}.ports[{j}]"
            number = fields.number(port.get("containerPort"), f"{what}.containerPort", 1, 65535)
            protocol = port.get("protocol", "TCP")
            if protocol not in ("TCP", "UDP"):
                # nginx serves TCP, dnsmasq UDP: nothing in the lab serves SCTP.
                raise fields.Problem(f"{what}.protocol {protocol!r} is not rendered by the lab "
                                     "(TCP: nginx, UDP: dnsmasq)")
            same = numbers if protocol == "TCP" else udp
            if number not in same:
                same.append(number)
            port_name = port.get("name")
            if port_name is not None:
                if not isinstance(port_name, str) or not fields.IANA_SVC_NAME.match(port_name):
                    raise fields.Problem(f"{what}.name {port_name!r} is not a valid port name")
                named[port_name] = number
        probe = fields.mapping(container.get("livenessProbe"), f"{where}.livenessProbe", required=False)
        http_get = fields.mapping(probe.get("httpGet"), f"{where}.livenessProbe.httpGet", required=False)
        if http_get and liveness == (None, None):
            liveness = (http_get.get("path", "/"), http_get.get("port"))
    path, probe_port = liveness
    if isinstance(probe_port, str):
        probe_port = named.get(probe_port)
    elif probe_port is not None:
        probe_port = fields.number(probe_port, "livenessProbe.httpGet.port", 1, 65535)
    assert image is not None
    return Deployment(
        namespace=namespace,
        name=name,
        replicas=replicas,
        pod_labels=pod_labels,
        container_ports=tuple(numbers),
        image=image,
        named_ports=tuple(sorted(named.items())),
        liveness_path=path if isinstance(path, str) else None,
        liveness_port=probe_port,
        udp_ports=tuple(udp),
    )
