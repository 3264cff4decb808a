"""``tracer report``: one page (Markdown and HTML, with PNGs) per set of captures.

Sections: warnings (lost events, overflow, incomplete captures, ambiguous
cross-node matches, clock trouble) first and loud; capture metadata; sample
packet timelines; latency tables, histograms and plot; fairness table and chart.
The page is built once as a list of blocks and rendered twice, so the
Markdown and HTML versions say the same thing."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tracer.analysis import fairness as fairness_mod
from tracer.analysis import fairness_text, plots
from tracer.analysis import latency as latency_mod
from tracer.analysis import timeline as timeline_mod
from tracer.analysis.addresses import int_to_ip, proto_name
from tracer.analysis.endpoint_placement import endpoint_nodes
from tracer.analysis.events import PROBE_DROP, PROBE_NAT, load_events
from tracer.analysis.flows import Endpoint, FlowSpec, select_packets
from tracer.analysis.packets import PacketOptions, Packets, assemble
from tracer.analysis.service import PortPromise, parse_service, service_name
from tracer.histograms import fill_bucket_gaps, format_buckets, log2_rows
from tracer.safe_output import OutputDir, StagedDir, refuse_overlap


@dataclass
class Block:
    kind: str  # h1 h2 h3 p warn table img code
    text: str = ""
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()


def _md(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "warn":
            out.append(f"> **WARNING:** {b.text}")
        elif b.kind == "table":
            out.append("| " + " | ".join(b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in b.rows]
        elif b.kind == "img":
            out.append(f"![{b.headers[0] if b.headers else ''}]({b.text})")
        elif b.kind == "code":
            out.append("```\n" + b.text + "\n```")
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
.warn{background:#fff0f0;border-left:6px solid #c00;padding:.6em 1em;font-weight:600}
img{max-width:100%}"""


def _html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "warn":
            out.append(f"<div class='warn'>WARNING: {e(b.text)}</div>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b.rows
            )
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b.kind == "img":
            out.append(f"<img src='{e(b.text)}' alt='{e(b.headers[0] if b.headers else '')}'>")
        elif b.kind == "code":
            out.append(f"<pre>{e(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def _fmt(ns: float | None) -> str:
    return "unknown" if ns is None else timeline_mod.fmt_duration(ns)


def warnings(packets: Packets) -> list[str]:
    out = []
    for node, meta in packets.node_meta.items():
        stats = meta.get("stats") or {}
        if stats.get("lost"):
            by = ", ".join(f"{k} {v}" for k, v in (stats.get("lost_by_probe") or {}).items() if v)
            out.append(
                f"{node}: {stats['lost']} events LOST (ring buffer full)"
                f"{f' ({by})' if by else ''}; "
                "packet journeys may miss hops and counts below are lower bounds"
            )
        if stats.get("filter_overflow"):
            out.append(
                f"{node}: filter overflow {stats['filter_overflow']}: some traffic was not traced"
            )
        if meta.get("complete") is False:
            out.append(
                f"{node}: capture incomplete (killed or still running): its last ~second is missing"
            )
    links = packets.links
    amb = int(links["ambiguous"].sum()) if len(links) else 0
    if amb:
        out.append(
            f"{amb} of {len(links)} cross-node matches are ambiguous "
            "(several packets with the same "
            "fingerprint); their pairing is a guess, marked in timelines"
        )
    for c in packets.clocks.nodes.values():
        if not c.consistent:
            out.append(
                f"{c.node}: clock bounds inconsistent ({c.method}); cross-node times are unreliable"
            )
        elif c.method in ("none", "metadata") and len(packets.clocks.nodes) > 1:
            out.append(
                f"{c.node}: no crossing traffic to estimate its clock; "
                f"trusting its UTC clock ({_fmt(c.uncertainty_ns)} claimed)"
            )
    return out


def _metadata_table(packets: Packets) -> Block:
    rows = []
    for node, meta in packets.node_meta.items():
        stats = meta.get("stats") or {}
        clock = packets.clocks.nodes.get(node)
        offset = (
            "reference"
            if clock and clock.method == "reference"
            else (
                f"{clock.offset_ns / 1e3:+.1f} µs ± {_fmt(clock.uncertainty_ns)}" if clock else ""
            )
        )
        backends = ", ".join(f"{k}={v}" for k, v in (meta.get("backends") or {}).items())
        dur = (meta.get("ended_ns") or 0) - (meta.get("started_ns") or 0)
        rows.append(
            [
                node,
                meta.get("kernel", ""),
                meta.get("mode", ""),
                backends,
                meta.get("started_at", ""),
                f"{dur / 1e9:.1f} s" if dur > 0 else "",
                str(stats.get("events", "")),
                str(stats.get("lost", 0)),
                str(meta.get("complete", "")),
                offset,
            ]
        )
    return Block(
        "table",
        headers=[
            "node",
            "kernel",
            "mode",
            "backends",
            "started",
            "duration",
            "events",
            "lost",
            "complete",
            "clock offset",
        ],
        rows=rows,
    )


def sample_packets(packets: Packets, limit: int = 4) -> list[list[int]]:
    """Groups of packet ids worth showing: a connection's first packet that
    crossed nodes with its reply, a dropped packet, an ambiguous match."""
    ev = packets.events
    groups: list[list[int]] = []
    if not len(ev):
        return groups
    pk = ev["packet"].to_numpy()
    nodes_per = ev.groupby("packet")["node"].nunique()
    multi = set(nodes_per.index[nodes_per.to_numpy() > 1])
    first_nat = set(pk[(ev["probe_code"].to_numpy() == PROBE_NAT) & ev["nat_first"].to_numpy()])
    crossing_first = sorted(first_nat & multi) or sorted(first_nat) or sorted(multi)
    if crossing_first:
        syn = crossing_first[0]
        # Its reply: the next packet of the same connection (tuple reversed somewhere).
        row = ev[pk == syn].iloc[0]
        spec = FlowSpec(
            Endpoint(int(row.src), int(row.sport)),
            Endpoint(int(row.dst), int(row.dport)),
            int(row.proto),
        )
        flow_ids = select_packets(ev, spec)
        groups.append([int(i) for i in flow_ids[flow_ids >= syn][:2]])
    dropped = np.unique(pk[ev["probe_code"].to_numpy() == PROBE_DROP])
    if len(dropped):
        groups.append([int(dropped[0])])
    amb = np.unique(pk[ev["link_ambiguous"].to_numpy()])
    if len(amb):
        groups.append([int(amb[0])])
    if not groups:
        groups.append([1])
    return groups[:limit]


def _service_at_start(packets: Packets) -> tuple[dict[str, Any] | None, int]:
    """The Service as the capture started (service_history's first entry;
    meta["service"] is the latest) and how many versions the capture saw."""
    services = [
        (
            (m.get("service_history") or [{}])[0].get("service") or m.get("service"),
            len(m.get("service_history") or []),
        )
        for m in packets.node_meta.values()
        if m.get("service")
    ]
    return services[0] if services else (None, 0)


def _capture_blocks(packets: Packets) -> list[Block]:
    """Each capture's metadata, and the clock offsets between nodes."""
    blocks = [Block("h2", "Captures"), _metadata_table(packets)]
    if len(packets.clocks.nodes) > 1:
        blocks.append(
            Block(
                "p",
                "Clock offsets are estimated from packets that crossed between nodes "
                "(NTP-style bounds: a packet is received after it is sent).",
            )
        )
        blocks.append(Block("code", "\n".join(packets.clocks.summary())))
    return blocks


def _service_blocks(packets: Packets, service: dict[str, Any], versions: int) -> list[Block]:
    """The kube-proxy rules' endpoints and shares, per port and choice."""
    where = endpoint_nodes(packets.events, packets.node_meta)
    rows = []
    for port in parse_service(service):
        front = _frontend_text(port)
        for which, eps in (
            ("cluster", port.endpoints),
            ("local (externalTrafficPolicy)", port.local_endpoints),
        ):
            rows += [
                [
                    front,
                    which,
                    e.key,
                    where.get(e.key, ""),
                    "" if e.probability is None else f"{e.probability:.5f}",
                    f"{100 * e.share:.1f}%",
                    e.chain or "",
                ]
                for e in eps
            ]
    blocks = []
    if versions > 1:
        blocks.append(
            Block(
                "warn",
                f"the Service's endpoints changed {versions - 1} time(s) during the "
                "capture; fairness follows each connection's version",
            )
        )
    headers = ["port", "choice", "endpoint", "node (seen)", "rule probability", "promised share"]
    blocks += [
        Block("h3", f"Service {service_name(service)} (kube-proxy rules at capture start)"),
        Block("table", headers=[*headers, "chain"], rows=rows),
    ]
    return blocks


def _timeline_blocks(packets: Packets, out: OutputDir) -> list[Block]:
    """A few sample packets' journeys: charts (written to out) and text."""
    heading = Block("h2", "Sample packet timelines")
    if not len(packets.events):
        return [heading, Block("p", "No events (histogram-mode capture or no matching traffic).")]
    blocks = [heading]
    for gi, ids in enumerate(sample_packets(packets)):
        docs = list(timeline_mod.journeys(packets, ids))
        png = plots.plot_timeline(docs, f"timeline-{gi + 1}.png", into=out)
        blocks.append(Block("img", png.name, headers=[f"timeline of packets {ids}"]))
        blocks.append(Block("code", "\n\n".join(timeline_mod.format_journey(d) for d in docs)))
    return blocks


def _latency_blocks(packets: Packets, out: OutputDir) -> list[Block]:
    """The latency chart (written to out), tables and histograms."""
    lat = latency_mod.analyze(packets)
    blocks = [Block("h2", "Latency")]
    if lat.nat or lat.traversal or lat.hops:
        png = plots.plot_latency(lat, "latency.png", into=out)
        blocks.append(Block("img", png.name, headers=["latency distributions"]))
    for title, dists, cols in (
        ("NAT hook time", lat.nat, ["node", "hook", "kind", "first"]),
        ("Node traversal", lat.traversal, ["node", "path"]),
        ("Cross-node hop", lat.hops, ["from", "to"]),
    ):
        if not dists:
            continue
        blocks.append(Block("h3", title))
        blocks.append(
            Block(
                "table",
                headers=[*cols, "count", "p50", "p90", "p99", "p99.9", "max", "note"],
                rows=[
                    [str(d.labels.get(c, "")) for c in cols]
                    + [str(d.count)]
                    + [_fmt(d.percentiles[k]) for k in ("50", "90", "99", "99.9")]
                    + [_fmt(d.max), d.note]
                    for d in dists
                ],
            )
        )
    if lat.nat:
        text = "\n\n".join(f"{d.name}\n{format_buckets(log2_rows(d.log2))}" for d in lat.nat)
        blocks.append(Block("code", text))
    if lat.kernel:
        blocks.append(Block("h3", "In-kernel NAT hook histograms"))
        text = "\n\n".join(
            f"{h['node']} {h['hook']} {'first' if h['first'] else 'established'}\n"
            f"{format_buckets(fill_bucket_gaps(h['buckets']))}"
            for h in lat.kernel
        )
        blocks.append(Block("code", text))
    return blocks


def _fairness_blocks(packets: Packets, out: OutputDir) -> list[Block]:
    """The fairness chart (written to out), table and text."""
    heading = Block("h2", "Fairness")
    fair = fairness_mod.analyze(packets)
    if not fair.overall.connections:
        return [heading, Block("p", "No new connections (DNAT decisions) in these captures.")]
    png = plots.plot_fairness(fair, "fairness.png", into=out)
    return [
        heading,
        Block("img", png.name, headers=["fairness"]),
        _fairness_table(fair),
        Block("code", fairness_text.format_text(fair)),
    ]


def is_report_file(name: str) -> bool:
    """An entry `tracer report` writes (what --force may replace)."""
    return name in ("report.md", "report.html") or name.endswith(".png")


def build(
    captures: Sequence[str | Path],
    out_dir: str | Path,
    *,
    options: PacketOptions | None = None,
    force: bool = False,
) -> Path:
    """Write out_dir/report.md, out_dir/report.html and their PNGs; returns the .md path.

    The inputs are read before anything is created; the report is built in a
    new directory beside out_dir and renamed into place when complete. An
    existing report is replaced only with `force` (tracer.safe_output.StagedDir)."""
    out = Path(out_dir)
    refuse_overlap(out, captures, replaces_dir=True)
    staged = StagedDir(out, force=force, belongs=is_report_file, what="report")
    packets = assemble(load_events(captures), options)
    with staged.writing() as staging:
        _write_report(packets, captures, staging)
    return out / "report.md"


def _write_report(packets: Packets, captures: Sequence[str | Path], out: OutputDir) -> None:
    service, versions = _service_at_start(packets)
    what = service.get("name") if service else "capture"
    title = f"tracer report: {what} on {', '.join(packets.node_meta)}"
    blocks: list[Block] = [
        Block("h1", title),
        Block(
            "p",
            f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} from "
            f"{', '.join(str(c) for c in captures)}: "
            f"{len(packets.events)} events, {packets.count} packets.",
        ),
    ]
    blocks += [Block("warn", w) for w in warnings(packets)]
    blocks += _capture_blocks(packets)
    if service:
        blocks += _service_blocks(packets, service, versions)
    blocks += _timeline_blocks(packets, out)
    blocks += _latency_blocks(packets, out)
    blocks += _fairness_blocks(packets, out)
    md, page = _md(blocks).encode(), _html(blocks, title).encode()
    out.write_file("report.md", lambda f: f.write(md))
    out.write_file("report.html", lambda f: f.write(page))


def _frontend_text(port: PortPromise) -> str:
    addrs = sorted(int_to_ip(a) for a in (*port.cluster_ips, *port.external_ips))
    text = f"{port.port}/{proto_name(port.protocol) if port.protocol is not None else '?'}"
    if addrs:
        text += " on " + ", ".join(addrs)
    if port.node_port:
        text += f", node port {port.node_port}"
    return text


def _fairness_table(fair: fairness_mod.FairnessReport) -> Block:
    ci = f"{round(100 * fair.confidence)}% CI"
    rows: list[list[Any]] = []
    for e in fair.overall.endpoints:
        rows.append(
            [
                e.endpoint,
                e.node or "",
                e.connections,
                f"{100 * e.observed_share:.1f}%",
                f"{100 * e.promised_share:.1f}%",
                f"{100 * e.ci_low:.1f}% .. {100 * e.ci_high:.1f}%",
                f"{100 * e.deviation:+.1f} pts{' *' if e.significant else ''}",
                e.requests,
            ]
        )
    return Block(
        "table",
        headers=["endpoint", "node", "connections", "observed", "promised", ci, "deviation", "requests"],
        rows=rows,
    )
