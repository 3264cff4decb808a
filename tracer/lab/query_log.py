"""Reading the pods' dnsmasq query logs: which pod was asked what, by which
client address and port.

dnsmasq's `log-queries=extra` line for a query:
    Dec  5 05:12:12 dnsmasq[6398]: 1 10.199.250.2/35253 query[TXT] whoami.lab from 10.199.250.2
(serial number, client address/port, type, name). Other lines (answers,
start-up) are skipped. `offsets()` + `read_since()` give the queries logged
between two moments, like access_log for nginx. Logs are named by path,
each with the pod it belongs to (a pod has one log per UDP port).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_QUERY = re.compile(
    r"^(?P<time>\w{3} [ \d]\d \d\d:\d\d:\d\d) dnsmasq\[(?P<pid>\d+)\]: "
    r"(?P<serial>\d+) (?P<addr>[0-9A-Fa-f.:]+)/(?P<port>\d+) "
    r"query\[(?P<qtype>[^\]]+)\] (?P<name>\S+) from \S+$"
)


@dataclass(frozen=True)
class QueryEntry:
    pod: str
    time: str  # as dnsmasq writes it: "Dec  5 05:12:12" (no year, seconds)
    pid: int  # the dnsmasq that logged it
    serial: int  # dnsmasq's query number (per dnsmasq)
    client_addr: str
    client_port: int
    qtype: str  # "TXT", "A", ...
    name: str


def parse_line(line: str, pod: str) -> QueryEntry | None:
    """One log line -> QueryEntry; None for any other line (or a torn one)."""
    m = _QUERY.match(line.strip())
    if m is None:
        return None
    return QueryEntry(
        pod=pod, time=m["time"], pid=int(m["pid"]), serial=int(m["serial"]),
        client_addr=m["addr"], client_port=int(m["port"]), qtype=m["qtype"], name=m["name"],
    )


def read_query_log(path: str, pod: str, *, offset: int = 0) -> list[QueryEntry]:
    """Every query one log holds (from byte offset on)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    # A line still being written has no newline yet: leave it for next time.
    complete = data[: data.rfind(b"\n") + 1]
    entries = (parse_line(raw, pod) for raw in complete.decode(errors="replace").splitlines())
    return [e for e in entries if e is not None]


def offsets(logs: Iterable[str]) -> dict[str, int]:
    """log path -> its current size (a mark to read from later)."""
    out = {}
    for path in logs:
        try:
            out[path] = Path(path).stat().st_size
        except FileNotFoundError:
            out[path] = 0
    return out


def read_since(logs: Mapping[str, str], marks: Mapping[str, int]) -> list[QueryEntry]:
    """Queries logged after marks (from offsets()) in logs (path -> pod)."""
    entries: list[QueryEntry] = []
    for path, pod in logs.items():
        entries.extend(read_query_log(path, pod, offset=marks.get(path, 0)))
    return entries


def for_name(entries: Iterable[QueryEntry], name: str) -> list[QueryEntry]:
    want = name.rstrip(".").lower()
    return [e for e in entries if e.name.rstrip(".").lower() == want]


def count_by_pod(entries: Iterable[QueryEntry]) -> dict[str, int]:
    return dict(sorted(Counter(e.pod for e in entries).items()))


def count_by_client(entries: Iterable[QueryEntry]) -> dict[str, int]:
    return dict(sorted(Counter(e.client_addr for e in entries).items()))
