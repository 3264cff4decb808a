"""The #include "..." graph of bpf/ has no loop, and every file includes what
it uses: common.bpf.h once included encap.bpf.h in its middle while
encap.bpf.h used common's parse_ipv4() and struct tracer_pkt without
including anything, a loop the include lines alone did not show. Every
header has an include guard, and the composed source puts each header after
the headers it includes (tracer.capture.program)."""

from __future__ import annotations

import re

import pytest

from tracer.capture import program
from tracer.errors import TracerError

BPF_DIR = program.BPF_DIR
FILES = sorted(p.name for p in BPF_DIR.iterdir() if p.suffix in (".h", ".c"))
HEADERS = [f for f in FILES if f.endswith(".h")]
FAMILIES = [f for f in FILES if f.endswith(".bpf.c")]


def _includes(name: str) -> list[str]:
    return re.findall(r'^\s*#\s*include\s+"([^"]+)"', (BPF_DIR / name).read_text(), re.MULTILINE)


def _code(name: str) -> str:
    """The file without comments and string literals."""
    text = (BPF_DIR / name).read_text()
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"', " ", text, flags=re.DOTALL)


_DEFINITIONS = re.compile(
    r"^#\s*define\s+(\w+)"                               # macros
    r"|^static\s+__always_inline\s[^(;]*?\b(\w+)\s*\("   # helpers
    r"|^struct\s+(\w+)\s*\{"                              # structs
    r"|^BPF_\w+\(\s*(\w+)\s*,"                             # maps: BPF_HASH(name, ...)
    r"|^BPF_TABLE\([^,]+,[^,]+,[^,]+,\s*(\w+)\s*,",         # BPF_TABLE("kind", key, value, name, ...)
    re.MULTILINE,
)


def _definitions(name: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _DEFINITIONS.finditer(_code(name))}


def _reachable(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for inc in _includes(todo.pop()):
            if inc not in seen:
                seen.add(inc)
                todo.append(inc)
    return seen


def _find_loop(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if state.get(node) == "done":
            return None
        if state.get(node) == "open":
            return [*path[path.index(node):], node]
        state[node] = "open"
        path.append(node)
        for nxt in graph.get(node, []):
            loop = visit(nxt)
            if loop:
                return loop
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        loop = visit(node)
        if loop:
            return loop
    return None


def test_every_include_names_a_file_of_bpf():
    for name in FILES:
        for inc in _includes(name):
            assert inc in HEADERS, f"{name} includes {inc}, not a header of bpf/"


def test_the_include_graph_has_no_loop():
    graph = {name: _includes(name) for name in FILES}
    assert _find_loop(graph) is None


@pytest.mark.parametrize("name", FILES)
def test_every_file_includes_what_it_uses(name):
    """A name another bpf/ file defines is used only through an include of
    that file (or of one that includes it), never by luck of the order."""
    defined_by = {f: _definitions(f) for f in FILES}
    known = {"parse_ipv4", "tracer_pkt", "ETH_P_IP_BE", "stats", "foreign_flows"}
    assert known <= set().union(*defined_by.values())
    own = defined_by[name]
    reach = _reachable(name)
    missing = {}
    for word in set(re.findall(r"\b[A-Za-z_]\w*\b", _code(name))) - own:
        where = [f for f, names in defined_by.items() if word in names and f != name]
        if where and not reach.intersection(where):
            missing[word] = where
    assert not missing, f"{name} uses names of files it does not include: {missing}"


def test_the_loop_finder_finds_a_loop():
    assert _find_loop({"a.h": ["b.h"], "b.h": ["c.h"], "c.h": ["a.h"]}) == ["a.h", "b.h", "c.h", "a.h"]


@pytest.mark.parametrize("header", HEADERS)
def test_every_header_has_an_include_guard(header):
    directives = re.findall(r"^#\s*(\w+)\s*(\S*)", (BPF_DIR / header).read_text(), re.MULTILINE)
    (kind1, guard), (kind2, defined) = directives[:2]
    assert (kind1, kind2) == ("ifndef", "define") and guard == defined, header


def test_composed_order_puts_each_header_after_what_it_includes():
    order = program.headers_first(FAMILIES)
    assert sorted(order) == sorted(set(order))
    for name in order:
        for inc in _includes(name):
            assert order.index(inc) < order.index(name), (inc, name)


def test_headers_first_refuses_a_loop(tmp_path, monkeypatch):
    (tmp_path / "a.h").write_text('#include "b.h"\n')
    (tmp_path / "b.h").write_text('#include "a.h"\n')
    monkeypatch.setattr(program, "BPF_DIR", tmp_path)
    with pytest.raises(TracerError, match=r"include loop in bpf/: a.h -> b.h -> a.h"):
        program.headers_first(["a.h"])
