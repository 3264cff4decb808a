"""Probe points and the backends that implement them, chosen per kernel.

A probe point is what the user sees (rx, nat, tx, drop); a backend is how a
kernel offers it. For each point the candidates are tried best first and the
first one the running kernel supports is used, unless --backend forces one.
"Best" means cheapest on the data path with the same information:
fentry and raw tracepoints call the program directly, a perf tracepoint
first builds a record, a kprobe traps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.capture.features import KernelFeatures, parse_tracepoint_format
from tracer.capture.offsets import drop_reason_names
from tracer.errors import KernelFeatureError, UsageError

POINTS = ("rx", "nat", "tx", "drop")

# point -> candidate backends, best first
CANDIDATES: dict[str, tuple[str, ...]] = {
    "rx": ("fentry", "raw_tracepoint", "tracepoint", "kprobe"),
    "nat": ("netfilter", "fentry", "kprobe"),
    "tx": ("raw_tracepoint", "tracepoint"),
    "drop": ("raw_tracepoint", "tracepoint"),
}

# Kernel functions, in order of preference.
RX_FUNCTIONS = ("__netif_receive_skb_core", "__netif_receive_skb", "netif_receive_skb")
RX_FENTRY_FUNCTIONS = ("__netif_receive_skb_core",)  # bpf/rx.bpf.c names it
# nf_nat_inet_fn runs the NAT table for every family since 5.1 (commit
# 30766f4c2d7a "netfilter: nat: move nat hook registration to nat core");
# older kernels did it in nf_nat_ipv4_fn, with the same arguments.
NAT_FUNCTIONS = ("nf_nat_inet_fn", "nf_nat_ipv4_fn")

TRACEPOINTS = {"rx": ("net", "netif_receive_skb"), "tx": ("net", "net_dev_queue"),
               "drop": ("skb", "kfree_skb")}


@dataclass(frozen=True)
class Backend:
    point: str
    name: str
    target: str  # function or tracepoint it attaches to
    family: str  # bpf/<family>.bpf.c
    macros: dict[str, int | str | None] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        return f"{self.name} ({self.target})"


def _try(point: str, name: str, kf: KernelFeatures) -> Backend | str:
    """The backend if the kernel supports it, else the reason it does not."""
    if point == "nat":
        if name == "netfilter":
            f = kf.netfilter_link
            return Backend(point, name, "netfilter hooks NAT -100/+100", "nat_netfilter",
                           {"NAT_NETFILTER": None}) if f else f.detail
        if name == "fentry":
            f = kf.fentry_function(NAT_FUNCTIONS)
            return Backend(point, name, f.detail, "nat_fentry",
                           {"NAT_FENTRY": None, "NAT_FENTRY_FUNC": f.detail}) if f else f.detail
        if name == "kprobe":
            f = kf.kprobe_function(NAT_FUNCTIONS)
            return Backend(point, name, f.detail, "nat_kprobe", {"NAT_KPROBE": None}) if f else f.detail
    if point == "rx" and name == "fentry":
        f = kf.fentry_function(RX_FENTRY_FUNCTIONS)
        return Backend(point, name, f.detail, "rx", {"RX_FENTRY": None}) if f else f.detail
    if point == "rx" and name == "kprobe":
        f = kf.kprobe_function(RX_FUNCTIONS)
        if not f:
            return f.detail
        pskb = 1 if f.detail == "__netif_receive_skb_core" else 0
        return Backend(point, name, f.detail, "rx", {"RX_KPROBE": None, "RX_KPROBE_PSKB": pskb})
    if point in TRACEPOINTS and name in ("raw_tracepoint", "tracepoint"):
        return _tracepoint_backend(point, name, kf)
    return f"{point} has no backend {name!r}"


def _tracepoint_backend(point: str, name: str, kf: KernelFeatures) -> Backend | str:
    category, event = TRACEPOINTS[point]
    prefix = point.upper()
    if name == "raw_tracepoint":
        f = kf.raw_tracepoint(event)
        if not f:
            return f.detail
        macros: dict[str, int | str | None] = {f"{prefix}_RAW_TRACEPOINT": None}
        if point == "drop":
            assert kf.btf is not None
            args = kf.btf.raw_tracepoint_args(event) or []
            if "enum skb_drop_reason" in args:
                macros["DROP_RAW_REASON_ARG"] = args.index("enum skb_drop_reason")
            macros.update(_consumed_macro(kf))
        return Backend(point, name, event, point, macros)
    fmt = kf.tracepoint_format(category, event)
    if fmt is None:
        return f"no tracepoint {category}:{event} (or tracefs not mounted)"
    fields = parse_tracepoint_format(fmt)
    macros = {f"{prefix}_TRACEPOINT": None, f"{prefix}_TP_SKBADDR_OFF": fields["skbaddr"][0]}
    if point == "drop":
        if "reason" in fields:
            macros["DROP_TP_REASON_OFF"] = fields["reason"][0]
        macros.update(_consumed_macro(kf))
    return Backend(point, name, f"{category}:{event}", point, macros)


def _consumed_macro(kf: KernelFeatures) -> dict[str, int | str | None]:
    names = drop_reason_names(kf.btf) if kf.btf is not None else {}
    for value, short in names.items():
        if short == "CONSUMED":
            return {"DROP_REASON_CONSUMED": value}
    return {}


def parse_backend_option(text: str | None) -> dict[str, str]:
    """'--backend kprobe' (every point that has it) or 'nat=kprobe,rx=tracepoint'."""
    if not text:
        return {}
    forced: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if "=" in item:
            point, name = (s.strip() for s in item.split("=", 1))
            if point not in CANDIDATES:
                raise UsageError(f"--backend: unknown probe point {point!r} (points: {', '.join(POINTS)})")
            if name not in CANDIDATES[point]:
                raise UsageError(
                    f"--backend: {point} has no backend {name!r} "
                    f"(choose from {', '.join(CANDIDATES[point])})"
                )
            forced[point] = name
        else:
            points = [p for p in POINTS if item in CANDIDATES[p]]
            if not points:
                known = sorted({b for c in CANDIDATES.values() for b in c})
                raise UsageError(f"--backend: unknown backend {item!r} (known: {', '.join(known)})")
            for p in points:
                forced.setdefault(p, item)
    return forced


def select_backends(
    kf: KernelFeatures, points: Iterable[str] = POINTS, forced: dict[str, str] | None = None
) -> dict[str, Backend]:
    """Best available backend per point; a forced one that the kernel lacks is an error."""
    forced = forced or {}
    chosen: dict[str, Backend] = {}
    for point in points:
        if point in forced:
            got = _try(point, forced[point], kf)
            if isinstance(got, str):
                raise KernelFeatureError(
                    f"backend {forced[point]} for {point} is not available on this kernel "
                    f"({kf.release}): {got}"
                )
            chosen[point] = got
            continue
        reasons = []
        for name in CANDIDATES[point]:
            got = _try(point, name, kf)
            if isinstance(got, Backend):
                chosen[point] = got
                break
            reasons.append(f"{name}: {got}")
        else:
            raise KernelFeatureError(
                f"no way to probe {point} on this kernel ({kf.release}): " + "; ".join(reasons)
            )
    return chosen


def explain(kf: KernelFeatures, points: Iterable[str] = POINTS) -> dict[str, list[tuple[str, str | None]]]:
    """For doctor: per point, every candidate and why it is unavailable (None: available)."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    for point in points:
        rows = []
        for name in CANDIDATES[point]:
            got = _try(point, name, kf)
            rows.append((name, None if isinstance(got, Backend) else got))
        out[point] = rows
    return out
