"""Reading the pods' nginx access logs: which pod served which request, for
which source address, on which connection.

Each line is the JSON object of nginx.LOG_FORMAT. `offsets()` + `read_since()`
give the requests served between two moments (the delta a traffic run made).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tracer.lab.state import LabState, Pod, load_state


@dataclass(frozen=True)
class AccessEntry:
    pod: str
    time: str  # ISO 8601, second resolution
    msec: float  # unix time with milliseconds
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    connection: int  # nginx's connection serial number (per nginx)
    connection_requests: int  # requests so far on that connection
    request: str
    status: int
    bytes_sent: int
    request_time: float

    @property
    def new_connection(self) -> bool:
        return self.connection_requests == 1


def parse_line(line: str) -> AccessEntry | None:
    """One log line -> AccessEntry; None for a blank or torn line."""
    line = line.strip()
    if not line:
        return None
    try:
        d = json.loads(line)
        return AccessEntry(
            pod=str(d["pod"]),
            time=str(d["time"]),
            msec=float(d["msec"]),
            remote_addr=str(d["remote_addr"]),
            remote_port=int(d["remote_port"]),
            server_addr=str(d["server_addr"]),
            server_port=int(d["server_port"]),
            connection=int(d["connection"]),
            connection_requests=int(d["connection_requests"]),
            request=str(d["request"]),
            status=int(d["status"]),
            bytes_sent=int(d["bytes_sent"]),
            request_time=float(d["request_time"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _pod(pod: Pod | str, state: LabState | None) -> Pod:
    if isinstance(pod, Pod):
        return pod
    return (state or load_state()).pod(pod)


def read_access_log(
    pod: Pod | str, *, state: LabState | None = None, offset: int = 0
) -> list[AccessEntry]:
    """Every request a pod's nginx logged (from byte offset on)."""
    path = Path(_pod(pod, state).nginx.access_log)
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    # A line still being written has no newline yet: leave it for next time.
    complete = data[: data.rfind(b"\n") + 1]
    entries = (parse_line(raw) for raw in complete.decode(errors="replace").splitlines())
    return [e for e in entries if e is not None]


def offsets(state: LabState | None = None) -> dict[str, int]:
    """pod name -> current size of its access log (a mark to read from later)."""
    state = state or load_state()
    out = {}
    for p in state.pods:
        try:
            out[p.name] = Path(p.nginx.access_log).stat().st_size
        except FileNotFoundError:
            out[p.name] = 0
    return out


def read_since(marks: Mapping[str, int], state: LabState | None = None) -> list[AccessEntry]:
    """Requests logged by every pod after `marks` (from offsets()), in time order."""
    state = state or load_state()
    entries: list[AccessEntry] = []
    for p in state.pods:
        entries.extend(read_access_log(p, offset=marks.get(p.name, 0)))
    entries.sort(key=lambda e: e.msec)
    return entries


def count_by_pod(entries: Iterable[AccessEntry]) -> dict[str, int]:
    return dict(Counter(e.pod for e in entries))
