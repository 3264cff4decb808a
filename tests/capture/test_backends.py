"""Backend selection logic against fake kernels (what each offers is given)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tracer.capture import backends as bk
from tracer.capture.features import Feature
from tracer.errors import KernelFeatureError, UsageError


@dataclass
class FakeKernel:
    """Duck-types the parts of KernelFeatures that backends.py asks."""

    netfilter: bool = False
    fentry_funcs: tuple[str, ...] = ()
    kprobe_funcs: tuple[str, ...] = ()
    raw_tps: tuple[str, ...] = ("netif_receive_skb", "net_dev_queue", "kfree_skb")
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

    def kprobe_function(self, candidates):
        for c in candidates:
            if c in self.kprobe_funcs:
                return Feature(True, c)
        return Feature(False, "no kprobes")

    def raw_tracepoint(self, name):
        return Feature(name in self.raw_tps, f"raw {name}")

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


def test_distro_6_1_prefers_fentry_then_kprobe(monkeypatch):
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    funcs = ("nf_nat_inet_fn", "__netif_receive_skb_core")
    kf = FakeKernel(fentry_funcs=funcs, kprobe_funcs=funcs)
    chosen = bk.select_backends(kf)
    assert chosen["nat"].name == "fentry" and chosen["nat"].macros["NAT_FENTRY_FUNC"] == "nf_nat_inet_fn"
    assert chosen["rx"].name == "fentry"
    forced = bk.select_backends(kf, forced=bk.parse_backend_option("kprobe"))
    assert forced["nat"].name == "kprobe" and forced["rx"].name == "kprobe"
    assert forced["rx"].macros["RX_KPROBE_PSKB"] == 1


def test_old_kernel_falls_back_to_nf_nat_ipv4_fn_and_plain_receive(monkeypatch):
    monkeypatch.setattr(bk, "_tracepoint_backend", _raw_only)
    kf = FakeKernel(kprobe_funcs=("nf_nat_ipv4_fn", "netif_receive_skb"))
    chosen = bk.select_backends(kf, forced={"rx": "kprobe"})
    assert chosen["nat"].target == "nf_nat_ipv4_fn"
    assert chosen["rx"].macros["RX_KPROBE_PSKB"] == 0


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
