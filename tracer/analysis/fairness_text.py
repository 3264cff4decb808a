"""`tracer fairness` as text: the endpoint table of a FairnessReport
(tracer.analysis.fairness), the chi-square verdict, the largest deviation,
Jain's index, then requests per connection, per-client and per-window groups.
"""

from __future__ import annotations

from tracer.analysis import affinity
from tracer.analysis.fairness import FairnessReport, GroupFairness

# A report's unit (tracer.analysis.fairness.unit_of): its words in a sentence,
# a column head and after "per".
_WORDS = {"flows": ("flows", "flows", "flow")}


def _words(report: FairnessReport) -> tuple[str, str, str]:
    return _WORDS.get(report.unit, (report.unit, "conns", "conn"))


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def _verdict(g: GroupFairness, alpha: float) -> str:
    c = g.chi2
    if c.impossible:
        return "p = 0: connections reached endpoints the rules never choose"
    if c.p_value != c.p_value:
        return "p-value n/a (one endpoint)"
    verdict = "deviates from the promise" if c.p_value < alpha else "consistent with the promise"
    caveat = "" if c.reliable else " (expected counts < 5: approximate)"
    return f"chi-square {c.statistic:.2f} (df {c.df}), p = {c.p_value:.3g}: {verdict}{caveat}"


def _endpoint_table(o: GroupFairness, ci: str, head: str = "conns", per: str = "conn") -> list[str]:
    heads = [
        "endpoint",
        "node",
        head,
        "observed",
        "promised",
        ci,
        "deviation",
        "requests",
        f"req/{per}",
    ]
    rows = []
    for e in o.endpoints:
        rows.append(
            [
                e.endpoint,
                e.node or "",
                str(e.connections),
                _pct(e.observed_share),
                _pct(e.promised_share),
                f"[{_pct(e.ci_low)}, {_pct(e.ci_high)}]",
                f"{100 * e.deviation:+.1f} pts" + (" *" if e.significant else ""),
                str(e.requests),
                f"{e.requests / e.connections:.2f}" if e.connections else "-",
            ]
        )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)
    ]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    for r in rows:
        lines.append(
            "  "
            + "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return lines


def _overall_lines(report: FairnessReport) -> list[str]:
    """The Service's endpoint table, the test's verdict, the largest deviation, Jain."""
    o = report.overall
    ci = f"{round(100 * report.confidence)}% CI"
    unit, head, per = _words(report)
    lines = [
        f"Service {report.service}: {o.connections} new {unit} "
        f"(DNAT decisions: nat events dnat + nat_first; never per packet)"
    ]
    lines += _endpoint_table(o, ci, head, per)
    lines.append(f"  {_verdict(o, 1 - report.confidence)}")
    big = o.largest
    if big is not None:
        lines.append(
            f"  largest deviation: {big.endpoint} {100 * big.deviation:+.1f} points "
            f"({ci} {100 * (big.ci_low - big.promised_share):+.1f} .. "
            f"{100 * (big.ci_high - big.promised_share):+.1f})"
            + ("  * promised share outside the CI" if big.significant else "")
        )
    lines.append(f"  Jain's fairness index of observed/promised: {o.jain:.4f} (1 = as promised)")
    return lines


def _group_lines(report: FairnessReport, max_rows: int) -> list[str]:
    """Requests per connection, then the per-client and per-window groups."""
    lines = []
    r = report.requests
    unit, head, per = _words(report)
    if r.get("per_connection"):
        pc = r["per_connection"]
        lines.append(
            f"\nRequests per {'flow' if per == 'flow' else 'connection'} ({r['counted']}): "
            f"mean {pc['mean']:.2f}, p50 {pc['p50']:g}, "
            f"p90 {pc['p90']:g}, p99 {pc['p99']:g}, max {pc['max']:g}"
        )
    if report.per_family:
        lines.append("\nPer family (a dual-stack Service's IPv4 and IPv6 ports are separate promises):")
        for g in report.per_family:
            counts = " ".join(f"{e.endpoint} {e.connections}" for e in g.endpoints)
            lines.append(f"  {g.label:<5} {head} {g.connections:>6}  [{counts}]  "
                         f"Jain {g.jain:.4f}  {_verdict(g, 1 - report.confidence)}")
    if report.per_client:
        lines.append(
            f"\nPer client (pre-NAT source), {min(max_rows, len(report.per_client))} of "
            f"{len(report.per_client)} by {unit}:"
        )
        for g in report.per_client[:max_rows]:
            counts = " ".join(f"{e.connections}" for e in g.endpoints)
            req = sum(e.requests for e in g.endpoints)
            lines.append(
                f"  {g.label:<16} {head} {g.connections:>6}  per endpoint [{counts}]  "
                f"req/{per} {req / g.connections if g.connections else 0:.2f}  "
                + _client_judgement(g, report)
            )
    if report.windows:
        lines.append(f"\nOver time (windows of {report.window_ns / 1e9:g} s):")
        for g in report.windows[: max_rows * 5]:
            counts = " ".join(f"{e.connections}" for e in g.endpoints)
            lines.append(
                f"  {g.label:>8}  {head} {g.connections:>6}  per endpoint [{counts}]  "
                f"Jain {g.jain:.3f}  p {g.chi2.p_value:.3g}"
            )
    return lines


def format_text(report: FairnessReport, max_rows: int = 10) -> str:
    lines = _overall_lines(report) + affinity.format_lines(report.affinity, max_rows)
    lines += _group_lines(report, max_rows)
    if report.excluded_dnat:
        lines.append(
            f"\n{report.excluded_dnat} DNAT decisions were for other services and not counted"
        )
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _client_judgement(g, report) -> str:
    """A client's spread, or under session affinity its stickiness: with
    ClientIP affinity one client is one draw, so its own spread over the
    endpoints says nothing (Jain and chi-square would call every
    well-pinned client unfair)."""
    if report.affinity is None:
        return f"Jain {g.jain:.3f}  p {g.chi2.p_value:.3g}"
    moved = sum(1 for v in report.affinity.violations if v.client == g.label)
    reached = sum(1 for e in g.endpoints if e.connections)
    if moved:
        return f"affinity: left its endpoint {moved} time(s)"
    return "affinity: pinned" if reached == 1 else f"affinity: {reached} endpoints (expired)"
