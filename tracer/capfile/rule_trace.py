"""The rule-trace file of a capture taken with `--rules`: the kernel's
nf_tables trace events for the Service's packets (tracer.rules), one JSON
object a line, each with the text of the rule it names as it read when the
capture ran (rules change; the capture keeps what was true then).

A line: ts (CLOCK_MONOTONIC ns when read, the clock of the events' ts),
trace_id, type (rule | return | policy), family, table, chain, handle,
verdict, target, policy, iif, oif, mark, nfproto, and the packet's IPv4
header fields as the hook saw them (src, dst, proto, sport, dport, tcp_flags,
ip_id, seq); text. A line cut short by a crash is skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from tracer.errors import CaptureFileError

RULES_FILE = "_tracer_rules.jsonl"


def write_record(f: IO[str], record: dict[str, Any]) -> None:
    f.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_records(capture: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(records, lines that could not be read) of a capture's rule-trace
    file; ([], 0) when the capture was taken without --rules."""
    path = Path(capture) / RULES_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise CaptureFileError(f"{path}: {exc.strerror}") from exc
    records, bad = [], 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict) and "trace_id" in rec and "table" in rec:
            records.append(rec)
        else:
            bad += 1
    return records, bad
