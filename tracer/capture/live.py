"""One readable line per event, for the live view (like pwru/retis print)."""

from __future__ import annotations

import time

import pyarrow as pa

from tracer.capfile import PROTO_NAMES

# The capture's line on stderr once every probe is attached; what starts a
# capture as a child process waits for it (tracer.capture.child_process).
READY_PREFIX = "tracer: capturing"

FLAG_NAMES = ((1, "F"), (2, "S"), (4, "R"), (8, "P"), (16, "."), (32, "U"))


def tcp_flags(value: int) -> str:
    return "".join(name for bit, name in FLAG_NAMES if value & bit) or "-"


def _clock(time_ns: int) -> str:
    secs, ns = divmod(time_ns, 1_000_000_000)
    return time.strftime("%H:%M:%S", time.localtime(secs)) + f".{ns // 1000:06d}"


def format_events(table: pa.Table, limit: int | None = None) -> list[str]:
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    out = []
    for r in rows:
        where = r["ifname"] or "-"
        if r["netns"] and r["netns"] != r["node"]:
            where = f"{r['netns']}/{where}"
        proto = PROTO_NAMES.get(r["proto"], str(r["proto"]))
        tup = f"{r['saddr']}:{r['sport']} > {r['daddr']}:{r['dport']}"
        head = f"{_clock(r['time_ns'])} {r['node']:<11} {r['probe']:<4}"
        if r["probe"] == "nat":
            after = f"{r['nat_saddr']}:{r['nat_sport']} > {r['nat_daddr']}:{r['nat_dport']}"
            first = " first" if r["nat_first"] else ""
            took = f"{r['nat_ns'] / 1000:.1f}us" if r["nat_ns"] else "time not measured"
            out.append(
                f"{head} {r['hook']:<11} {r['nat_kind'].upper():<8} {tup} => {after} "
                f"[{took}{first}]"
            )
            continue
        detail = f"{proto} [{tcp_flags(r['tcp_flags'])}]" if r["proto"] == 6 else proto
        line = f"{head} {where:<20} {tup} {detail} id {r['ip_id']} ttl {r['ttl']} len {r['len']}"
        if r.get("encap"):
            line += f" in {r['encap']} {r['outer_saddr']} > {r['outer_daddr']}"
        if r["probe"] == "drop":
            line += f" reason {r['drop_reason']}"
        out.append(line)
    return out


class RateLimitedPrinter:
    """Prints at most max_per_s event lines a second; says how many it skipped
    (they are still in the capture file and the summary)."""

    def __init__(self, write, max_per_s: int = 2000):
        self.write = write
        self.max_per_s = max_per_s
        self.window_start = time.monotonic()
        self.printed = 0
        self.skipped = 0

    def emit(self, table: pa.Table) -> None:
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self._flush_skipped()
            self.window_start, self.printed = now, 0
        room = max(0, self.max_per_s - self.printed)
        shown = min(room, table.num_rows)
        for line in format_events(table, shown):
            self.write(line)
        self.printed += shown
        self.skipped += table.num_rows - shown

    def _flush_skipped(self) -> None:
        if self.skipped:
            self.write(f"... {self.skipped} more events not shown (recorded in the capture and summary)")
            self.skipped = 0

    def close(self) -> None:
        self._flush_skipped()



class StatusLine:
    """The capture's progress on stderr: rewritten in place every second on a
    terminal; in a log (not a terminal), one line every `every` updates so a
    long capture does not flood it. Notices always get their own line."""

    def __init__(self, write, is_tty: bool, every: int = 10):
        self.write = write  # write(text, newline: bool)
        self.is_tty = is_tty
        self.every = every
        self.count = 0
        self.dirty = False

    def status(self, text: str) -> None:
        self.count += 1
        if self.is_tty:
            self.write("\r" + text + "\033[K", False)
            self.dirty = True
        elif self.count % self.every == 0:
            self.write(text, True)

    def notice(self, text: str) -> None:
        self.end_line()
        self.write(text, True)

    def end_line(self) -> None:
        if self.dirty:
            self.write("", True)
            self.dirty = False
