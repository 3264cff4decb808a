"""Backend selection logic against fake kernels (what each offers is given)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tracer.capture import backends as bk
from tracer.capture.features import Feature
from tracer.capture.kfuncs import KernelFunction
from tracer.errors import KernelFeatureError, UsageError


@dataclass
class FakeKernel:
    """Duck-types the parts of KernelFeatures that backends.py asks."""

    netfilter: bool = False
    fentry_funcs: tuple[str, ...] = ()
    kprobe_funcs: tuple[str, ...] = ()
    modules: dict = field(default_factory=dict)  # function -> module holding it
    raw_tps: tuple[str, ...] = ("netif_receive_skb", "net_dev_queue", "kfree_skb")
    tp_btfs: tuple[str, ...] = ()  # BTF-typed raw tracepoints that load
    release: str = "fake"
    btf: object = None
    formats: dict = field(default_factory=dict)

    @property
    def netfilter_link(self):
        return Feature(self.netfilter, "" if self.netfilter else "no netfilter links (before 6.4)")

    def fentry_function(self, candidates):
        for c in candidates:
            if c in self.fentry_funcs:
                return Feature(True, c)
        return Feature(False, "no fentry")

    def kernel_function(self, name):
        return KernelFunction(name, 1000 + self.fentry_funcs.index(name), self.modules.get(name))

    def kprobe_function(self, candidates):
        for c in candidates:
            if c in self.kprobe_funcs:
                return Feature(True, c)
        return Feature(False, "no kprobes")

    def raw_tracepoint(self, name):
        return Feature(name in self.raw_tps, f"raw {name}")

    def tp_btf(self, name):
        if name not in self.tp_btfs:
            return "tp_btf program load: Invalid argument"
        return 5000 + self.tp_btfs.index(name)  # the btf_trace_ typedef's id

    def tracepoint_format(self, category, name):
        return None


@pytest.fixture(autouse=True)
def _no_btf_needed(monkeypatch):
    monkeypatch.setattr(bk, "_consumed_macro", lambda kf: {})


def test_host_kernel_6_18_uses_netfilter_links_and_raw_tracepoints(monkeypatch):
    kf = FakeKernel(netfilter=True)
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    chosen = bk.select_backends(kf)
    assert {p: b.name for p, b in chosen.items()} == {
        "rx": "raw_tracepoint", "nat": "netfilter", "tx": "raw_tracepoint", "drop": "raw_tracepoint"}


def test_btf_typed_tracepoints_come_first_and_carry_their_typedef_id():
    kf = FakeKernel(netfilter=True, tp_btfs=("netif_receive_skb", "net_dev_queue"))
    chosen = bk.select_backends(kf, points=("rx", "tx", "nat"))
    assert {p: b.name for p, b in chosen.items()} == {"rx": "tp_btf", "tx": "tp_btf", "nat": "netfilter"}
    assert chosen["rx"].macros == {"RX_TP_BTF": None}
    assert chosen["rx"].programs == (bk.ProgramTarget("tp_btf", "netif_receive_skb", "trc_rx_btf", 5000),)
    assert chosen["tx"].programs == (bk.ProgramTarget("tp_btf", "net_dev_queue", "trc_tx_btf", 5001),)
    # Where tp_btf programs do not load, the untyped raw tracepoint.
    plain = bk.select_backends(FakeKernel(netfilter=True), points=("rx",))
    assert plain["rx"].name == "raw_tracepoint" and plain["rx"].programs == ()
    with pytest.raises(KernelFeatureError, match=r"tp_btf for rx is not available.*Invalid argument"):
        bk.select_backends(FakeKernel(), points=("rx",), forced={"rx": "tp_btf"})


# What Debian's 6.1 kernel has (measured in the VM, tests/kernel_vm): the
# receive core only as a GCC clone (not in BTF, no kprobe by its name), its two
# callers as functions, and nf_nat_inet_fn in nf_nat.ko.
DEBIAN_6_1 = ("nf_nat_inet_fn", "__netif_receive_skb_one_core", "__netif_receive_skb",
              "__netif_receive_skb_list_core")


def test_distro_6_1_prefers_fentry_then_kprobe(monkeypatch):
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    kf = FakeKernel(fentry_funcs=DEBIAN_6_1, kprobe_funcs=DEBIAN_6_1, modules={"nf_nat_inet_fn": "nf_nat"})
    chosen = bk.select_backends(kf)
    nat, rx = chosen["nat"], chosen["rx"]
    assert nat.name == "fentry" and nat.target == "nf_nat_inet_fn [nf_nat]"
    assert [(p.kind, p.function, p.program, p.btf_module) for p in nat.programs] == [
        ("fentry", "nf_nat_inet_fn", "trc_nat_fentry", "nf_nat"),
        ("fexit", "nf_nat_inet_fn", "trc_nat_fexit", "nf_nat")]
    assert rx.name == "fentry"
    assert [(p.kind, p.function, p.btf_module) for p in rx.programs] == [
        ("fentry", "__netif_receive_skb_one_core", None), ("fentry", "__netif_receive_skb_list_core", None)]
    assert rx.macros == {"RX_FENTRY": None, "RX_PSKB": 0, "RX_LIST": None}
    forced = bk.select_backends(kf, forced=bk.parse_backend_option("kprobe"))
    assert forced["nat"].name == "kprobe" and forced["rx"].name == "kprobe"
    assert forced["rx"].target == "__netif_receive_skb_one_core + __netif_receive_skb_list_core"
    assert [p.program for p in forced["rx"].programs] == ["trc_rx_kprobe", "trc_rx_list_kp"]
    assert forced["rx"].macros["RX_PSKB"] == 0
    assert [p.kind for p in forced["nat"].programs] == ["kprobe", "kretprobe"]


def test_receive_core_by_name_is_one_kprobe_on_its_pskb():
    kf = FakeKernel(kprobe_funcs=("__netif_receive_skb_core", *DEBIAN_6_1))
    rx = bk.select_backends(kf, points=("rx",), forced={"rx": "kprobe"})["rx"]
    assert rx.target == "__netif_receive_skb_core" and rx.macros["RX_PSKB"] == 1
    assert [p.program for p in rx.programs] == ["trc_rx_kprobe"]


def test_one_skb_path_falls_back_to_netif_receive_skb_when_one_core_is_inlined():
    funcs = ("__netif_receive_skb", "__netif_receive_skb_list_core")
    kf = FakeKernel(fentry_funcs=funcs, kprobe_funcs=funcs)
    for name in ("fentry", "kprobe"):
        rx = bk.select_backends(kf, points=("rx",), forced={"rx": name})["rx"]
        assert [p.function for p in rx.programs] == list(funcs)


def test_rx_by_function_needs_the_list_path_too(monkeypatch):
    """Without __netif_receive_skb_list_core, packets received in lists (GRO,
    veth with NAPI) would be missed: not a backend then."""
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    kf = FakeKernel(fentry_funcs=("__netif_receive_skb",), kprobe_funcs=("__netif_receive_skb",))
    assert bk.select_backends(kf, points=("rx",))["rx"].name == "raw_tracepoint"
    with pytest.raises(KernelFeatureError, match="received in lists"):
        bk.select_backends(kf, points=("rx",), forced={"rx": "kprobe"})


def test_old_kernel_falls_back_to_nf_nat_ipv4_fn(monkeypatch):
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    kf = FakeKernel(kprobe_funcs=("nf_nat_ipv4_fn",))
    chosen = bk.select_backends(kf, points=("nat",))
    assert chosen["nat"].target == "nf_nat_ipv4_fn"


def test_forcing_a_missing_backend_says_why(monkeypatch):
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    with pytest.raises(KernelFeatureError, match=r"kprobe for nat is not available.*no kprobes"):
        bk.select_backends(FakeKernel(netfilter=True), forced={"nat": "kprobe"})


def test_no_backend_at_all_is_an_error(monkeypatch):
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    with pytest.raises(KernelFeatureError, match="no way to probe nat"):
        bk.select_backends(FakeKernel(), points=("nat",))


@pytest.mark.parametrize("text, error", [
    ("warp", "unknown backend 'warp'"),
    ("nat=tracepoint", "nat has no backend 'tracepoint'"),
    ("egress=kprobe", "unknown probe point 'egress'"),
])
def test_bad_backend_option(text, error):
    with pytest.raises(UsageError, match=error):
        bk.parse_backend_option(text)


def test_backend_option_forms():
    assert bk.parse_backend_option("fentry") == {"rx": "fentry", "nat": "fentry"}
    assert bk.parse_backend_option("nat=kprobe, rx=tracepoint") == {"nat": "kprobe", "rx": "tracepoint"}
    assert bk.parse_backend_option(None) == {}


def _raw_only(point, name, kf):
    if name != "raw_tracepoint":
        return "perf tracepoints not offered by the fake kernel"
    event = bk.TRACEPOINTS[point][1]
    return bk.Backend(point, name, event, point, {}) if event in kf.raw_tps else "missing"
