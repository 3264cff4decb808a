"""The Python decoder must agree with bpf/tracer.h: compile the header with gcc
and compare every field's offset and size, and every shared constant."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tracer.capfile import ENCAPS, NAT_KINDS, PROBES
from tracer.capture import session
from tracer.capture.event_layout import EVENT_DTYPE, EVENT_FIELDS, EVENT_SIZE, RECORD_SIZE

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

CONSTANTS = [
    "TRACER_PROBE_RX", "TRACER_PROBE_TX", "TRACER_PROBE_NAT", "TRACER_PROBE_DROP",
    "TRACER_NAT_DNAT", "TRACER_NAT_SNAT", "TRACER_NAT_REV_DNAT", "TRACER_NAT_REV_SNAT",
    "TRACER_HOOK_NONE", "TRACER_STAT_EVENTS", "TRACER_STAT_LOST", "TRACER_STAT_FLOW_OVERFLOW",
    "TRACER_STAT_IPV6_SKIPPED", "TRACER_STAT_NON_IP", "TRACER_STAT_NAT_UNPAIRED",
    "TRACER_STAT_PARSE_ERROR", "TRACER_STAT_NAT_UNTIMED", "TRACER_STAT_LOST_BASE", "TRACER_STAT_NR",
    "TRACER_HIST_HOOKS", "TRACER_HIST_SLOTS", "TRACER_ROLE_FRONTEND", "TRACER_ROLE_ENDPOINT",
    "TRACER_ENCAP_NONE", "TRACER_ENCAP_VXLAN", "TRACER_ENCAP_IPIP",
]


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
    assert c_layout["svc_key"] == 8


def test_enumerations_match_the_schema(c_layout):
    c = c_layout["constants"]
    assert [c[f"TRACER_PROBE_{p.upper()}"] for p in PROBES] == [1, 2, 3, 4]
    assert [c[f"TRACER_NAT_{k.upper()}"] for k in NAT_KINDS] == [1, 2, 3, 4]
    assert c["TRACER_ENCAP_NONE"] == 0
    assert [c[f"TRACER_ENCAP_{k.upper()}"] for k in ENCAPS] == [1, 2]
    assert session.POINTS_BY_ID == PROBES
    assert c["TRACER_STAT_EVENTS"] == session.STAT_EVENTS
    assert c["TRACER_STAT_LOST"] == session.STAT_LOST
    assert c["TRACER_STAT_FLOW_OVERFLOW"] == session.STAT_FLOW_OVERFLOW
    assert c["TRACER_STAT_IPV6_SKIPPED"] == session.STAT_IPV6
    assert c["TRACER_STAT_NON_IP"] == session.STAT_NON_IP
    assert c["TRACER_STAT_NAT_UNPAIRED"] == session.STAT_NAT_UNPAIRED
    assert c["TRACER_STAT_PARSE_ERROR"] == session.STAT_PARSE_ERROR
    assert c["TRACER_STAT_NAT_UNTIMED"] == session.STAT_NAT_UNTIMED
    assert c["TRACER_STAT_LOST_BASE"] == session.STAT_LOST_BASE
    assert c["TRACER_STAT_NR"] == session.STAT_NR
    assert c["TRACER_HIST_HOOKS"] == session.HIST_HOOKS
    assert c["TRACER_HIST_SLOTS"] == session.HIST_SLOTS
    assert c["TRACER_HOOK_NONE"] == 255
