"""A table of `iptables-save` text (or `iptables-restore` input) read into
chains of rules, each reduced to its options: the tokenizer under
tracer.kube.iptables_parse, which resolves Services from the nat table (and
from the filter table, those without endpoints).

Accepts output of both iptables backends (nft and legacy), with or without
counters (`-c`: "[pkts:bytes] -A ..."), long option names, `-I CHAIN N`, and
lines that do not tokenize (skipped).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# Long option names -> the short ones iptables-save prints.
_LONG_TO_SHORT = {
    "--append": "-A",
    "--insert": "-I",
    "--source": "-s",
    "--src": "-s",
    "--destination": "-d",
    "--dst": "-d",
    "--protocol": "-p",
    "--jump": "-j",
    "--goto": "-g",
    "--match": "-m",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--destination-port": "--dport",
    "--source-port": "--sport",
}
# Options that take exactly this many values; any other option takes the
# following tokens up to the next one that starts with "-" or is "!".
_VALUE_COUNT = {
    "-A": 1, "-I": 1, "-s": 1, "-d": 1, "-p": 1, "-m": 1, "-j": 1, "-g": 1, "-i": 1, "-o": 1,
    "-c": 2, "--dport": 1, "--sport": 1, "--comment": 1, "--mode": 1, "--probability": 1,
    "--to-destination": 1, "--to-source": 1, "--src-type": 1, "--dst-type": 1, "--name": 1,
    "--seconds": 1, "--mark": 1, "--set-xmark": 1, "--or-mark": 1, "--xor-mark": 1,
    "--nfacct-name": 1, "--ctstate": 1, "--every": 1, "--packet": 1, "--to-ports": 1,
}


@dataclass
class Rule:
    """One `-A` line, reduced to the options the walk needs."""

    chain: str
    options: dict[str, str] = field(default_factory=dict)  # first value of each option
    negated: set[str] = field(default_factory=set)
    flags: set[str] = field(default_factory=set)  # options given without a value

    @property
    def target(self) -> str | None:
        return self.options.get("-j") or self.options.get("-g")

    @property
    def comment(self) -> str | None:
        return self.options.get("--comment")

    def get(self, option: str) -> str | None:
        return self.options.get(option)


@dataclass
class NatTable:
    chains: dict[str, list[Rule]] = field(default_factory=dict)

    def rules(self, chain: str | None) -> list[Rule]:
        return self.chains.get(chain, []) if chain else []

    def has(self, chain: str) -> bool:
        return chain in self.chains


def read_nat_table(text: str) -> NatTable:
    """The nat table of iptables-save (or iptables-restore) text.

    Lines before any "*table" header count as nat, so a bare list of rules
    works too. Lines that do not tokenize are skipped."""
    return read_table(text, "nat", headerless="nat")


def read_table(text: str, name: str, headerless: str | None = None) -> NatTable:
    """Table `name` ("nat", "filter") of iptables-save text; lines before any
    "*table" header belong to table `headerless` (None: to none)."""
    table = NatTable()
    current: str | None = headerless
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = line[1:].strip()
            continue
        if line == "COMMIT":
            current = None
            continue
        if current != name:
            continue
        if line.startswith(":"):
            table.chains.setdefault(line[1:].split()[0], [])
            continue
        rule = _parse_rule(line)
        if rule is not None:
            table.chains.setdefault(rule.chain, []).append(rule)
    return table


def _parse_rule(line: str) -> Rule | None:
    if line.startswith("["):  # iptables-save -c: "[packets:bytes] -A ..."
        line = line.partition("]")[2].strip()
    try:
        tokens = shlex.split(line)
    except ValueError:
        return None
    rule: Rule | None = None
    negate = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "!":
            negate = True
            continue
        if not token.startswith("-"):
            continue  # a stray value
        option = _LONG_TO_SHORT.get(token, token)
        count = _VALUE_COUNT.get(option)
        values: list[str] = []
        if count is None:
            while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
                values.append(tokens[i])
                i += 1
        else:
            values = tokens[i : i + count]
            i += count
        if option in ("-A", "-I"):
            if not values:
                return None
            rule = Rule(chain=values[0])
            if option == "-I" and i < len(tokens) and tokens[i].isdigit():
                i += 1  # "-I CHAIN 1 ..."
        elif rule is not None:
            if values:
                rule.options.setdefault(option, values[0])
            else:
                rule.flags.add(option)
            if negate:
                rule.negated.add(option)
        negate = False
    return rule
