"""tracer.rules without the kernel: walks from hand-made trace events, rule
actions from their text, nfnetlink encoding, rule-text listings, the
legacy-xtables decision."""

from __future__ import annotations

import struct

import pytest

from tracer.errors import LegacyXtablesError
from tracer.rules import nfnetlink as nl
from tracer.rules.legacy import check_not_legacy
from tracer.rules.rule_text import RuleTexts, parse_nft_listing, zip_chains
from tracer.rules.trace_events import TraceEvent, decode_trace
from tracer.rules.trace_table import create_batch, key_bytes
from tracer.rules.walk import action, build_walks, format_walk


def ev(tid: int, table: str, chain: str, handle: int | None, verdict: str | None,
       target: str | None = None, kind: str = "rule", policy: str | None = None) -> TraceEvent:
    return TraceEvent(ts=0, trace_id=tid, type=kind, family=2, table=table, chain=chain, handle=handle,
                      verdict=verdict, target=target, policy=policy, iif=None, oif=None, mark=None,
                      nfproto=2)


KUBE_DNAT = [
    ev(1, "nat", "PREROUTING", 14, "jump", "KUBE-SERVICES"),
    ev(1, "nat", "KUBE-SERVICES", 21, "jump", "KUBE-SVC-X"),
    ev(1, "nat", "KUBE-SVC-X", 23, "jump", "KUBE-MARK-MASQ"),
    ev(1, "nat", "KUBE-MARK-MASQ", 20, "continue"),
    ev(1, "nat", "KUBE-MARK-MASQ", None, "continue"),  # 6.x's implicit return
    ev(1, "nat", "KUBE-SVC-X", 26, "jump", "KUBE-SEP-Y"),
    ev(1, "nat", "KUBE-SEP-Y", 28, "accept"),
]
TEXTS = {("KUBE-SEP-Y", 28): "-A KUBE-SEP-Y -p tcp -m tcp -j DNAT --to-destination 10.217.121.8:80",
         ("cali-tw-cali1234", 7): "-A cali-tw-cali1234 -d 10.217.121.9/32 -j DROP"}


def text_of(family: int, table: str, chain: str, handle: int | None) -> str | None:
    return TEXTS.get((chain, handle))


def test_dnat_walk_leaves_out_chains_that_returned() -> None:
    [walk] = build_walks(KUBE_DNAT, text_of)
    assert format_walk(walk) == ("nat PREROUTING -> KUBE-SERVICES -> KUBE-SVC-X -> KUBE-SEP-Y "
                                 "DNAT to 10.217.121.8:80 (handle 28)")
    assert [s.handle for s in walk.steps] == [14, 21, 23, 20, 26, 28]


def test_drop_walk_and_interleaved_packets_and_our_table_skipped() -> None:
    drop = [ev(2, "filter", "FORWARD", 3, "jump", "cali-FORWARD"),
            ev(2, "filter", "cali-FORWARD", 5, "jump", "cali-tw-cali1234"),
            ev(2, "filter", "cali-tw-cali1234", 7, "drop")]
    ours = [ev(2, "tracer_1", "prerouting", 3, "continue")]
    mixed = [ours[0], drop[0], KUBE_DNAT[0], drop[1], *KUBE_DNAT[1:], drop[2]]
    walks = build_walks(mixed, text_of, skip_tables=["tracer_1"])
    assert [w.line() for w in walks] == [
        "filter FORWARD -> cali-FORWARD -> cali-tw-cali1234 -> DROP (handle 7)",
        "nat PREROUTING -> KUBE-SERVICES -> KUBE-SVC-X -> KUBE-SEP-Y DNAT to 10.217.121.8:80 (handle 28)",
    ]


def test_goto_policy_and_incomplete_walks() -> None:
    events = [ev(3, "kube-proxy", "nat-prerouting", 39, "jump", "services"),
              ev(3, "kube-proxy", "services", 45, "goto", "service-A"),
              ev(3, "kube-proxy", "service-A", 60, "goto", "endpoint-B"),
              ev(3, "kube-proxy", "endpoint-B", 57, "accept"),
              ev(4, "kube-proxy", "filter-forward", 34, "jump", "service-endpoints-check"),
              ev(4, "kube-proxy", "service-endpoints-check", None, None, kind="return"),
              ev(4, "kube-proxy", "filter-forward", None, None, kind="policy", policy="accept"),
              ev(5, "filter", "INPUT", 9, "jump", "KUBE-FIREWALL")]
    texts = {57: "meta l4proto tcp dnat to 10.217.121.8:80"}
    lines = [w.line() for w in build_walks(events, lambda f, t, c, h: texts.get(h))]
    assert lines == [
        "kube-proxy nat-prerouting -> services -> service-A -> endpoint-B "
        "DNAT to 10.217.121.8:80 (handle 57)",
        "kube-proxy filter-forward -> policy accept",
        "filter INPUT -> KUBE-FIREWALL -> (walk incomplete)",
    ]


@pytest.mark.parametrize(("verdict", "text", "expected"), [
    ("drop", '-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "x has no endpoints" '
             "-j REJECT --reject-with icmp-port-unreachable", "REJECT icmp-port-unreachable"),
    ("accept", "-A POSTROUTING -j MASQUERADE --random-fully", "MASQUERADE"),
    ("accept", "-A X -j SNAT --to-source 1.2.3.4", "SNAT to 1.2.3.4"),
    ("drop", 'ip daddr @cluster-ips reject comment "Reject traffic"', "REJECT"),
    ("drop", "reject with icmp type host-unreachable", "REJECT host-unreachable"),
    ("drop", 'ip daddr 10.96.0.0/12 drop comment "Drop traffic"', "DROP"),
    ("accept", None, "ACCEPT"),
])
def test_action_from_rule_text(verdict: str, text: str | None, expected: str) -> None:
    assert action(verdict, text) == expected


def test_trace_message_decodes_verdict_and_headers() -> None:
    ip = bytes([0x45, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0]) + bytes([192, 168, 64, 1, 10, 96, 88, 88])
    tcp = struct.pack(">HHIIBB", 40000, 8088, 0, 0, 0x50, 0x02)
    payload = (nl.attr_str(1, "nat") + nl.attr_str(2, "KUBE-SERVICES") + nl.attr(3, struct.pack(">Q", 21))
               + nl.attr_be32(4, 3) + nl.nested(5, nl.attr_be32(1, -3), nl.attr_str(2, "KUBE-SVC-X"))
               + nl.attr_be32(6, 0xDEADBEEF) + nl.attr(8, ip) + nl.attr(9, tcp) + nl.attr_be32(10, 2))
    event = decode_trace(2, payload, ts=5)
    assert (event.trace_id, event.type, event.table, event.chain, event.handle) == (
        0xDEADBEEF, "rule", "nat", "KUBE-SERVICES", 21)
    assert (event.verdict, event.target, event.iif) == ("jump", "KUBE-SVC-X", 2)
    assert (event.src, event.dst, event.proto, event.sport, event.dport, event.tcp_flags) == (
        "192.168.64.1", "10.96.88.88", 6, 40000, 8088, 0x02)


def test_owner_flag_and_keys_are_encoded() -> None:
    assert key_bytes(("10.96.88.88", 8088, 6)) == bytes([10, 96, 88, 88, 6, 0, 0, 0, 0x1F, 0x98, 0, 0])
    parts = create_batch("tracer_1", [("10.96.88.88", 8088, 6)])
    table_attrs = nl.parse_attrs(parts[0][3])
    assert nl.cstr(table_attrs[1]) == "tracer_1" and nl.be32(table_attrs[2]) == 0x2
    assert [p[0] for p in parts] == [0, 9, 12, 3, 6, 6, 6, 3, 6, 6, 6]


LISTING = """table ip filter { # handle 3
    set s { # handle 9
        type ipv4_addr
        elements = { 10.0.0.1,
                 10.0.0.2 }
    }
    chain FORWARD { # handle 1
        type filter hook forward priority filter; policy accept;
         counter packets 5 bytes 300 jump cali-FORWARD # handle 3
    }
    chain cali-FORWARD { # handle 2
        oifname "cali1234" counter packets 1 bytes 60 jump cali-tw-cali1234 # handle 5
        ip daddr 10.0.0.0/8 accept # handle 6
    }
}
"""


def test_listing_zips_with_iptables_save_order_per_chain() -> None:
    nft = parse_nft_listing(LISTING)
    assert nft == {"FORWARD": [(3, "jump cali-FORWARD")],
                   "cali-FORWARD": [(5, 'oifname "cali1234" jump cali-tw-cali1234'),
                                    (6, "ip daddr 10.0.0.0/8 accept")]}
    saved = {"FORWARD": ["-A FORWARD -j cali-FORWARD"], "cali-FORWARD": ["-A cali-FORWARD -o cali1234"]}
    zipped = zip_chains(nft, saved)
    assert zipped[("FORWARD", 3)] == "-A FORWARD -j cali-FORWARD"
    # Counts differ: nft's own text rather than a wrong pairing.
    assert zipped[("cali-FORWARD", 6)] == "ip daddr 10.0.0.0/8 accept"


def test_unknown_handle_rereads_the_table_at_most_once_a_second() -> None:
    calls: list[list[str]] = []
    now = [100.0]
    listing = [LISTING]

    def runner(argv: list[str]) -> str:
        calls.append(argv)
        return listing[0] if argv[0] == "nft" else ""

    texts = RuleTexts(runner=runner, clock=lambda: now[0])
    assert texts.lookup(2, "filter", "FORWARD", 3) == "jump cali-FORWARD"
    assert texts.lookup(2, "filter", "FORWARD", 99) is None
    reads = len(calls)
    assert texts.lookup(2, "filter", "FORWARD", 99) is None and len(calls) == reads
    listing[0] = LISTING.replace("# handle 3\n    }", "# handle 3\n        drop # handle 99\n    }")
    now[0] += 1.5
    assert texts.lookup(2, "filter", "FORWARD", 99) == "drop"


def test_legacy_decision() -> None:
    kube = ":KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-NODEPORTS\n"

    def outputs(legacy: str, nft_save: str, kube_proxy: str):
        return lambda argv: {"iptables-legacy-save": legacy, "iptables-nft-save": nft_save,
                             "nft": kube_proxy}[argv[0]]

    with pytest.raises(LegacyXtablesError, match=r"^--rules cannot trace legacy xtables rules"):
        check_not_legacy(outputs(kube, "", ""))
    check_not_legacy(outputs("", "", ""))
    check_not_legacy(outputs(kube, kube, ""))  # both: the nf_tables ones are traced
    check_not_legacy(outputs(kube, "", "table ip kube-proxy {\n}"))
