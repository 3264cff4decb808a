"""The exact HTTP engine of `tracer lab traffic`: N requests from a pool of
worker threads that have entered the source namespace, every request
accounted for (ok, or failed with why), and the answering pod read from the
page body. With several source addresses (the client's, `--clients`), each
new connection binds the next one in turn, and the counts are kept per
source as well: what session affinity and loadBalancerSourceRanges act on.
"""

from __future__ import annotations

import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tracer.lab.load_math import pod_of_body
from tracer.lab.netns_pool import WorkTally, run_in_netns


@dataclass(frozen=True)
class Target:
    kind: str
    service: str
    address: str
    port: int
    source: str  # "client", a node or a pod name
    source_netns: str
    path: str = "/"
    # Addresses to bind, one per new connection in turn; () = the kernel's choice.
    source_ips: tuple[str, ...] = ()

    @property
    def hostport(self) -> str:
        """address:port, an IPv6 address in brackets (RFC 3986)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.hostport}{self.path}"


@dataclass
class Tally(WorkTally):
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    status: Counter = field(default_factory=Counter)
    by_pod: Counter = field(default_factory=Counter)
    connections: int = 0
    latencies: list[float] = field(default_factory=list)
    # source address -> pod -> answers, and source address -> failures
    by_source: defaultdict = field(default_factory=lambda: defaultdict(Counter))
    failed_by_source: Counter = field(default_factory=Counter)

    def next_source(self, sources: tuple[str, ...]) -> str | None:
        """Counts a new connection; the address it binds (in turn), None: any."""
        with self.lock:
            index = self.connections
            self.connections += 1
        return sources[index % len(sources)] if sources else None


class _HttpError(Exception):
    """A request that failed; args[0] is the kind reported in errors."""


def _read_response(sock: socket.socket, keepalive: bool) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one HTTP/1.1 response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise _HttpError("closed before response" if not buf else "truncated headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise _HttpError("bad status line") from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip().lower()
    closes = headers.get(b"connection") == b"close" or not keepalive
    length = headers.get(b"content-length")
    if length is not None:
        want = int(length)
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                raise _HttpError("truncated body")
            body += chunk
    else:
        while True:  # no length: the body ends when the server closes
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        closes = True
    return status, body, closes


def _requests(target: Target, total: int, keepalive: bool, timeout: float, tally: Tally) -> None:
    request = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.hostport}\r\n"
        f"User-Agent: tracer-lab\r\nAccept: */*\r\n"
        f"Connection: {'keep-alive' if keepalive else 'close'}\r\n\r\n"
    ).encode()
    sock: socket.socket | None = None
    source = None
    while tally.take(total):
        t0 = time.perf_counter()
        try:
            if sock is None:
                source = tally.next_source(target.source_ips)
                sock = _connect(target, source, timeout)
            sock.sendall(request)
            status, body, closes = _read_response(sock, keepalive)
        except (OSError, _HttpError) as exc:
            kind = exc.args[0] if isinstance(exc, _HttpError) else type(exc).__name__
            if isinstance(exc, TimeoutError | socket.timeout):
                kind = "timeout"
            with tally.lock:
                tally.errors[kind] += 1
                tally.failed_by_source[source or "-"] += 1
            if sock is not None:
                sock.close()
                sock = None
            continue
        elapsed = time.perf_counter() - t0
        if closes:
            sock.close()
            sock = None
        with tally.lock:
            tally.status[str(status)] += 1
            if 200 <= status < 300:
                tally.ok += 1
                tally.latencies.append(elapsed)
                pod = pod_of_body(body)
                if pod:
                    tally.by_pod[pod] += 1
                    if source:
                        tally.by_source[source][pod] += 1
            else:
                tally.errors[f"http {status}"] += 1
                tally.failed_by_source[source or "-"] += 1
    if sock is not None:
        sock.close()


def _connect(target: Target, source: str | None, timeout: float) -> socket.socket:
    bind = (source, 0) if source else None
    return socket.create_connection((target.address, target.port), timeout=timeout,
                                    source_address=bind)


def run_exact(target: Target, requests: int, concurrency: int, keepalive: bool,
              timeout: float) -> tuple[Tally, float]:
    tally = Tally()
    elapsed = run_in_netns(
        target.source_netns, min(concurrency, max(requests, 1)),
        lambda: _requests(target, requests, keepalive, timeout, tally), what="traffic",
        on_failure=tally.stop)
    return tally, elapsed
