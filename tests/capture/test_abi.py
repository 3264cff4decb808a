"""tracer.capture.abi must agree with bpf/tracer.h: compile the header with
gcc and compare every field's offset and size, and every #define the header
makes (TRACER_X in C is X in abi), so no value crossing the boundary can
have a second Python face that drifts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tracer.capfile import ENCAPS, NAT_KINDS, PROBES
from tracer.capture import abi
from tracer.capture.abi import EVENT_DTYPE, EVENT_FIELDS, EVENT_SIZE, RECORD_SIZE, SVC_KEY_FIELDS

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
HEADER = BPF_DIR / "tracer.h"
# Every constant the header defines (the include guard excepted).
CONSTANTS = sorted(set(re.findall(r"^#define (TRACER_[A-Z0-9_]+)[ \t]+\S", HEADER.read_text(), re.M)))


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to check bpf/tracer.h against the decoder"
    tmp = tmp_path_factory.mktemp("layout")
    fields = [name for name, _, _ in EVENT_FIELDS]
    body = ['#include <stdio.h>', '#include <stddef.h>', '#include "tracer.h"',
            "#define F(f) printf(\"\\\"%s\\\": [%zu, %zu],\", #f, offsetof(struct tracer_event, f),"
            " sizeof(((struct tracer_event *)0)->f));",
            "#define C(c) printf(\"\\\"%s\\\": %d,\", #c, (int)(c));",
            "int main(void) {", 'printf("{\\"fields\\": {");']
    body += [f"F({f})" for f in fields]
    body += ["#define K(f) printf(\"\\\"key.%s\\\": [%zu, %zu],\", #f, offsetof(struct tracer_svc_key, f),"
             " sizeof(((struct tracer_svc_key *)0)->f));"]
    body += [f"K({name})" for name, _, _ in SVC_KEY_FIELDS]
    body += ['printf("\\"_\\": [0, 0]}, \\"constants\\": {");']
    body += [f"C({c})" for c in CONSTANTS]
    body += ['printf("\\"_\\": 0}, \\"size\\": %zu, \\"svc_key\\": %zu}\\n", '
             "sizeof(struct tracer_event), sizeof(struct tracer_svc_key));", "return 0; }"]
    src = tmp / "layout.c"
    src.write_text("\n".join(body))
    exe = tmp / "layout"
    subprocess.run([gcc, "-Wall", "-Werror", f"-I{BPF_DIR}", str(src), "-o", str(exe)], check=True)
    return json.loads(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)


def test_every_field_has_the_c_offset_and_size(c_layout):
    for name, typ, offset in EVENT_FIELDS:
        c_offset, c_size = c_layout["fields"][name]
        assert offset == c_offset, name
        assert np.dtype(typ).itemsize == c_size, name


def test_struct_size_and_ring_record(c_layout):
    assert c_layout["size"] == EVENT_SIZE == EVENT_DTYPE.itemsize
    # kernel/bpf/ringbuf.c: 8-byte header, records rounded up to 8 bytes.
    assert (EVENT_SIZE + 8 + 7) // 8 * 8 == RECORD_SIZE
    assert c_layout["svc_key"] == abi.SVC_KEY_SIZE == 8


def test_every_svc_key_field_has_the_c_offset_and_size(c_layout):
    for name, typ, offset in SVC_KEY_FIELDS:
        assert c_layout["fields"][f"key.{name}"] == [offset, np.dtype(typ).itemsize], name


def test_every_constant_of_the_header_is_in_abi_with_its_value(c_layout):
    assert len(CONSTANTS) >= 29, CONSTANTS  # the regex found the header's defines
    for name in CONSTANTS:
        assert getattr(abi, name.removeprefix("TRACER_")) == c_layout["constants"][name], name


def test_enumerations_match_the_schema(c_layout):
    c = c_layout["constants"]
    assert [c[f"TRACER_PROBE_{p.upper()}"] for p in PROBES] == [1, 2, 3, 4]
    assert [c[f"TRACER_NAT_{k.upper()}"] for k in NAT_KINDS] == [1, 2, 3, 4]
    assert c["TRACER_ENCAP_NONE"] == 0
    assert [c[f"TRACER_ENCAP_{k.upper()}"] for k in ENCAPS] == [1, 2]
    assert abi.POINTS == PROBES
    assert c["TRACER_STAT_IPV6_SKIPPED"] == abi.STAT_IPV6_SKIPPED
    assert c["TRACER_STAT_LOST_BASE"] + c["TRACER_PROBE_NR"] - 1 < c["TRACER_STAT_NR"]
    assert c["TRACER_HIST_NR"] == abi.HIST_HOOKS * 2 * abi.HIST_SLOTS
    assert c["TRACER_HOOK_NONE"] == 255


def test_addresses_as_the_c_loads_them():
    # bpf/tracer.h keeps addresses and ports in network order; a little-endian
    # load of 192.168.64.10 reads 0x0A40A8C0, of port 8088 (0x1F98) 0x981F.
    assert abi.be32_as_loaded("192.168.64.10") == 0x0A40A8C0
    assert abi.be16_as_loaded(8088) == 0x981F


def test_icmp_counter_and_types(c_layout):
    c = c_layout["constants"]
    # Its own slot: not one of the per-probe loss counters, inside the array.
    assert c["TRACER_STAT_LOST_BASE"] + c["TRACER_PROBE_NR"] - 1 < c["TRACER_STAT_ICMP_UNQUOTED"]
    assert c["TRACER_STAT_ICMP_UNQUOTED"] < c["TRACER_STAT_NR"]
    assert (c["TRACER_ICMP_DEST_UNREACH"], c["TRACER_ICMP_TIME_EXCEEDED"],
            c["TRACER_ICMP_PARAMETERPROB"]) == (3, 11, 12)
