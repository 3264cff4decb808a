"""A rule's handle -> its text, as the person who wrote it would read it.

Tables iptables-nft made (kube-proxy's iptables mode, Calico's Felix) are
shown in iptables syntax: within one chain, `nft -a list table` lists the
rules in the kernel's order, which is the order `iptables-save` prints them
in, so the two lists zip handle to rule line. Where they do not line up (a
rule iptables-nft cannot translate back, a table changed between the two
reads) the chain keeps nft's text rather than guess. Native nftables tables
(kube-proxy's nftables mode) are shown as `nft -a list` prints the rule.

The texts are read per table and read again when a handle is not known
(rules change while a capture runs), at most once per REFRESH_S per table."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable

from tracer.errors import EnvironmentProblem, MissingPackageError

# The tables iptables-nft keeps, per address family (nft's name for it).
XTABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 7: "bridge", 10: "ip6", 5: "netdev"}
REFRESH_S = 1.0

_HANDLE = re.compile(r"^(?P<text>.*?)\s*# handle (?P<handle>\d+)\s*$")
# A block's first line: `chain NAME { # handle 3`, `set NAME {`, `table ip nat {`.
_BLOCK = re.compile(r'^(?P<kind>[a-z]+)\s+(?:\S+\s+)??(?P<name>"[^"]*"|\S+)\s*\{\s*(?:# handle \d+.*)?$')
_COUNTER = re.compile(r"\s*counter packets \d+ bytes \d+")

Runner = Callable[[list[str]], str]  # argv -> stdout ("" when the table is not there)


def run_program(argv: list[str]) -> str:
    """Run argv in the calling thread's network namespace (a forked child
    inherits the thread's namespace, so callers wrap this in netns.entered)."""
    program = shutil.which(argv[0], path="/usr/sbin:/sbin:/usr/bin:/bin")
    if program is None:
        raise MissingPackageError(argv[0], "nftables" if argv[0] == "nft" else "iptables")
    try:
        proc = subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=30,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"{argv[0]}: no answer within 30s") from exc
    return proc.stdout if proc.returncode == 0 else ""


def parse_nft_listing(text: str) -> dict[str, list[tuple[int, str]]]:
    """`nft -a list table` text -> chain -> [(handle, rule text)] in order.
    Counters are dropped: they change under us and say nothing of the rule."""
    chains: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        block = _BLOCK.match(line)
        if block:
            # Only a chain's lines are rules; a set's or map's are not.
            is_chain = block.group("kind") == "chain"
            current = chains.setdefault(block.group("name").strip('"'), []) if is_chain else None
            continue
        if line == "}":
            current = None
            continue
        found = _HANDLE.match(line)
        if current is not None and found and found.group("text"):
            text_only = _COUNTER.sub("", found.group("text")).strip()
            current.append((int(found.group("handle")), " ".join(text_only.split())))
    return chains


def parse_iptables_save(text: str) -> dict[str, list[str]]:
    """`iptables-save -t T` -> chain -> its `-A` lines, in order."""
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return chains


def zip_chains(nft: dict[str, list[tuple[int, str]]],
               saved: dict[str, list[str]]) -> dict[tuple[str, int], str]:
    """(chain, handle) -> text: iptables lines where the chain's counts agree."""
    out: dict[tuple[str, int], str] = {}
    for chain, rules in nft.items():
        lines = saved.get(chain, [])
        same = len(lines) == len(rules)
        for i, (handle, text) in enumerate(rules):
            out[(chain, handle)] = lines[i] if same else text
    return out


class RuleTexts:
    """(family, table, chain, handle) -> the rule's text, read on demand."""

    def __init__(self, runner: Runner = run_program, clock: Callable[[], float] = time.monotonic):
        self.runner = runner
        self.clock = clock
        self.tables: dict[tuple[str, str], dict[tuple[str, int], str]] = {}
        self.read_at: dict[tuple[str, str], float] = {}
        self.iptables_syntax: set[tuple[str, str]] = set()

    def lookup(self, family: int | str, table: str, chain: str, handle: int | None) -> str | None:
        if handle is None:
            return None
        key = (FAMILIES.get(family, str(family)) if isinstance(family, int) else family, table)
        texts = self.tables.get(key)
        if texts is None or ((chain, handle) not in texts
                             and self.clock() - self.read_at.get(key, 0.0) >= REFRESH_S):
            texts = self.refresh(*key)
        return texts.get((chain, handle))

    def refresh(self, family: str, table: str) -> dict[tuple[str, int], str]:
        nft = parse_nft_listing(self.runner(["nft", "-a", "list", "table", family, table]))
        texts = {(chain, h): text for chain, rules in nft.items() for h, text in rules}
        if family == "ip" and table in XTABLES:
            saved = parse_iptables_save(self.runner(["iptables-nft-save", "-t", table]))
            if saved:
                texts = zip_chains(nft, saved)
                self.iptables_syntax.add((family, table))
        self.tables[(family, table)] = texts
        self.read_at[(family, table)] = self.clock()
        return texts
