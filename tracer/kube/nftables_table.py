"""One nftables table (kube-proxy's `ip kube-proxy`) read into plain facts:
its chains with what each rule does, its maps and sets with their elements.

Three inputs give the same NftTable:
  - `nft -j list table ip kube-proxy` (JSON; what a node is read with),
    read here (read_nft_json);
  - `nft list table ip kube-proxy` (the block text nft prints; also the
    relevant part of `nft list ruleset`), and
  - the transaction kube-proxy hands to `nft -f -` through knftables
    ("add chain ...", "flush chain ...", "add rule ...", "add element ..."),
    applied in order, which is what tracer.kube.nftables_render writes:
    both read by tracer.kube.nftables_text.
tracer.kube.nftables_parse.read_nft takes any of them.

A rule is reduced to what resolving Services needs (NftRule): its verdict, a
`numgen random mod N vmap { ... }` choice, a `dnat to`, `meta l4proto`,
`fib saddr type local`, address/port matches, the sets it looks the source
up in or updates (session affinity), its counter and comment. Sets keep
their timeout. Everything else in a rule is kept only as text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import TracerError

KUBE_PROXY_FAMILY = "ip"
KUBE_PROXY_FAMILY6 = "ip6"  # the IPv6 proxier's table: table ip6 kube-proxy
KUBE_PROXY_TABLE = "kube-proxy"


class NftablesParseError(TracerError):
    """The text is neither nft JSON nor nft rule text this reader understands."""


@dataclass(frozen=True)
class NftRule:
    chain: str
    text: str = ""  # the rule as nft prints it (empty when read from JSON)
    verdict: str | None = None  # "jump", "goto", "return", "drop", "reject", "accept"
    target: str | None = None  # the chain a jump/goto names
    numgen_mod: int | None = None  # `numgen random mod N vmap {...}`
    numgen_targets: tuple[tuple[int, str], ...] = ()  # (index, chain) of that vmap
    dnat_to: tuple[str, int | None] | None = None  # (ip, port)
    l4proto: str | None = None  # `meta l4proto tcp`
    fib_saddr_local: bool = False  # `fib saddr type local`
    saddr: str | None = None  # `ip saddr X` (an address or prefix)
    saddr_negated: bool = False  # `ip saddr != X` (or != { ... })
    saddr_set: tuple[str, ...] = ()  # `ip saddr [!=] { A, B/24 }`: its elements
    daddr: str | None = None
    dport: int | None = None
    saddr_in_set: str | None = None  # `ip saddr @X`: the set X (kube-proxy's affinity-...)
    updates_set: str | None = None  # `update @X { ip saddr }`: the set X
    packets: int | None = None  # the rule's `counter`, if it has one
    bytes: int | None = None
    comment: str | None = None


@dataclass(frozen=True)
class NftElement:
    key: tuple[str, ...]  # "10.96.0.1 . tcp . 443" -> ("10.96.0.1", "tcp", "443")
    verdict: str | None = None  # None for a set element
    target: str | None = None
    comment: str | None = None


@dataclass
class NftTable:
    family: str = KUBE_PROXY_FAMILY
    name: str = KUBE_PROXY_TABLE
    chains: dict[str, list[NftRule]] = field(default_factory=dict)
    # Maps and sets alike: name -> elements.
    elements: dict[str, list[NftElement]] = field(default_factory=dict)
    exists: bool = False  # the table was in the input at all
    # Sets declared with a timeout (`timeout 10800s` / `3h`), in seconds.
    set_timeouts: dict[str, int] = field(default_factory=dict)

    def rules(self, chain: str | None) -> list[NftRule]:
        return self.chains.get(chain, []) if chain else []

    def has_chain(self, chain: str | None) -> bool:
        return bool(chain) and chain in self.chains


def looks_like_nft(text: str) -> bool:
    """True for nft JSON or text that holds a table (rather than iptables-save text)."""
    head = text.lstrip()[:4096]
    if head.startswith("{") and '"nftables"' in head:
        return True
    return bool(re.search(r"^\s*(?:add\s+)?table\s+\w+\s+\S+", head, re.MULTILINE))


def read_nft_json(text: str, family: str = KUBE_PROXY_FAMILY, table: str = KUBE_PROXY_TABLE) -> NftTable:
    """The table family/table from `nft -j list ...` output."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise NftablesParseError(f"nft JSON does not parse: {exc}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise NftablesParseError('nft JSON has no "nftables" list')
    out = NftTable(family=family, name=table)

    def ours(obj: dict[str, Any]) -> bool:
        return obj.get("family") == family and obj.get("table", obj.get("name")) == table

    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        kind, obj = next(iter(item.items()))
        if not isinstance(obj, dict):
            continue
        if kind == "table" and obj.get("family") == family and obj.get("name") == table:
            out.exists = True
        elif kind == "chain" and ours(obj):
            out.chains.setdefault(str(obj["name"]), [])
        elif kind in ("map", "set") and ours(obj):
            out.elements[str(obj["name"])] = [_json_element(e) for e in obj.get("elem", [])]
            if isinstance(obj.get("timeout"), int):  # nft -j gives seconds
                out.set_timeouts[str(obj["name"])] = obj["timeout"]
        elif kind == "rule" and ours(obj):
            chain = str(obj["chain"])
            out.chains.setdefault(chain, []).append(_json_rule(chain, obj))
    return out


def _json_scalar(value: Any) -> str:
    if isinstance(value, dict) and "prefix" in value:
        prefix = value["prefix"]
        return f"{prefix['addr']}/{prefix['len']}"
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return f"{low}-{high}"
    return str(value)


def _json_verdict(value: Any) -> tuple[str | None, str | None]:
    if isinstance(value, dict):
        for verb in ("goto", "jump"):
            if verb in value:
                return verb, str(value[verb]["target"])
        for verb in ("drop", "accept", "return", "reject", "continue"):
            if verb in value:
                return verb, None
    if isinstance(value, str):
        return value, None
    return None, None


def _json_element(elem: Any) -> NftElement:
    comment = None
    value: Any = None
    if isinstance(elem, list) and len(elem) == 2:  # a map element: [key, value]
        key, value = elem
    else:
        key = elem
    if isinstance(key, dict) and "elem" in key:  # an element with a comment
        comment = key["elem"].get("comment")
        key = key["elem"]["val"]
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    verdict, target = _json_verdict(value) if value is not None else (None, None)
    return NftElement(tuple(_json_scalar(p) for p in parts), verdict, target, comment)


def _json_rule(chain: str, obj: dict[str, Any]) -> NftRule:
    facts: dict[str, Any] = {"chain": chain, "comment": obj.get("comment")}
    for expr in obj.get("expr", []):
        if not isinstance(expr, dict) or len(expr) != 1:
            continue
        kind, body = next(iter(expr.items()))
        if kind in ("jump", "goto"):
            facts["verdict"], facts["target"] = kind, str(body["target"])
        elif kind in ("return", "drop", "accept", "reject"):
            facts["verdict"] = kind
        elif kind == "counter" and isinstance(body, dict):
            facts["packets"], facts["bytes"] = int(body["packets"]), int(body["bytes"])
        elif kind == "dnat" and isinstance(body, dict):
            port = body.get("port")
            facts["dnat_to"] = (str(body["addr"]), int(port) if port is not None else None)
        elif kind == "vmap" and isinstance(body, dict):
            key = body.get("key", {})
            data = body.get("data")
            if isinstance(key, dict) and "numgen" in key and isinstance(data, dict):
                facts["numgen_mod"] = int(key["numgen"]["mod"])
                targets = []
                for index, verdict in data.get("set", []):
                    _, target = _json_verdict(verdict)
                    if isinstance(index, int) and target:
                        targets.append((index, target))
                facts["numgen_targets"] = tuple(targets)
        elif kind == "match" and isinstance(body, dict):
            _json_match(facts, body)
        elif kind == "set" and isinstance(body, dict) and body.get("op") in ("update", "add"):
            facts["updates_set"] = str(body.get("set", "")).lstrip("@") or None
    return NftRule(**facts)


def _json_match(facts: dict[str, Any], body: dict[str, Any]) -> None:
    left, right, op = body.get("left"), body.get("right"), body.get("op", "==")
    if not isinstance(left, dict):
        return
    if isinstance(right, str) and right.startswith("@"):
        # A set lookup ("ip daddr @cluster-ips"), not an address; kube-proxy's
        # affinity rules look the source up ("ip saddr @affinity-...").
        payload = left.get("payload") or {}
        if payload.get("field") == "saddr" and op == "==":
            facts["saddr_in_set"] = right[1:]
        return
    if "payload" in left:
        field_name = left["payload"].get("field")
        protocol = left["payload"].get("protocol")
        if protocol in ("ip", "ip6") and field_name == "saddr" and op in ("==", "!="):
            if isinstance(right, dict) and isinstance(right.get("set"), list):
                facts["saddr_set"] = tuple(_json_scalar(x) for x in right["set"])
            else:
                facts["saddr"] = _json_scalar(right)
            facts["saddr_negated"] = op == "!="
        elif protocol in ("ip", "ip6") and field_name == "daddr" and op == "==":
            facts["daddr"] = _json_scalar(right)
        elif field_name == "dport" and isinstance(right, int):
            facts["dport"] = right
    elif "meta" in left and left["meta"].get("key") == "l4proto" and isinstance(right, str):
        facts["l4proto"] = right
    elif "fib" in left and "saddr" in left["fib"].get("flags", []) and right == "local":
        facts["fib_saddr_local"] = True
