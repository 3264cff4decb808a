"""The benchmark's floor: empty programs attached where the tracer attaches,
for as long as the block runs, and gone after it."""

from __future__ import annotations

import pytest

from bench.empty_probes import empty_probes
from tests.capture.lab_capture import bpf_objects, netfilter_links, wait_until

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.mark.parametrize("kind, programs, links", [("hist", 1, 8), ("events", 4, 11)])
def test_empty_probes_attach_where_the_tracer_does_and_leave_nothing(lab_state, kind, programs, links):
    progs0, links0 = bpf_objects()
    nf0 = {link["id"] for link in netfilter_links()}
    with empty_probes("lab-node-a", kind) as attached:
        progs1, links1 = bpf_objects()
        assert attached == links
        assert len(progs1 - progs0) == programs and len(links1 - links0) == links
        # The eight NAT brackets (the tracer's own priorities: NAT_HOOK_BRACKETS).
        assert len([link for link in netfilter_links() if link["id"] not in nf0]) == 8
    # Programs are freed after an RCU grace period, not at close().
    assert wait_until(lambda: not (bpf_objects()[0] - progs0) and not (bpf_objects()[1] - links0))
