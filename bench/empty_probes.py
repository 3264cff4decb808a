"""The floor under the tracer's data-path cost: BPF programs that return at
once, attached exactly where the tracer attaches its own. What they cost is
the kernel's price for running any program there (the netfilter hook's
indirect call per program in nf_hook_slow, the tracepoint's dispatch), which
no work saved inside the tracer's programs can get under.

  hist    the two netfilter links around each NAT hook in the node's
          namespace, as `--mode hist` (and event mode) attach them
  events  those, plus BTF tracepoints on netif_receive_skb, net_dev_queue
          and kfree_skb, as event mode attaches them here

Only raw bpf() calls (tracer/capture/bpf_syscall.py): nothing to compile.
Closing the fds detaches everything."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tracer.btf import KIND_TYPEDEF, Btf
from tracer.capture import bpf_syscall
from tracer.capture.backends import TRACEPOINTS
from tracer.capture.program import NAT_HOOK_BRACKETS, link_at_free_priority
from tracer.netns import entered, resolve

KINDS = ("hist", "events")


@contextlib.contextmanager
def empty_probes(netns: str, kind: str) -> Iterator[int]:
    """Attach the empty programs of `kind`; yields how many attachments."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    fds: list[int] = []
    attached = 0
    try:
        accept = bpf_syscall.prog_load(bpf_syscall.BPF_PROG_TYPE_NETFILTER, bpf_syscall.ret_insns(1),
                                       expected_attach_type=bpf_syscall.BPF_NETFILTER, name=b"trc_empty_nf")
        fds.append(accept)
        with entered(resolve(netns)):
            for hook, before, after in NAT_HOOK_BRACKETS:
                for priorities in (before, after):
                    fds.append(link_at_free_priority(accept, hook, priorities)[0])
                    attached += 1
        if kind == "events":
            btf = Btf.load()
            for _, event in TRACEPOINTS.values():
                typedef = btf.find(f"btf_trace_{event}", (KIND_TYPEDEF,))
                assert typedef is not None, event
                prog = bpf_syscall.tracing_load(bpf_syscall.ret_insns(0), typedef, kind="tp_btf",
                                                name=b"trc_empty_tp")
                fds.append(prog)
                fds.append(bpf_syscall.tracing_attach(prog))
                attached += 1
        yield attached
    finally:
        for fd in reversed(fds):
            os.close(fd)
