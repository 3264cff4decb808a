"""Real HTTP load against the lab's Services, with counts that add up.

Two engines:
  - exact (default, `--requests N`): N requests from a pool of C worker
    threads that have entered the source namespace (the client, or a pod for
    cluster IPs). A new TCP connection per request unless keepalive. Every
    request is accounted for (ok or failed, with why) and the page body says
    which pod answered, so the counts can be compared with the pods' access
    logs and the KUBE-SEP counters.
  - wrk (`--duration S`): as much load as wrk makes in S seconds; counts come
    from wrk and from the access logs (wrk cannot stop at an exact count).

Either way the pods' access logs are read before and after, so the result
also says how many requests each pod served.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace

from tracer.errors import LabError, UsageError
from tracer.lab import access_log
from tracer.lab.dns_traffic import DnsResult, run_dns_traffic
from tracer.lab.dns_traffic import format_result as format_dns_result
from tracer.lab.http_engine import Target, run_exact
from tracer.lab.load_math import latency_summary, rate
from tracer.lab.state import LabState, Service, load_state
from tracer.system import require_program, require_root, run

TARGETS = ("external-ip", "node-port", "cluster-ip", "load-balancer")


@dataclass(frozen=True)
class TrafficResult:
    target: str
    service: str
    url: str
    source: str
    source_netns: str
    engine: str  # "exact" or "wrk"
    keepalive: bool
    concurrency: int
    requested: int | None  # None for a duration run
    ok: int  # 2xx responses received in full
    failed: int
    errors: dict[str, int]  # failure kind -> count
    status_codes: dict[str, int]
    connections: int  # TCP connections opened (exact engine; wrk: -c)
    by_pod: dict[str, int]  # who answered, from the page bodies (exact engine)
    served_by_pod: dict[str, int]  # requests the pods logged during the run
    duration_s: float
    requests_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 max mean
    # With --clients: source address -> pod -> answers, and -> failures.
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def served(self) -> int:
        return sum(self.served_by_pod.values())

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_target(
    state: LabState,
    kind: str = "external-ip",
    *,
    node: str = "a",
    source: str | None = None,
    service: str | None = None,
    family: str = "ipv4",
) -> Target:
    """Where to send requests and from which namespace; family "ipv6": the
    Service's IPv6 address of that kind (a dual-stack lab)."""
    if kind not in TARGETS:
        raise UsageError(f"unknown target {kind!r} (one of {', '.join(TARGETS)})")
    candidates = [state.service(service)] if service else list(state.services)
    svc, address, port = _destination(state, kind, candidates, node, family)
    if svc is None or address is None:
        what = kind.replace("-", " ") + (" (IPv6)" if family == "ipv6" else "")
        raise UsageError(f"no lab service has a {what}")

    if source is None:
        # Cluster IPs are reached from inside the cluster: from a pod.
        if kind == "cluster-ip":
            if not state.pods:
                raise UsageError("no pod to send cluster-IP traffic from (replicas 0)")
            source = state.pods[0].name
        else:
            source = "client"
    if source in (state.client.name, state.client.netns):
        if kind == "cluster-ip":
            raise UsageError(
                "cluster IPs are only reachable inside the cluster: use --from POD or NODE "
                "(or --target external-ip / node-port / load-balancer from the client)"
            )
        return Target(kind, svc.name, address, port, state.client.name, state.client.netns)
    host = next((n for n in state.nodes if source in (n.name, n.netns, n.ip,
                                                       n.name.removeprefix("node-"))), None)
    if host is not None:  # a process on the node itself (kubelet, hostNetwork pods)
        return Target(kind, svc.name, address, port, host.name, host.netns)
    pod = state.pod(source)
    return Target(kind, svc.name, address, port, pod.name, pod.netns)


def _addresses(svc: Service, kind: str, family: str) -> tuple[str, ...]:
    """The Service's addresses of a kind (not node-port) and family."""
    six = family == "ipv6"
    if kind == "external-ip":
        return svc.external_ips6 if six else svc.external_ips
    if kind == "load-balancer":
        return svc.load_balancer_ips6 if six else svc.load_balancer_ips
    ip = svc.cluster_ip6 if six else svc.cluster_ip
    return (ip,) if ip else ()


def _destination(state: LabState, kind: str, candidates: list[Service], node: str,
                 family: str) -> tuple[Service | None, str | None, int]:
    """(service, address, port) of the first candidate with a kind address
    of the family."""
    if kind == "node-port":
        svc = next((s for s in candidates if s.node_port and family in s.ip_families), None)
        n = state.node(node)
        address = n.ip6 if family == "ipv6" else n.ip
        return svc, address if svc else None, (svc.node_port or 0) if svc else 0
    svc = next((s for s in candidates if _addresses(s, kind, family)), None)
    return svc, _addresses(svc, kind, family)[0] if svc else None, svc.port if svc else 0


# --- wrk engine -------------------------------------------------------------------------

_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")
_WRK_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> dict:
    """The numbers of wrk's --latency report."""
    m = _WRK_TOTAL.search(text)
    if m is None:
        raise LabError(f"cannot read wrk's report: {text.strip().splitlines()[-1:]}")
    out: dict = {"requests": int(m.group(1)), "seconds": float(m.group(2)) * _UNIT_S[m.group(3)]}
    out["latency_ms"] = {
        f"p{p}": round(float(v) * _UNIT_S[u] * 1000, 3) for p, v, u in _WRK_PCT.findall(text)
    }
    errs = _WRK_ERR.search(text)
    out["errors"] = (
        {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), errs.groups(),
                                   strict=True) if int(v)}
        if errs else {}
    )
    non2xx = _WRK_NON2XX.search(text)
    out["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    return out


def _wrk(target: Target, seconds: float, concurrency: int, keepalive: bool) -> dict:
    require_program("wrk")
    argv = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency),
            "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    proc = run([*argv, target.url], netns=target.source_netns, timeout=seconds + 30)
    return parse_wrk(proc.stdout)


# --- entry point -------------------------------------------------------------------------


def run_traffic(
    *,
    requests: int | None = None,
    duration: float | None = None,
    concurrency: int = 4,
    target: str = "external-ip",
    keepalive: bool = False,
    node: str = "a",
    source: str | None = None,
    service: str | None = None,
    timeout: float = 5.0,
    path: str = "/",
    clients: int | None = None,
    family: str = "ipv4",
    state: LabState | None = None,
) -> TrafficResult | DnsResult:
    """Send HTTP requests (DNS queries to a UDP Service) to a lab Service
    and report what happened."""
    require_root("tracer lab traffic")
    if requests is not None and duration is not None:
        raise UsageError("give --requests or --duration, not both")
    if requests is None and duration is None:
        requests = 100
    if requests is not None and requests < 1:
        raise UsageError(f"--requests must be >= 1, got {requests}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be > 0, got {duration}")
    if concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    state = state or load_state()
    if not re.fullmatch(r"/[A-Za-z0-9._~/-]*", path):
        raise UsageError(f"--path must be an absolute URL path, got {path!r}")
    if family == "ipv6" and state.ip_family != "dual":
        raise UsageError("--family ipv6 needs a dual-stack lab (tracer lab up --ip-family dual)")
    tgt = replace(resolve_target(state, target, node=node, source=source, service=service,
                                 family=family), path=path)
    if clients is not None:
        tgt = replace(tgt, source_ips=_client_addresses(state, tgt, clients, duration))
    if state.service(tgt.service).ports[0].protocol == "UDP":
        if duration is not None or keepalive or path != "/":
            raise UsageError(f"{tgt.service} is a UDP Service: DNS queries take --requests, "
                             "not --duration, --keepalive or --path")
        return _dns(state, tgt, requests or 100, concurrency, timeout)

    marks = access_log.offsets(state)
    if requests is not None:
        tally, elapsed = run_exact(tgt, requests, concurrency, keepalive, timeout)
        served = _served_since(state, marks, at_least=tally.ok)
        failed = sum(tally.errors.values())
        return TrafficResult(
            target=tgt.kind, service=tgt.service, url=tgt.url, source=tgt.source,
            source_netns=tgt.source_netns, engine="exact", keepalive=keepalive,
            concurrency=concurrency, requested=requests, ok=tally.ok, failed=failed,
            errors=dict(tally.errors), status_codes=dict(tally.status),
            connections=tally.connections, by_pod=dict(sorted(tally.by_pod.items())),
            served_by_pod=served, duration_s=round(elapsed, 4),
            requests_per_s=rate(tally.ok, elapsed), latency_ms=latency_summary(tally.latencies),
            by_source={ip: dict(sorted(pods.items())) for ip, pods in sorted(tally.by_source.items())},
            failed_by_source=dict(sorted(tally.failed_by_source.items())),
        )

    assert duration is not None
    t0 = time.perf_counter()
    report = _wrk(tgt, duration, concurrency, keepalive)
    elapsed = time.perf_counter() - t0
    served = _served_since(state, marks, at_least=report["requests"])
    failed = report["non2xx"] + sum(report["errors"].values())
    return TrafficResult(
        target=tgt.kind, service=tgt.service, url=tgt.url, source=tgt.source,
        source_netns=tgt.source_netns, engine="wrk", keepalive=keepalive,
        concurrency=concurrency, requested=None, ok=report["requests"] - report["non2xx"],
        failed=failed, errors=report["errors"], status_codes={},
        connections=concurrency, by_pod={}, served_by_pod=served,
        duration_s=round(report["seconds"] or elapsed, 4),
        requests_per_s=rate(report["requests"], report["seconds"] or elapsed),
        latency_ms=report["latency_ms"],
    )


def _dns(state: LabState, tgt: Target, queries: int, concurrency: int,
         timeout: float) -> DnsResult:
    """A UDP Service: TXT queries to the pods' dnsmasq (dns_traffic.py)."""
    if len(tgt.source_ips) > 1:
        raise UsageError("a UDP Service takes one client address (--clients 1)")
    logs = {f.query_log: p.name for p in state.pods for f in p.dns}
    return run_dns_traffic(
        address=tgt.address, port=tgt.port, source_netns=tgt.source_netns, queries=queries,
        concurrency=concurrency, timeout=timeout,
        source_address=tgt.source_ips[0] if tgt.source_ips else None, query_logs=logs)


def _client_addresses(state: LabState, tgt: Target, clients: int,
                      duration: float | None) -> tuple[str, ...]:
    """The client's first `clients` addresses (--clients), checked."""
    if tgt.source_netns != state.client.netns:
        raise UsageError("--clients needs --from client: only the client has several addresses")
    if duration is not None:
        raise UsageError("--clients needs --requests (wrk binds no source address)")
    have = state.client.ips
    if not 1 <= clients <= len(have):
        raise UsageError(f"--clients must be 1..{len(have)} (the client's addresses), got {clients}")
    return have[:clients]


def _served_since(state: LabState, marks: dict[str, int], *, at_least: int,
                  wait: float = 2.0) -> dict[str, int]:
    """Requests the pods logged since marks. nginx logs a request just after
    its response went out, so the last lines may trail the client by a moment:
    wait (briefly) until at least as many as the client saw are there."""
    deadline = time.monotonic() + wait
    while True:
        counts = access_log.count_by_pod(access_log.read_since(marks, state))
        if sum(counts.values()) >= at_least or time.monotonic() > deadline:
            return dict(sorted(counts.items()))
        time.sleep(0.02)


def format_result(r: TrafficResult | DnsResult) -> str:
    """Human-readable report (the CLI prints it)."""
    if isinstance(r, DnsResult):
        return format_dns_result(r)
    mode = "keep-alive" if r.keepalive else "new connection per request"
    asked = f"{r.requested} requests" if r.requested is not None else "duration run"
    lines = [
        f"traffic: {asked} to {r.url} ({r.target}, service {r.service}) from {r.source}, "
        f"{r.engine} engine, concurrency {r.concurrency}, {mode}",
        f"  ok {r.ok}  failed {r.failed}  connections {r.connections}  "
        f"in {r.duration_s:.3f}s  ({r.requests_per_s} req/s)",
    ]
    if r.errors:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())))
    if r.latency_ms:
        lines.append("  latency ms: " + "  ".join(f"{k} {v}" for k, v in r.latency_ms.items()))
    if r.by_source or r.failed_by_source:
        lines.append("  per client address (answers by pod; failures):")
        for ip in sorted(set(r.by_source) | set(r.failed_by_source)):
            pods = ", ".join(f"{p} {n}" for p, n in r.by_source.get(ip, {}).items()) or "-"
            lines.append(f"    {ip:<15} {pods}; failed {r.failed_by_source.get(ip, 0)}")
    pods = sorted(set(r.by_pod) | set(r.served_by_pod))
    if pods:
        lines.append("  per pod (answers seen by the client / requests in the pod's access log):")
        for p in pods:
            seen = r.by_pod.get(p, "-") if r.engine == "exact" else "-"
            lines.append(f"    {p:<32} {seen!s:>7} / {r.served_by_pod.get(p, 0)}")
    return "\n".join(lines)
