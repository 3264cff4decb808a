"""PNG charts: packet timelines (swimlanes), latency distributions, fairness.

Figures are built with matplotlib's object API on the Agg canvas: no display,
no global pyplot state, safe in servers and tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from tracer.analysis.fairness import FairnessReport
from tracer.analysis.latency import FINE_EDGES, Distribution, LatencyReport
from tracer.analysis.timeline import fmt_duration
from tracer.safe_output import OutputDir, write_file

PROBE_MARKERS = {
    "rx": ("o", "tab:blue"),
    "tx": ("s", "tab:green"),
    "nat": ("D", "tab:orange"),
    "drop": ("X", "tab:red"),
}


def _save(fig: Figure, path: str | Path, into: OutputDir | None = None) -> Path:
    """Write the figure to `path` (a name inside `into` when given): 0600,
    complete or not at all, never through a symlink (tracer.safe_output)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    fmt = path.suffix[1:].lower() or None  # the format the name says; PNG without one

    def draw(f) -> None:
        fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight")

    if into is not None:
        return into.write_file(path.name, draw)
    return write_file(path, draw)


def _hop_label(h: dict[str, Any]) -> str:
    where = (
        h["ifname"]
        if h["netns"] == h["node"] or not h["netns"]
        else ":".join(p for p in (h["netns"], h["ifname"]) if p)  # drops may have no device
    )
    if h["nat"]:
        n = h["nat"]
        after = n["after"].split(" -> ")
        before = n["before"].split(" -> ")
        change = (
            f"dst {before[1]}→{after[1]}"
            if before[1] != after[1]
            else f"src {before[0]}→{after[0]}"
        )
        first = " (first)" if n["first"] else ""
        return f"{n['kind'].upper()}{first} {change}\n{n['ns'] / 1e3:.1f} µs in {n['hook']}"
    if h["probe"] == "drop":
        return f"DROP {h['drop_reason'] or ''}\n{where}"
    return f"{h['probe']} {where}"


def _label_levels(lefts: np.ndarray, rights: np.ndarray, lanes: np.ndarray) -> np.ndarray:
    """Greedy layout: each hop's label goes to the first level (above 1, below
    -1, then 2, -2, ...) where it does not overlap an earlier label of its lane."""
    levels = np.zeros(len(lefts), dtype=int)
    placed: list[tuple[float, float, float, int]] = []  # (lane, left, right, level)
    for i in np.argsort((lefts + rights) / 2, kind="stable"):
        left, right = lefts[i], rights[i]
        for level in (1, -1, 2, -2, 3, -3, 4, -4):
            if all(
                not (lane == lanes[i] and lv == level and left < r and right > lf)
                for lane, lf, r, lv in placed
            ):
                break
        levels[i] = level
        placed.append((lanes[i], left, right, level))
    return levels


def _label_extents(
    x: np.ndarray, widths: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Where each label sits: centred on its mark, unless that would run past
    the axes (a label cut off at the figure's edge loses its end, often the
    interface name); then aligned to the mark from inside."""
    lefts, rights, align = x - widths / 2, x + widths / 2, ["center"] * len(x)
    for i in range(len(x)):
        if rights[i] > hi:
            lefts[i], rights[i], align[i] = x[i] - widths[i], x[i], "right"
        elif lefts[i] < lo:
            lefts[i], rights[i], align[i] = x[i], x[i] + widths[i], "left"
    return lefts, rights, align


def plot_timeline(
    journeys: Sequence[dict[str, Any]], path: str | Path, *, into: OutputDir | None = None
) -> Path:
    """Swimlanes, one panel per packet: a lane per node, hops as marks along
    time since the packet's first hop, NAT rewrites annotated."""
    journeys = list(journeys)[:6]
    if not journeys:
        raise ValueError("no packet to plot")
    nodes = list(dict.fromkeys(n for j in journeys for n in j["nodes"]))
    panel_h = 1.4 + 1.7 * len(nodes)
    fig = Figure(figsize=(13, panel_h * len(journeys)))
    axes = fig.subplots(len(journeys), 1, squeeze=False)[:, 0]
    axis_width_pt = 13 * 72 * 0.85
    for ax, j in zip(axes, journeys, strict=True):
        _timeline_panel(ax, j, nodes, axis_width_pt)
    handles = [
        axes[0].scatter([], [], marker=m, color=c, edgecolor="black", lw=0.5, label=p)
        for p, (m, c) in PROBE_MARKERS.items()
    ]
    axes[0].legend(handles=handles, loc="upper left", fontsize=7.5, ncol=4, framealpha=0.8)
    fig.tight_layout()
    return _save(fig, path, into)


def _timeline_panel(ax, j: dict[str, Any], nodes: list[str], axis_width_pt: float) -> None:
    """One packet: a lane per node, its hops as marks along time with their
    labels stacked clear of each other, the time on the wire between nodes."""
    lane = {n: i for i, n in enumerate(nodes)}
    x = np.array([h["since_first_ns"] / 1e3 for h in j["hops"]])
    y = np.array([lane[h["node"]] for h in j["hops"]], dtype=float)
    span = max(float(x.max()), 1.0)
    labels = [_hop_label(h) for h in j["hops"]]
    # Label width in data units: ~0.55 em per character at 7.5 pt.
    widths = np.array([max(len(s) for s in lab.split("\n")) * 7.5 * 0.55 + 6 for lab in labels])
    widths = widths / axis_width_pt * span * 1.14
    lo, hi = -0.07 * span, span * 1.09
    lefts, rights, align = _label_extents(x, widths, lo, hi)
    levels = _label_levels(lefts, rights, y)
    ax.plot(x, y, color="0.6", lw=1, zorder=1)
    for i, h in enumerate(j["hops"]):
        marker, color = PROBE_MARKERS.get(h["probe"], ("o", "black"))
        ax.scatter(
            [x[i]],
            [y[i]],
            marker=marker,
            color=color,
            s=70,
            zorder=3,
            edgecolor="black",
            lw=0.5,
        )
        level = int(levels[i])
        ax.annotate(
            labels[i],
            (x[i], y[i]),
            xytext=(0, 24 * level),
            textcoords="offset points",
            ha=align[i],
            va="bottom" if level > 0 else "top",
            fontsize=7.5,
            color="darkred" if h["nat"] or h["probe"] == "drop" else "black",
            arrowprops={"arrowstyle": "-", "color": "0.75", "lw": 0.5},
        )
        if "from_node" in h and h.get("from_node") != h["node"] and i > 0:
            label = f"{h['since_prev_ns'] / 1e3:.1f} µs on the wire"
            if h["crossed"]["ambiguous"]:
                label += f"\n(AMBIGUOUS: {h['crossed']['candidates']} candidates)"
            ax.annotate(
                label,
                ((x[i - 1] + x[i]) / 2, (y[i - 1] + y[i]) / 2),
                fontsize=7.5,
                ha="left",
                va="center",
                color="tab:purple",
                xytext=(6, 0),
                textcoords="offset points",
            )
    ax.set_yticks(range(len(nodes)), nodes)
    ax.set_ylim(-0.9, len(nodes) - 0.1)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("time since the packet's first hop (µs)")
    ax.set_ylabel("node")
    ax.grid(axis="x", color="0.92")
    title = f"packet {j['packet']}: {j['proto']} {j['src']} → {j['dst']} — {j['outcome']}"
    if j["ambiguous"]:
        title += "  [cross-node match AMBIGUOUS]"
    ax.set_title(title, fontsize=9.5, loc="left")


def _duration_axis(axis) -> None:
    """Log axis with ticks at 1-2-5 steps labelled 500ns, 1us, 20us, 1ms."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(
        FuncFormatter(
            lambda v, _: (
                fmt_duration(v).replace("us", " µs").replace("ns", " ns").replace("ms", " ms")
            )
        )
    )
    axis.set_minor_formatter(NullFormatter())


def _dist_panel(ax, dists: Sequence[Distribution], title: str) -> None:
    centers = np.sqrt(FINE_EDGES[:-1] * FINE_EDGES[1:])
    if not dists:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    lo, hi = None, None
    # NAT groups come in pairs (a connection's first packet, established
    # ones): one colour per node/hook/kind, solid for first, dashed for
    # established, so the pair reads as one.
    paired = bool(dists) and all("first" in d.labels for d in dists)
    group_keys = list(
        dict.fromkeys(tuple(v for k, v in d.labels.items() if k != "first") for d in dists)
    )
    for i, d in enumerate(dists):
        nz = np.flatnonzero(d.fine)
        if not len(nz):
            continue
        lo = nz[0] if lo is None else min(lo, nz[0])
        hi = nz[-1] if hi is None else max(hi, nz[-1])
        style: dict[str, Any] = {}
        if paired:
            key = tuple(v for k, v in d.labels.items() if k != "first")
            style = {
                "color": f"C{group_keys.index(key) % 10}",
                "ls": "-" if d.labels["first"] == "first" else "--",
            }
        else:
            style = {"color": f"C{i % 10}"}
        line = ax.step(
            centers,
            d.fine,
            where="mid",
            lw=1.4,
            label=f"{d.name}\n  n={d.count}, "
            f"p50 {fmt_duration(d.percentiles['50'])}, p99 {fmt_duration(d.percentiles['99'])}",
            **style,
        )
        ax.axvline(d.percentiles["99"], color=line[0].get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if lo is not None:
        ax.set_xlim(FINE_EDGES[max(lo - 2, 0)], FINE_EDGES[min(hi + 3, len(FINE_EDGES) - 1)])
    _duration_axis(ax.xaxis)
    ax.set_xlabel("duration (log scale; dotted line = p99)")
    ax.set_ylabel("packets per ¼-octave bin (log)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, which="major", color="0.9")
    if dists:
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_latency(
    report: LatencyReport, path: str | Path, *, into: OutputDir | None = None
) -> Path:
    panels = [
        (
            report.nat,
            "NAT hook time (nat_ns) per node, hook, kind: "
            "a connection's first packet (solid) vs established (dashed)",
        ),
        (report.traversal, "Node traversal: first rx → last tx of a packet on one node"),
        (report.hops, "Cross-node hop: tx on one node → rx on the next (clocks corrected)"),
    ]
    panels = [p for p in panels if p[0]] or panels[:1]
    fig = Figure(figsize=(14, 3.9 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (dists, title) in zip(axes, panels, strict=True):
        _dist_panel(ax, dists, title)
    fig.tight_layout()
    return _save(fig, path, into)


def _share_panel(ax, report: FairnessReport) -> None:
    """Per endpoint: promised share beside the observed one and its CI."""
    o = report.overall
    keys = [e.endpoint for e in o.endpoints]
    x = np.arange(len(keys))
    obs = np.array([e.observed_share for e in o.endpoints]) * 100
    prom = np.array([e.promised_share for e in o.endpoints]) * 100
    err = (
        np.array(
            [[e.observed_share - e.ci_low, e.ci_high - e.observed_share] for e in o.endpoints]
        ).T
        * 100
    )
    ax.bar(
        x - 0.2,
        prom,
        0.4,
        label="promised (kube-proxy rules)",
        color="0.75",
        edgecolor="black",
        lw=0.5,
    )
    ax.bar(
        x + 0.2,
        obs,
        0.4,
        yerr=err if len(keys) else None,
        capsize=4,
        label=(f"observed, {round(100 * report.confidence)}% Wilson CI"),
        color="tab:blue",
        edgecolor="black",
        lw=0.5,
    )
    for xi, e in zip(x, o.endpoints, strict=True):
        ax.annotate(
            f"n={e.connections}",
            (xi + 0.2, e.ci_high * 100),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(
        x, [f"{k}\n{e.node or ''}" for k, e in zip(keys, o.endpoints, strict=True)], fontsize=8
    )
    ax.set_ylabel("share of new connections (%)")
    ax.set_xlabel("endpoint (pod IP:port, node)")
    ax.set_title("Share per endpoint", fontsize=9.5, loc="left")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_ylim(0, max(100.0, float(np.nanmax(obs + err[1])) if len(keys) else 100.0) * 1.05)


def _windows_panel(ax, report: FairnessReport) -> None:
    """Each endpoint's observed share per time window, its CI band and its
    promised share (dashed)."""
    o = report.overall
    keys = [e.endpoint for e in o.endpoints]
    starts = np.array([i * report.window_ns / 1e9 for i in range(len(report.windows))])
    for k_i, key in enumerate(keys):
        shares = np.array([g.endpoints[k_i].observed_share * 100 for g in report.windows])
        lows = np.array([g.endpoints[k_i].ci_low * 100 for g in report.windows])
        highs = np.array([g.endpoints[k_i].ci_high * 100 for g in report.windows])
        line = ax.plot(starts, shares, marker="o", ms=3, label=key)
        ax.fill_between(starts, lows, highs, color=line[0].get_color(), alpha=0.15)
        ax.axhline(
            o.endpoints[k_i].promised_share * 100, color=line[0].get_color(), ls="--", lw=1
        )
    # A window's share says little when it holds few connections: say how many.
    for start, g in zip(starts, report.windows, strict=True):
        ax.annotate(
            f"n={g.connections}",
            (start, 100),
            xytext=(0, -3),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=7.5,
            color="0.35",
        )
    ax.set_xlabel(
        f"window start, s since the first connection (windows of {report.window_ns / 1e9:g} s)"
    )
    ax.set_ylabel("share of the window's new connections (%)")
    ax.set_title(
        "Over time (dashed: promised; band: CI; n: connections in the window)",
        fontsize=9.5,
        loc="left",
    )
    ax.set_ylim(0, 108)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, color="0.92")


def plot_fairness(
    report: FairnessReport, path: str | Path, *, into: OutputDir | None = None
) -> Path:
    """Observed share of new connections per endpoint (Wilson CI) vs promised,
    and the observed share over time windows."""
    o = report.overall
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    _share_panel(ax1, report)
    p = o.chi2.p_value
    # The verdict goes in the figure's title: a long axes title would run into
    # the second panel's.
    fig.suptitle(
        f"{report.service}: {o.connections} new connections (DNAT choices); "
        f"chi-square p = {p:.3g}; Jain's index {o.jain:.4f} (1 = as promised)",
        fontsize=10.5,
        x=0.01,
        ha="left",
    )
    if report.windows:
        _windows_panel(ax2, report)
    fig.tight_layout()
    return _save(fig, path, into)
