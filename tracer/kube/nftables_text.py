"""nft's text forms of one table read into an NftTable (tracer.kube.nftables_table):
the block text `nft list table ip kube-proxy` prints (also the relevant part
of `nft list ruleset`), and the transaction kube-proxy hands to `nft -f -`
through knftables ("add chain ...", "flush chain ...", "add rule ...",
"add element ..."), applied in order; the two may be mixed.

A rule is reduced by parse_rule_text to what resolving Services needs, with
its text kept.
"""

from __future__ import annotations

import re
from typing import Any

from tracer.kube.nftables_table import (
    KUBE_PROXY_FAMILY,
    KUBE_PROXY_TABLE,
    NftElement,
    NftRule,
    NftTable,
)

_COMMENT_TAIL = re.compile(r'\s+comment\s+"((?:[^"\\]|\\.)*)"\s*$')
_VERDICT_TAIL = re.compile(r"(?:^|\s)(jump|goto)\s+(\S+)\s*$|(?:^|\s)(return|drop|accept|reject)\s*$")
_NUMGEN = re.compile(r"numgen\s+random\s+mod\s+(\d+)(?:\s+offset\s+\d+)?\s+vmap\s+\{(.*)\}")
_DNAT = re.compile(r"\bdnat\s+(?:ip6?\s+)?to\s+(\S+)")
_L4PROTO = re.compile(r"\bmeta\s+l4proto\s+(\w+)")
_COUNTER = re.compile(r"\bcounter\s+packets\s+(\d+)\s+bytes\s+(\d+)")
# An address or prefix starts with a hex digit: not "@set", not ". meta ...".
_SADDR = re.compile(r"\bip6?\s+saddr\s+(!=\s+)?([0-9a-fA-F][0-9a-fA-F.:/]*)(?=\s|$)")
_SADDR_SET = re.compile(r"\bip6?\s+saddr\s+(!=\s+)?\{([^}]*)\}")
_DADDR = re.compile(r"\bip6?\s+daddr\s+([0-9a-fA-F][0-9a-fA-F.:/]*)(?=\s|$)")
_SADDR_IN_SET = re.compile(r"\bip6?\s+saddr\s+@(\S+)")
_SET_UPDATE = re.compile(r"\b(?:update|add)\s+@(\S+)\s*\{\s*ip6?\s+saddr\s*\}")
# An nft time: "10800s", "3h", "2h59m50s", "1d", "500ms".
_TIME_PART = re.compile(r"(\d+)(ms|d|h|m|s)")
_TIMEOUT = re.compile(r"\btimeout\s+(\d[0-9dhms]*)")
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
    for pattern, name in ((_L4PROTO, "l4proto"), (_DADDR, "daddr"),
                          (_SADDR_IN_SET, "saddr_in_set"), (_SET_UPDATE, "updates_set")):
        found = pattern.search(rule)
        if found:
            facts[name] = found.group(1)
    saddr = _SADDR.search(rule)
    if saddr:
        facts["saddr"], facts["saddr_negated"] = saddr.group(2), bool(saddr.group(1))
    saddr_set = _SADDR_SET.search(rule)
    if saddr_set:
        facts["saddr_negated"] = bool(saddr_set.group(1))
        facts["saddr_set"] = tuple(x.strip() for x in saddr_set.group(2).split(",") if x.strip())
    dport = _DPORT.search(rule)
    if dport:
        facts["dport"] = int(dport.group(1))
    counter = _COUNTER.search(rule)
    if counter:
        facts["packets"], facts["bytes"] = int(counter.group(1)), int(counter.group(2))
    facts["fib_saddr_local"] = bool(re.search(r"\bfib\s+saddr\s+type\s+local\b", rule))
    return NftRule(**facts)


def nft_seconds(text: str) -> int | None:
    """An nft time ("10800s", "3h", "2h59m50s", "1d") in whole seconds."""
    parts = _TIME_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return int(sum(int(n) * scale[u] for n, u in parts))


def _set_timeout(text: str) -> int | None:
    """The `timeout T` of a set declaration (not the "timeout" flag)."""
    found = _TIMEOUT.search(text)
    return nft_seconds(found.group(1)) if found else None


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
    # A dynamic set's element carries its own timer: "10.0.0.2 timeout 3h expires 2h59m".
    key_part = re.sub(r"\s+(?:timeout|expires)\s+\S+", "", key_part)
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
            timeout = _set_timeout(tail)
            if timeout is not None:
                out.set_timeouts[name] = timeout
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
            out.elements[name], timeout = _read_set_block(lines)
            if timeout is not None:
                out.set_timeouts[name] = timeout


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


def _read_set_block(lines) -> tuple[list[NftElement], int | None]:
    """A set or map block's elements, and its timeout (None without one)."""
    elements: list[NftElement] = []
    timeout = None
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
        if line.startswith("timeout "):
            timeout = _set_timeout(line)
        if line.startswith("elements = {"):
            body = line[len("elements = {") :]
            if body.rstrip().endswith("}"):
                body = body.rstrip()[:-1]
                elements.extend(parse_element_text(e) for e in _split_top(body))
            else:
                collecting = [body]
    return elements, timeout
