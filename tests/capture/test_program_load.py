"""Every probe family compiles with BCC against this kernel's offsets and its
programs pass the verifier, including backends this kernel cannot attach
(kprobes load but have no PMU to attach to). fentry programs are refused at
load by this kernel (EPERM): here they are compiled and their bytecode is
taken as the real load would take it; tests/kernel_vm loads and runs them on
Debian's 6.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer.btf import KIND_FUNC, Btf
from tracer.capture import program
from tracer.capture.backends import POINTS, Backend, ProgramTarget, select_backends
from tracer.capture.features import KernelFeatures
from tracer.capture.program import ProgramSettings, compile_program, load_tracing
from tracer.errors import KernelFeatureError, TracerError

pytestmark = pytest.mark.root

RX = {
    "raw_tracepoint": Backend("rx", "raw_tracepoint", "netif_receive_skb", "rx", {"RX_RAW_TRACEPOINT": None}),
    "tracepoint": Backend("rx", "tracepoint", "net:netif_receive_skb", "rx",
                          {"RX_TRACEPOINT": None, "RX_TP_SKBADDR_OFF": 8}),
    "kprobe": Backend("rx", "kprobe", "__netif_receive_skb_core", "rx",
                      {"RX_KPROBE": None, "RX_PSKB": 1}),
    # Debian's 6.1: the receive core is a clone; its two callers instead.
    "kprobe_list": Backend("rx", "kprobe", "__netif_receive_skb_one_core + __netif_receive_skb_list_core",
                           "rx", {"RX_KPROBE": None, "RX_PSKB": 0, "RX_LIST": None}),
}
TX = Backend("tx", "tracepoint", "net:net_dev_queue", "tx", {"TX_TRACEPOINT": None, "TX_TP_SKBADDR_OFF": 8})
DROP = Backend("drop", "tracepoint", "skb:kfree_skb", "drop",
               {"DROP_TRACEPOINT": None, "DROP_TP_SKBADDR_OFF": 8, "DROP_TP_REASON_OFF": 36,
                "DROP_TP_RX_SK_OFF": 24,
                "DROP_REASON_CONSUMED": 1})
NAT = {
    "netfilter": Backend("nat", "netfilter", "hooks", "nat_netfilter", {"NAT_NETFILTER": None}),
    "kprobe": Backend("nat", "kprobe", "nf_nat_inet_fn", "nat_kprobe", {"NAT_KPROBE": None}),
}
FUNCS = {
    ("rx", "raw_tracepoint"): [("trc_rx_raw", 17)],
    ("rx", "tracepoint"): [("trc_rx_tp", 5)],
    ("rx", "kprobe"): [("trc_rx_kprobe", 2)],
    ("rx", "kprobe_list"): [("trc_rx_kprobe", 2), ("trc_rx_list_kp", 2)],
    ("tx", "tracepoint"): [("trc_tx_tp", 5)],
    ("drop", "tracepoint"): [("trc_drop_tp", 5)],
    ("nat", "netfilter"): [("trc_nat_nf_enter", 32), ("trc_nat_nf_exit", 32)],
    ("nat", "kprobe"): [("trc_nat_kprobe", 2), ("trc_nat_kretprobe", 2)],
}


def _funcs(b: Backend) -> list[tuple[str, int]]:
    key = "kprobe_list" if b.point == "rx" and "RX_LIST" in b.macros else b.name
    return FUNCS[(b.point, key)]


def _load_all(backends: list[Backend], settings: ProgramSettings) -> int:
    bpf, _ = compile_program(backends, settings)
    loaded = 0
    try:
        for b in backends:
            for name, prog_type in _funcs(b):
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
    assert _load_all(backends, ProgramSettings()) == 2 + len(_funcs(RX[rx])) + len(FUNCS[("nat", nat)])


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


def _fentry_backends(btf: Btf) -> list[Backend]:
    def probe(kind: str, fn: str, program: str) -> ProgramTarget:
        btf_id = btf.find(fn, (KIND_FUNC,))
        assert btf_id is not None, fn
        return ProgramTarget(kind, fn, program, btf_id, None)

    nat = Backend("nat", "fentry", "nf_nat_inet_fn", "nat_fentry", {"NAT_FENTRY": None},
                  (probe("fentry", "nf_nat_inet_fn", "trc_nat_fentry"),
                   probe("fexit", "nf_nat_inet_fn", "trc_nat_fexit")))
    rx = Backend("rx", "fentry", "one_core + list_core", "rx",
                 {"RX_FENTRY": None, "RX_PSKB": 0, "RX_LIST": None},
                 (probe("fentry", "__netif_receive_skb_one_core", "trc_rx_fentry"),
                  probe("fentry", "__netif_receive_skb_list_core", "trc_rx_list_fe")))
    return [rx, TX, DROP, nat]


def test_fentry_compiles_with_every_family_and_this_kernel_refuses_to_load_it():
    btf = Btf.load()
    backends = _fentry_backends(btf)
    # BCC loads nothing by itself: the fentry programs have no kfunc__ name.
    bpf, _ = compile_program(backends, ProgramSettings(), btf)
    try:
        assert not getattr(bpf, "kfunc_entry_fds", {}) and not getattr(bpf, "kfunc_exit_fds", {})
        # The other families in the same source still pass the verifier.
        assert bpf.load_func(b"trc_tx_tp", 5).fd >= 0
        for probe in backends[0].programs + backends[3].programs:
            insns = bpf.dump_func(probe.program.encode())
            assert len(insns) % 8 == 0 and len(insns) > 8 * 10
            # The real load path, up to the kernel's refusal of TRACING programs.
            with pytest.raises(KernelFeatureError, match="Operation not permitted") as err:
                load_tracing(bpf, probe)
            assert probe.program in str(err.value) and probe.function in str(err.value)
    finally:
        bpf.cleanup()


def _bpf_map_fds() -> set[int]:
    """fds of this process that are BPF maps (their fdinfo says map_type)."""
    out = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if "map_type:" in (Path("/proc/self/fdinfo") / fd.name).read_text():
                out.add(int(fd.name))
        except OSError:
            pass
    return out


def test_fentry_bytecode_refers_to_bcc_maps_by_fd():
    """The bytecode taken from BCC already holds its maps' fds (BPF_LD_IMM64
    with src_reg BPF_PSEUDO_MAP_FD), so loading it outside BCC needs no
    relocation: every referenced fd is one of the program's maps."""
    btf = Btf.load()
    backends = _fentry_backends(btf)
    bpf, _ = compile_program(backends, ProgramSettings(), btf)
    try:
        map_fds = _bpf_map_fds()
        insns = bpf.dump_func(b"trc_nat_fexit")
        referenced = set()
        for i in range(0, len(insns), 8):
            code, regs = insns[i], insns[i + 1]
            if code == 0x18 and (regs >> 4) == 1:  # BPF_LD | BPF_IMM | BPF_DW, BPF_PSEUDO_MAP_FD
                referenced.add(int.from_bytes(insns[i + 4:i + 8], "little"))
        assert referenced and referenced <= map_fds
    finally:
        bpf.cleanup()


def test_source_is_the_shared_headers_then_the_families():
    text = program.compose_source([RX["kprobe"], NAT["netfilter"]])
    order = [text.index(f'/{n}"') for n in ("maps.bpf.h", "event.bpf.h", "nat.bpf.h", "nat_netfilter.bpf.c",
                                             "rx.bpf.c")]
    assert order == sorted(order)


def _typed_backends(points: tuple[str, ...]) -> list[Backend]:
    """This kernel's own choice: BTF tracepoints and netfilter programs."""
    chosen = select_backends(KernelFeatures(), points=points)
    assert {b.name for b in chosen.values()} <= program.BTF_TYPED_BACKENDS, chosen
    return list(chosen.values())


@pytest.mark.parametrize("settings", [
    ProgramSettings(),
    ProgramSettings(mode="hist"),
    ProgramSettings(filter_client="192.168.64.10", filter_port=8088, filter_proto=6),
    ProgramSettings(filter_endpoint="10.217.121.8", scope_netns=False),
], ids=["events", "hist", "client-port-proto", "endpoint-unscoped"])
def test_plain_loads_of_btf_typed_pointers_pass_the_verifier(settings):
    """With every program BTF-typed, the C reads the skb, device, namespace
    and hook state with plain loads (KERNEL_PTRS_BTF); the verifier checks
    each against BTF, so every mode and filter is loaded the real way."""
    backends = _typed_backends(("nat",) if settings.mode == "hist" else POINTS)
    assert "-DKERNEL_PTRS_BTF" in program.cflags_for(backends, settings, {})
    bpf, _ = compile_program(backends, settings)
    fds = []
    try:
        for b in backends:
            for probe in b.programs:
                fds.append(load_tracing(bpf, probe))
            if b.name == "netfilter":
                for fn in (b"trc_nat_nf_enter", b"trc_nat_nf_exit"):
                    assert bpf.load_func(fn, 32, attach_type=45).fd >= 0
        assert len(fds) == (0 if settings.mode == "hist" else 3)
    finally:
        for fd in fds:
            os.close(fd)
        bpf.cleanup()


def test_one_untyped_program_means_probe_reads_everywhere():
    typed = _typed_backends(POINTS)
    mixed = [b for b in typed if b.point != "rx"] + [RX["raw_tracepoint"]]
    assert "-DKERNEL_PTRS_BTF" not in program.cflags_for(mixed, ProgramSettings(), {})
    # The C refuses the combination outright rather than read a probe-read
    # pointer with a plain load.
    forced = Backend("rx", "kprobe", "x", "rx", {**RX["kprobe_list"].macros, "KERNEL_PTRS_BTF": None})
    with pytest.raises(TracerError, match="BPF compile failed"):
        compile_program([forced, NAT["netfilter"]], ProgramSettings())
