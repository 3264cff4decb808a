"""One nftables table (kube-proxy's `ip kube-proxy`) read into plain facts:
its chains with what each rule does, its maps and sets with their elements.

Three inputs give the same NftTable:
  - `nft -j list table ip kube-proxy` (JSON; what a node is read with),
  - `nft list table ip kube-proxy` (the block text nft prints; also the
    relevant part of `nft list ruleset`),
  - the transaction kube-proxy hands to `nft -f -` through knftables
    ("add chain ...", "flush chain ...", "add rule ...", "add element ..."),
    applied in order, which is what tracer.kube.nftables_render writes.

A rule is reduced to what resolving Services needs (NftRule): its verdict, a
`numgen random mod N vmap { ... }` choice, a `dnat to`, `meta l4proto`,
`fib saddr type local`, address/port matches, its counter and comment.
Everything else in a rule is kept only as text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import TracerError

KUBE_PROXY_FAMILY = "ip"
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
    saddr_negated: bool = False  # `ip saddr != X`
    daddr: str | None = None
    dport: int | None = None
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

    def rules(self, chain: str | None) -> list[NftRule]:
        return self.chains.get(chain, []) if chain else []

    def has_chain(self, chain: str | None) -> bool:
        return bool(chain) and chain in self.chains


def read_nft(text: str, family: str = KUBE_PROXY_FAMILY, table: str = KUBE_PROXY_TABLE) -> NftTable:
    """The table family/table from nft JSON or nft text (either kind)."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return read_nft_json(text, family, table)
    return read_nft_text(text, family, table)


def looks_like_nft(text: str) -> bool:
    """True for nft JSON or text that holds a table (rather than iptables-save text)."""
    head = text.lstrip()[:4096]
    if head.startswith("{") and '"nftables"' in head:
        return True
    return bool(re.search(r"^\s*(?:add\s+)?table\s+\w+\s+\S+", head, re.MULTILINE))


# --- JSON ----------------------------------------------------------------------------------


def read_nft_json(text: str, family: str = KUBE_PROXY_FAMILY, table: str = KUBE_PROXY_TABLE) -> NftTable:
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
    return NftRule(**facts)


def _json_match(facts: dict[str, Any], body: dict[str, Any]) -> None:
    left, right, op = body.get("left"), body.get("right"), body.get("op", "==")
    if not isinstance(left, dict):
        return
    if isinstance(right, str) and right.startswith("@"):
        return  # a set lookup ("ip daddr @cluster-ips"), not an address
    if "payload" in left:
        field_name = left["payload"].get("field")
        protocol = left["payload"].get("protocol")
        if protocol in ("ip", "ip6") and field_name == "saddr" and op in ("==", "!="):
            facts["saddr"], facts["saddr_negated"] = _json_scalar(right), op == "!="
        elif protocol in ("ip", "ip6") and field_name == "daddr" and op == "==":
            facts["daddr"] = _json_scalar(right)
        elif field_name == "dport" and isinstance(right, int):
            facts["dport"] = right
    elif "meta" in left and left["meta"].get("key") == "l4proto" and isinstance(right, str):
        facts["l4proto"] = right
    elif "fib" in left and "saddr" in left["fib"].get("flags", []) and right == "local":
        facts["fib_saddr_local"] = True


# --- text ----------------------------------------------------------------------------------

_COMMENT_TAIL = re.compile(r'\s+comment\s+"((?:[^"\\]|\\.)*)"\s*$')
_VERDICT_TAIL = re.compile(r"(?:^|\s)(jump|goto)\s+(\S+)\s*$|(?:^|\s)(return|drop|accept|reject)\s*$")
_NUMGEN = re.compile(r"numgen\s+random\s+mod\s+(\d+)(?:\s+offset\s+\d+)?\s+vmap\s+\{(.*)\}")
_DNAT = re.compile(r"\bdnat\s+(?:ip6?\s+)?to\s+(\S+)")
_L4PROTO = re.compile(r"\bmeta\s+l4proto\s+(\w+)")
_COUNTER = re.compile(r"\bcounter\s+packets\s+(\d+)\s+bytes\s+(\d+)")
# An address or prefix starts with a hex digit: not "@set", not ". meta ...".
_SADDR = re.compile(r"\bip6?\s+saddr\s+(!=\s+)?([0-9a-fA-F][0-9a-fA-F.:/]*)(?=\s|$)")
_DADDR = re.compile(r"\bip6?\s+daddr\s+([0-9a-fA-F][0-9a-fA-F.:/]*)(?=\s|$)")
_DPORT = re.compile(r"\b(?:tcp|udp|sctp|th)\s+dport\s+(\d+)\b")


def parse_rule_text(chain: str, text: str) -> NftRule:
    """One rule as nft prints it (or as knftables writes it) -> NftRule."""
    rule = text.strip()
    comment = None
    match = _COMMENT_TAIL.search(rule)
    if match:
        comment = match.group(1).replace('\\"', '"')
        rule = rule[: match.start()].rstrip()
    facts: dict[str, Any] = {"chain": chain, "text": rule, "comment": comment}
    numgen = _NUMGEN.search(rule)
    if numgen:
        facts["numgen_mod"] = int(numgen.group(1))
        targets = []
        for item in _split_top(numgen.group(2)):
            index, _, verdict = item.partition(":")
            words = verdict.split()
            if index.strip().isdigit() and len(words) == 2 and words[0] in ("goto", "jump"):
                targets.append((int(index), words[1]))
        facts["numgen_targets"] = tuple(targets)
    else:
        verdict = _VERDICT_TAIL.search(rule)
        if verdict:
            if verdict.group(1):
                facts["verdict"], facts["target"] = verdict.group(1), verdict.group(2)
            else:
                facts["verdict"] = verdict.group(3)
    dnat = _DNAT.search(rule)
    if dnat:
        facts["dnat_to"] = _host_port(dnat.group(1))
    for pattern, name in ((_L4PROTO, "l4proto"), (_DADDR, "daddr")):
        found = pattern.search(rule)
        if found:
            facts[name] = found.group(1)
    saddr = _SADDR.search(rule)
    if saddr:
        facts["saddr"], facts["saddr_negated"] = saddr.group(2), bool(saddr.group(1))
    dport = _DPORT.search(rule)
    if dport:
        facts["dport"] = int(dport.group(1))
    counter = _COUNTER.search(rule)
    if counter:
        facts["packets"], facts["bytes"] = int(counter.group(1)), int(counter.group(2))
    facts["fib_saddr_local"] = bool(re.search(r"\bfib\s+saddr\s+type\s+local\b", rule))
    return NftRule(**facts)


def _host_port(value: str) -> tuple[str, int | None]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    return host, int(port) if port.isdigit() else None


def _split_top(text: str) -> list[str]:
    """Split on commas outside double quotes and braces."""
    parts, depth, quoted, current = [], 0, False, []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "{":
            depth += 1
        elif not quoted and ch == "}":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_element_text(text: str) -> NftElement:
    """`10.96.0.1 . tcp . 443 comment "x" : goto chain` (or a set element)."""
    key_part, sep, value = text.partition(" : ")
    comment = None
    match = re.search(r'\s+comment\s+"((?:[^"\\]|\\.)*)"\s*$', key_part)
    if match:
        comment = match.group(1)
        key_part = key_part[: match.start()]
    key = tuple(p.strip() for p in key_part.split(" . "))
    verdict = target = None
    if sep:
        words = value.split()
        verdict = words[0] if words else None
        target = words[1] if len(words) > 1 else None
    return NftElement(key, verdict, target, comment)


_TABLE_HEADER = re.compile(r"^table\s+(\S+)\s+(\S+)\s*\{\s*$")
_BLOCK_HEADER = re.compile(r"^(chain|map|set)\s+(\S+)\s*\{\s*$")
_OPERATION = re.compile(
    r"^(add|create|insert|flush|delete|destroy)\s+(table|chain|rule|map|set|element)\s+(\S+)\s+(\S+)\s*(.*)$"
)


def read_nft_text(text: str, family: str = KUBE_PROXY_FAMILY, table: str = KUBE_PROXY_TABLE) -> NftTable:
    """`nft list` block text, or a knftables transaction, or both mixed."""
    out = NftTable(family=family, name=table)
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = _TABLE_HEADER.match(line)
        if header:
            mine = header.group(1) == family and header.group(2) == table
            _read_table_block(out if mine else NftTable(), lines)
            if mine:
                out.exists = True
            continue
        operation = _OPERATION.match(line)
        if operation:
            verb, kind, fam, name, rest = operation.groups()
            if (fam, name) == (family, table):
                _apply(out, verb, kind, rest)
    return out


def _apply(out: NftTable, verb: str, kind: str, rest: str) -> None:
    """One knftables operation ("add rule ip kube-proxy <rest>" etc.)."""
    words = rest.split(None, 1)
    name = words[0] if words else ""
    tail = words[1] if len(words) > 1 else ""
    if kind == "table":
        if verb in ("delete", "destroy"):
            out.chains.clear()
            out.elements.clear()
            out.exists = False
        else:
            out.exists = True
        return
    out.exists = True
    if kind == "chain":
        if verb in ("add", "create"):
            out.chains.setdefault(name, [])
        elif verb == "flush":
            out.chains[name] = []
        elif verb in ("delete", "destroy"):
            out.chains.pop(name, None)
    elif kind in ("map", "set"):
        if verb in ("add", "create"):
            out.elements.setdefault(name, [])
        elif verb == "flush":
            out.elements[name] = []
        elif verb in ("delete", "destroy"):
            out.elements.pop(name, None)
    elif kind == "rule" and verb in ("add", "insert"):
        rule = parse_rule_text(name, re.sub(r"^(?:index|handle)\s+\d+\s+", "", tail))
        rules = out.chains.setdefault(name, [])
        if verb == "insert":
            rules.insert(0, rule)
        else:
            rules.append(rule)
    elif kind == "element":
        body = tail.strip()
        if body.startswith("{") and body.endswith("}"):
            elements = [parse_element_text(e) for e in _split_top(body[1:-1])]
            bucket = out.elements.setdefault(name, [])
            if verb in ("add", "create"):
                bucket.extend(elements)
            elif verb in ("delete", "destroy"):
                gone = {e.key for e in elements}
                out.elements[name] = [e for e in bucket if e.key not in gone]


def _read_table_block(out: NftTable, lines) -> None:
    """The inside of `table F N { ... }` up to its closing brace."""
    for raw in lines:
        line = raw.strip()
        if line == "}":
            return
        block = _BLOCK_HEADER.match(line)
        if not block:
            continue  # the table's comment, flags
        kind, name = block.groups()
        if kind == "chain":
            out.chains[name] = _read_chain_block(name, lines)
        else:
            out.elements[name] = _read_set_block(lines)


def _read_chain_block(name: str, lines) -> list[NftRule]:
    rules = []
    for raw in lines:
        line = raw.strip()
        if line == "}":
            break
        if not line or line.startswith(("type ", "comment ", "policy ", "devices ")):
            continue
        rules.append(parse_rule_text(name, line))
    return rules


def _read_set_block(lines) -> list[NftElement]:
    elements: list[NftElement] = []
    collecting: list[str] | None = None
    for raw in lines:
        line = raw.strip()
        if collecting is not None:
            collecting.append(line)
            if line.endswith("}"):
                body = " ".join(collecting)
                elements.extend(parse_element_text(e) for e in _split_top(body[: body.rfind("}")]))
                collecting = None
            continue
        if line == "}":
            break
        if line.startswith("elements = {"):
            body = line[len("elements = {") :]
            if body.rstrip().endswith("}"):
                body = body.rstrip()[:-1]
                elements.extend(parse_element_text(e) for e in _split_top(body))
            else:
                collecting = [body]
    return elements
