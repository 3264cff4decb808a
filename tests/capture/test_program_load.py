"""Every probe family compiles with BCC against this kernel's offsets and its
programs pass the verifier, including backends this kernel cannot attach
(kprobes load but have no PMU to attach to; fentry is refused at load)."""

from __future__ import annotations

import pytest

from tracer.capture import program
from tracer.capture.backends import Backend
from tracer.capture.program import ProgramSettings, compile_program
from tracer.errors import KernelFeatureError

pytestmark = pytest.mark.root

RX = {
    "raw_tracepoint": Backend("rx", "raw_tracepoint", "netif_receive_skb", "rx", {"RX_RAW_TRACEPOINT": None}),
    "tracepoint": Backend("rx", "tracepoint", "net:netif_receive_skb", "rx",
                          {"RX_TRACEPOINT": None, "RX_TP_SKBADDR_OFF": 8}),
    "kprobe": Backend("rx", "kprobe", "__netif_receive_skb_core", "rx",
                      {"RX_KPROBE": None, "RX_KPROBE_PSKB": 1}),
}
TX = Backend("tx", "tracepoint", "net:net_dev_queue", "tx", {"TX_TRACEPOINT": None, "TX_TP_SKBADDR_OFF": 8})
DROP = Backend("drop", "tracepoint", "skb:kfree_skb", "drop",
               {"DROP_TRACEPOINT": None, "DROP_TP_SKBADDR_OFF": 8, "DROP_TP_REASON_OFF": 36,
                "DROP_REASON_CONSUMED": 1})
NAT = {
    "netfilter": Backend("nat", "netfilter", "hooks", "nat_netfilter", {"NAT_NETFILTER": None}),
    "kprobe": Backend("nat", "kprobe", "nf_nat_inet_fn", "nat_kprobe", {"NAT_KPROBE": None}),
}
FUNCS = {
    ("rx", "raw_tracepoint"): [("trc_rx_raw", 17)],
    ("rx", "tracepoint"): [("trc_rx_tp", 5)],
    ("rx", "kprobe"): [("trc_rx_kprobe", 2)],
    ("tx", "tracepoint"): [("trc_tx_tp", 5)],
    ("drop", "tracepoint"): [("trc_drop_tp", 5)],
    ("nat", "netfilter"): [("trc_nat_nf_enter", 32), ("trc_nat_nf_exit", 32)],
    ("nat", "kprobe"): [("trc_nat_kprobe", 2), ("trc_nat_kretprobe", 2)],
}


def _load_all(backends: list[Backend], settings: ProgramSettings) -> int:
    bpf, _ = compile_program(backends, settings)
    loaded = 0
    try:
        for b in backends:
            for name, prog_type in FUNCS[(b.point, b.name)]:
                kw = {"attach_type": 45} if prog_type == 32 else {}
                fn = bpf.load_func(name.encode(), prog_type, **kw)
                assert fn.fd >= 0
                loaded += 1
    finally:
        bpf.cleanup()
    return loaded


@pytest.mark.parametrize("rx", sorted(RX))
@pytest.mark.parametrize("nat", sorted(NAT))
def test_families_pass_the_verifier(rx, nat):
    backends = [RX[rx], TX, DROP, NAT[nat]]
    assert _load_all(backends, ProgramSettings()) == 3 + len(FUNCS[("nat", nat)])


@pytest.mark.parametrize("settings", [
    ProgramSettings(mode="hist"),
    ProgramSettings(filter_client="192.168.64.10", filter_port=8088, filter_proto=6),
    ProgramSettings(filter_endpoint="10.217.121.8", scope_netns=False),
])
def test_settings_variants_pass_the_verifier(settings):
    backends = [NAT["netfilter"], NAT["kprobe"]][:1]
    if settings.mode != "hist":
        backends += [RX["raw_tracepoint"], TX, DROP]
    assert _load_all(backends, settings) == len(backends) + 1


def test_fentry_compiles_and_this_kernel_refuses_to_load_it():
    fentry = Backend("nat", "fentry", "nf_nat_inet_fn", "nat_fentry",
                     {"NAT_FENTRY": None, "NAT_FENTRY_FUNC": "nf_nat_inet_fn"})
    # BCC compiles the C, then loads and attaches kfunc programs while
    # constructing; this kernel refuses BPF_PROG_TYPE_TRACING (EPERM).
    # BCC reports that EPERM as "Need super-user privileges"; a compile error
    # would say "Failed to compile".
    with pytest.raises(KernelFeatureError, match="fentry programs cannot be loaded here") as err:
        compile_program([fentry], ProgramSettings())
    assert "super-user" in str(err.value) and "compile" not in str(err.value)


def test_source_is_the_shared_headers_then_the_families():
    text = program.compose_source([RX["kprobe"], NAT["netfilter"]])
    order = [text.index(f'/{n}"') for n in ("common.bpf.h", "nat.bpf.h", "nat_netfilter.bpf.c", "rx.bpf.c")]
    assert order == sorted(order)
