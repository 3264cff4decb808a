"""`tracer diagnose` in words: the summary line, then each failure group
(outcome, where it stopped, who answered with an RST or an ICMP error, the
rule, the finding) and what could not be judged. The numbers and their
JSON: tracer.analysis.diagnose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracer.analysis.icmp import judgement_text
from tracer.analysis.udp_flows import ALL_OUTCOMES, ANSWERED, UDP_OUTCOMES

if TYPE_CHECKING:
    from tracer.analysis.diagnose import Diagnosis

WHY_UDP = {"no_answer": "no answer to the datagram", "unreachable": "unreachable by ICMP"}
WHY = {
    "no_answer": "no answer to the SYN",
    "reset": "reset",
    "unreachable": "unreachable by ICMP",
    "stalled": "stalled after the handshake",
    "no_data": "closed without server data",
}


def _ratelimit(group: dict[str, Any]) -> str:
    """The sysctl that limits the group's ICMP errors: its family's."""
    # "[v6]:port" or "v4:port": more than one colon only in an IPv6 address.
    v6 = str(group["examples"][0]["client"]).count(":") > 1 if group["examples"] else False
    return "net.ipv6.icmp.ratelimit" if v6 else "net.ipv4.icmp_ratelimit"


def _place(s: dict[str, Any]) -> str:
    return f"{s['node']} {s['device']}" + (f" ({s['netns']})" if s["netns"] != s["node"] else "")


def _stop_text(group: dict[str, Any]) -> str:
    s = group["stop"]
    if not s:
        return "stopped: not seen inside the nodes"
    place = _place(s)
    if s["kind"] == "dropped":
        hook = f" at {s['hook']}" if s["hook"] else ""
        return f"dropped on {place}{hook}: {s['drop_reason'] or 'no reason recorded'}" + (
            f", after {s['after']}" if s["after"] else "")
    if s["kind"] == "sent_by":
        who = "the pod" if group["reset_by"] == "pod" else "the node (no pod involved: a REJECT)"
        return f"RST sent by {who}, from {place}"
    return f"last seen: {s['probe']} on {place}, then no event"


def _icmp_text(i: dict[str, Any]) -> str:
    who = {"pod": "the pod", "node": "the node (no pod involved)"}.get(
        i["sent_by"], "a router outside the captured nodes")
    v6 = "v6" if ":" in str(i["sender"]) else ""
    return (f"ICMP{v6} {i['type']}/{i['code']} {i['name']} from {i['sender']}, sent by {who}, "
            f"first seen at {i['probe']} on {i['node']} {i['device']}, quoting {i['quoted']}")


def format_text(d: Diagnosis) -> str:
    c = d.connections
    lines = [f"service {d.service}: {d.summary}"]
    if d.verdict != "no_connections":
        shown = [o for o in ALL_OUTCOMES if (o != ANSWERED or c["udp"])
                 and (o in UDP_OUTCOMES or c["tcp"])]
        lines.append("  " + ", ".join(f"{o.replace('_', ' ')} {c[o]}" for o in shown)
                     + f", undetermined {c['undetermined']}")
    if c["already_open"]:
        lines.append(f"  {c['already_open']} connection(s) began before the capture: not judged")
    for i, g in enumerate(d.failures, 1):
        lines.append("")
        udp = g["proto"] == "udp"
        why = (WHY_UDP if udp else WHY)[g["outcome"]]
        if g["reset_by"]:
            why += f" by the {g['reset_by']}"
        if g["outcome"] == "unreachable" and g["icmp"]:
            why = judgement_text(g["icmp"])
        if g["denied_by"]:
            why += ": denied by loadBalancerSourceRanges, not a fault"
        lines.append(f"failure {i}: {g['count']} {'flow' if udp else 'connection'}(s) {why}")
        lines.append(f"  {_stop_text(g)}")
        if g["reset_from"] and g["stop"] and g["stop"]["kind"] != "sent_by":
            who = "the pod" if g["reset_by"] == "pod" else "the node (no pod involved: a REJECT)"
            lines.append(f"  RST sent by {who}, from {_place(g['reset_from'])}")
        if g["icmp"]:
            lines.append(f"  {_icmp_text(g['icmp'])}")
        if g["rule"]:
            r = g["rule"]
            lines.append(f"  rule on {r['node']}: {r['walk']}  ({r['packets']} packet(s))")
            if r["text"]:
                lines.append(f"    {r['text']}")
            if g["outcome"] == "no_answer" and " REJECT" in r["walk"]:
                lines.append("  the REJECT's ICMP error never left for these: the kernel limits "
                             f"ICMP errors per destination ({_ratelimit(g)})")
        if udp and g["stop"] and g["stop"]["drop_reason"] == "NO_SOCKET":
            lines.append("  no socket listens on the port where it arrived (NO_SOCKET)" + (
                "" if g["icmp"] else "; no ICMP error came back for these: the kernel "
                f"rate-limits them ({_ratelimit(g)})"))
        lines.append(f"  {g['finding']}")
        if g["syn_retransmits"]:
            lines.append(f"  the clients retransmitted their SYN {g['syn_retransmits']} times")
        if g["retransmitted_segments"]:
            lines.append(f"  {g['retransmitted_segments']} server segment(s) retransmitted, the "
                         f"largest {g['largest_retransmitted']} bytes, never acknowledged")
        if g["size_limit"]:
            lim = g["size_limit"]
            lines.append(f"  lost by size: no packet of {lim['smallest_lost']} bytes or more got "
                         f"through, the {lim['largest_delivered']}-byte ones did: a link on the way "
                         "does not carry packets this large (an MTU mismatch)")
        ex = g["examples"][0]
        packet = f" (`tracer timeline --packet {g['stop']['packet']}`)" if g["stop"] else ""
        lines.append(f"  e.g. {ex['client']} -> {ex['frontend']}{packet}")
    for u in d.undetermined:
        lines.append("")
        would = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in u["would_be"].items())
        why = ("the capture ended before they could be judged" if u["reason"] == "capture_ended"
               else f"the capture lost {d.capture['lost']} events: a missing answer may be a "
               "lost event")
        noun = "flow" if u["proto"] == "udp" else "connection"
        lines.append(f"not judged: {u['count']} {noun}(s) ({would}): {why}")
    return "\n".join(lines)
