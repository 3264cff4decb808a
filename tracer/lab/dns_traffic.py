"""Real DNS (UDP) load against a lab address, with counts that add up.

The exact engine of traffic.py for UDP: N TXT queries for whoami.lab from a
pool of C worker threads that have entered the source namespace. Each query
goes out from a fresh socket, so from a new source port: a new conntrack
flow per query, as stub resolvers do. Every query is accounted for (ok, or
failed with why: timeout, refused, bad answer) and the answer names the pod
that gave it. Given the pods' query logs, the result also says how many
queries each pod and each client address logged during the run.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from tracer.errors import UsageError
from tracer.lab import query_log
from tracer.lab.dns_wire import BadAnswer, build_query, parse_txt_answer
from tracer.lab.dnsmasq import WHOAMI
from tracer.lab.load_math import latency_summary, pod_of_body, rate
from tracer.lab.netns_pool import WorkTally, run_in_netns
from tracer.system import require_root

# Tries for a source port this run has not used yet (the kernel picks ports
# at random: 50 queries would share one now and then, and a shared port is
# the same conntrack flow, not a new one).
_PORT_TRIES = 16


@dataclass(frozen=True)
class DnsTarget:
    address: str
    port: int
    source_netns: str
    source_address: str | None = None  # bind to it (the client has several)
    name: str = WHOAMI

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6 else socket.AF_INET


@dataclass(frozen=True)
class DnsResult:
    address: str
    port: int
    name: str
    source_netns: str
    source_address: str | None
    concurrency: int
    requested: int
    ok: int  # answers with the asked TXT record and a pod line
    failed: int
    errors: dict[str, int]  # "timeout", "refused", "bad answer: wrong id", ...
    by_pod: dict[str, int]  # who answered, from the TXT texts
    flows: int  # distinct source ports the queries went from
    served_by_pod: dict[str, int]  # queries for the name the pods logged during the run
    served_by_client: dict[str, int]  # the same, per client address
    duration_s: float
    queries_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Tally(WorkTally):
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    by_pod: Counter = field(default_factory=Counter)
    ports: set[int] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)


def _fresh_socket(target: DnsTarget, tally: _Tally) -> socket.socket:
    """A UDP socket connected to the target from a source port this run has
    not used (unless the tries run out: `flows` then says so)."""
    for attempt in range(_PORT_TRIES):
        sock = socket.socket(target.family, socket.SOCK_DGRAM)
        try:
            sock.bind((target.source_address or "", 0))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"source address {target.source_address} is not an address "
                    f"in {target.source_netns}"
                ) from None
            raise
        port = sock.getsockname()[1]
        with tally.lock:
            fresh = port not in tally.ports
            if fresh or attempt == _PORT_TRIES - 1:
                tally.ports.add(port)
                break
        sock.close()
    # connect: the kernel drops datagrams from any other address, and an
    # ICMP port unreachable comes back as ECONNREFUSED.
    try:
        sock.connect((target.address, target.port))
    except OSError:
        sock.close()
        raise
    return sock


def _one_query(target: DnsTarget, timeout: float, tally: _Tally) -> None:
    txid = secrets.randbits(16)
    query = build_query(txid, target.name)
    t0 = time.perf_counter()
    texts: tuple[str, ...] = ()
    kind = None
    try:
        with _fresh_socket(target, tally) as sock:
            sock.settimeout(timeout)
            sock.send(query)
            texts = parse_txt_answer(sock.recv(65535), txid, target.name)
    except TimeoutError:
        kind = "timeout"
    except ConnectionRefusedError:
        kind = "refused"  # ICMP port unreachable: nothing listens there
    except BadAnswer as exc:
        kind = f"bad answer: {exc.args[0]}"
    except OSError as exc:
        kind = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    elapsed = time.perf_counter() - t0
    pod = next((p for p in (pod_of_body(t.encode()) for t in texts) if p), None)
    if kind is None and pod is None:
        kind = "bad answer: no pod line"
    with tally.lock:
        if kind is not None:
            tally.errors[kind] += 1
            return
        tally.ok += 1
        tally.by_pod[pod] += 1
        tally.latencies.append(elapsed)


def _exact(target: DnsTarget, queries: int, concurrency: int, timeout: float) -> tuple[_Tally, float]:
    tally = _Tally()

    def loop() -> None:
        while tally.take(queries):
            _one_query(target, timeout, tally)

    elapsed = run_in_netns(target.source_netns, min(concurrency, queries), loop, what="dns",
                           on_failure=tally.stop)
    return tally, elapsed


def _check(target: DnsTarget, queries: int, concurrency: int, timeout: float) -> None:
    if queries < 1:
        raise UsageError(f"--queries must be >= 1, got {queries}")
    if concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    if not timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {timeout}")
    if not 1 <= target.port <= 65535:
        raise UsageError(f"port must be 1..65535, got {target.port}")
    try:
        versions = {ipaddress.ip_address(target.address).version}
        if target.source_address is not None:
            versions.add(ipaddress.ip_address(target.source_address).version)
    except ValueError as exc:
        raise UsageError(f"not an IP address: {exc}") from None
    if len(versions) != 1:
        raise UsageError("the source address and the target are not of one IP version")


def run_dns_traffic(
    *,
    address: str,
    port: int,
    source_netns: str,
    queries: int = 100,
    concurrency: int = 4,
    timeout: float = 2.0,
    source_address: str | None = None,
    name: str = WHOAMI,
    query_logs: Mapping[str, str] | None = None,
    log_wait: float = 2.0,
) -> DnsResult:
    """Send `queries` TXT queries for name to address:port from source_netns.

    query_logs (log path -> pod), when given, are read before and after: the
    pods' own count of the queries during the run (an independent witness).
    """
    require_root("tracer lab dns")
    target = DnsTarget(address, port, source_netns, source_address, name)
    _check(target, queries, concurrency, timeout)
    logs = dict(query_logs or {})
    marks = query_log.offsets(logs)
    tally, elapsed = _exact(target, queries, concurrency, timeout)
    served = _served_since(logs, marks, name, at_least=tally.ok, wait=log_wait)
    return DnsResult(
        address=address, port=port, name=name, source_netns=source_netns,
        source_address=source_address, concurrency=concurrency, requested=queries,
        ok=tally.ok, failed=sum(tally.errors.values()), errors=dict(sorted(tally.errors.items())),
        by_pod=dict(sorted(tally.by_pod.items())), flows=len(tally.ports),
        served_by_pod=query_log.count_by_pod(served),
        served_by_client=query_log.count_by_client(served),
        duration_s=round(elapsed, 4), queries_per_s=rate(tally.ok, elapsed),
        latency_ms=latency_summary(tally.latencies),
    )


def _served_since(logs: Mapping[str, str], marks: Mapping[str, int], name: str, *,
                  at_least: int, wait: float) -> list[query_log.QueryEntry]:
    """The queries for name logged since marks. dnsmasq logs a query before
    it answers, but the last line may still be on its way to the file: wait
    (briefly) until at least as many as were answered are there."""
    deadline = time.monotonic() + wait
    while True:
        entries = query_log.for_name(query_log.read_since(logs, marks), name)
        if not logs or len(entries) >= at_least or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def format_result(r: DnsResult) -> str:
    """Human-readable report (for the CLI)."""
    source = f"{r.source_netns}" + (f" ({r.source_address})" if r.source_address else "")
    lines = [
        f"dns: {r.requested} TXT queries for {r.name} to {r.address}:{r.port}/udp from {source}, "
        f"concurrency {r.concurrency}, a new source port per query",
        f"  ok {r.ok}  failed {r.failed}  flows {r.flows}  in {r.duration_s:.3f}s  "
        f"({r.queries_per_s} q/s)",
    ]
    if r.errors:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in r.errors.items()))
    if r.latency_ms:
        lines.append("  latency ms: " + "  ".join(f"{k} {v}" for k, v in r.latency_ms.items()))
    pods = sorted(set(r.by_pod) | set(r.served_by_pod))
    if pods:
        lines.append("  per pod (answers seen by the client / queries in the pod's query log):")
        for p in pods:
            lines.append(f"    {p:<32} {r.by_pod.get(p, 0):>7} / {r.served_by_pod.get(p, 0)}")
    return "\n".join(lines)
