"""Probe points and the backends that implement them, chosen per kernel.

A probe point is what the user sees (rx, nat, tx, drop); a backend is how a
kernel offers it. For each point the candidates are tried best first and the
first one the running kernel supports is used, unless --backend forces one.
"Best" means cheapest on the data path with the same information:
fentry and raw tracepoints call the program directly, a perf tracepoint
first builds a record, a kprobe traps. A BTF-typed raw tracepoint (tp_btf)
is a raw tracepoint whose arguments the verifier knows the types of, so the
program reads the skb's fields with plain loads instead of helper calls
(bpf/kernel_fields.bpf.h, KERNEL_PTRS_BTF): it comes first where it loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.capture.abi import POINTS
from tracer.capture.features import KernelFeatures, parse_tracepoint_format
from tracer.capture.offsets import drop_reason_names
from tracer.errors import KernelFeatureError, UsageError

# point -> candidate backends, best first
CANDIDATES: dict[str, tuple[str, ...]] = {
    "rx": ("tp_btf", "fentry", "raw_tracepoint", "tracepoint", "kprobe"),
    "nat": ("netfilter", "fentry", "kprobe"),
    "tx": ("tp_btf", "raw_tracepoint", "tracepoint"),
    "drop": ("tp_btf", "raw_tracepoint", "tracepoint"),
}

# rx by function: the packets the net:netif_receive_skb tracepoint sees, i.e.
# every call of __netif_receive_skb_core() (net/core/dev.c, where the
# tracepoint is). Its callers are __netif_receive_skb_one_core() (one skb:
# netif_receive_skb(), process_backlog() after netif_rx(), i.e. veth without
# NAPI, bridge pass-up) and __netif_receive_skb_list_core() (lists: GRO and
# drivers' netif_receive_skb_list(), and veth with NAPI when GRO or XDP is on).
# __netif_receive_skb_core itself is the exact place when the kernel has it
# under its name; on Debian's 6.1 it is only a GCC clone
# (__netif_receive_skb_core.constprop.0) and not in BTF, so the two callers
# are hooked instead, the list one walking its list. Measured in the 6.1 VM
# (tests/kernel_vm): the same packets as the tracepoint, on both paths.
RX_CORE = "__netif_receive_skb_core"
# __netif_receive_skb_one_core is static and could be inlined; then its only
# other caller chain, __netif_receive_skb, takes the skb too.
RX_ONE = ("__netif_receive_skb_one_core", "__netif_receive_skb")
RX_LIST = "__netif_receive_skb_list_core"
# nf_nat_inet_fn runs the NAT table for every family since 5.1 (commit
# 30766f4c2d7a "netfilter: nat: move nat hook registration to nat core");
# older kernels did it in nf_nat_ipv4_fn, with the same arguments. It is in
# nf_nat.ko when NAT is a module (Debian): fentry then uses the module's BTF.
NAT_FUNCTIONS = ("nf_nat_inet_fn", "nf_nat_ipv4_fn")

TRACEPOINTS = {"rx": ("net", "netif_receive_skb"), "tx": ("net", "net_dev_queue"),
               "drop": ("skb", "kfree_skb")}


@dataclass(frozen=True)
class ProgramTarget:
    """One BPF program of a backend and the kernel function it attaches to."""

    kind: str  # "kprobe", "kretprobe", "fentry", "fexit" or "tp_btf"
    function: str  # or, for tp_btf, the raw tracepoint
    program: str  # its C function in bpf/<family>.bpf.c
    btf_id: int = 0  # fentry/fexit: the function's id (tp_btf: its typedef's) in ...
    btf_module: str | None = None  # ... this module's BTF (None: vmlinux's)


@dataclass(frozen=True)
class Backend:
    point: str
    name: str
    target: str  # function(s) or tracepoint it attaches to
    family: str  # bpf/<family>.bpf.c
    macros: dict[str, int | str | None] = field(default_factory=dict, hash=False, compare=False)
    programs: tuple[ProgramTarget, ...] = ()  # kprobe, fentry and tp_btf backends: what to attach

    def describe(self) -> str:
        return f"{self.name} ({self.target})"


def _where(target: ProgramTarget) -> str:
    return f"{target.function} [{target.btf_module}]" if target.btf_module else target.function


def _fentry_target(kf: KernelFeatures, kind: str, function: str, program: str) -> ProgramTarget:
    where = kf.kernel_function(function)
    assert not isinstance(where, str), where  # fentry_function() found it
    return ProgramTarget(kind, function, program, where.btf_id, where.module)


def _nat_backend(name: str, kf: KernelFeatures) -> Backend | str:
    if name == "netfilter":
        f = kf.netfilter_link
        return Backend("nat", name, "netfilter hooks NAT -100/+100", "nat_netfilter",
                       {"NAT_NETFILTER": None}) if f else f.detail
    if name == "fentry":
        f = kf.fentry_function(NAT_FUNCTIONS)
        if not f:
            return f.detail
        targets = (_fentry_target(kf, "fentry", f.detail, "trc_nat_fentry"),
                  _fentry_target(kf, "fexit", f.detail, "trc_nat_fexit"))
        return Backend("nat", name, _where(targets[0]), "nat_fentry", {"NAT_FENTRY": None}, targets)
    if name == "kprobe":
        f = kf.kprobe_function(NAT_FUNCTIONS)
        if not f:
            return f.detail
        targets = (ProgramTarget("kprobe", f.detail, "trc_nat_kprobe"),
                  ProgramTarget("kretprobe", f.detail, "trc_nat_kretprobe"))
        return Backend("nat", name, f.detail, "nat_kprobe", {"NAT_KPROBE": None}, targets)
    return f"nat has no backend {name!r}"


def _rx_function_backend(name: str, kf: KernelFeatures) -> Backend | str:
    """rx by kprobe or fentry: see RX_CORE above."""
    if name == "kprobe":
        core = kf.kprobe_function((RX_CORE,))
        if core:
            # It takes struct sk_buff **pskb since 5.7 (commit 88eb1944e18c);
            # the ring buffer the tracer needs is 5.8+.
            return Backend("rx", name, RX_CORE, "rx", {"RX_KPROBE": None, "RX_PSKB": 1},
                           (ProgramTarget("kprobe", RX_CORE, "trc_rx_kprobe"),))
        one, many = kf.kprobe_function(RX_ONE), kf.kprobe_function((RX_LIST,))
        kinds = ("kprobe", "kprobe")
        programs = ("trc_rx_kprobe", "trc_rx_list_kp")
        macros: dict[str, int | str | None] = {"RX_KPROBE": None, "RX_PSKB": 0, "RX_LIST": None}
    else:
        # Not RX_CORE even where BTF has it: its struct sk_buff **pskb is no
        # struct pointer, which fentry's typed arguments do not allow.
        one, many = kf.fentry_function(RX_ONE), kf.fentry_function((RX_LIST,))
        kinds = ("fentry", "fentry")
        programs = ("trc_rx_fentry", "trc_rx_list_fe")
        macros = {"RX_FENTRY": None, "RX_PSKB": 0, "RX_LIST": None}
    if not one:
        return one.detail
    if not many:
        # Without the list path, GRO-batched packets would go unseen.
        return f"{many.detail} (needed for packets received in lists, e.g. after GRO)"
    functions = (one.detail, many.detail)
    if name == "fentry":
        targets = tuple(_fentry_target(kf, k, f, p)
                        for k, f, p in zip(kinds, functions, programs, strict=True))
    else:
        targets = tuple(ProgramTarget(k, f, p) for k, f, p in zip(kinds, functions, programs, strict=True))
    return Backend("rx", name, " + ".join(_where(p) for p in targets), "rx", macros, targets)


def _try(point: str, name: str, kf: KernelFeatures) -> Backend | str:
    """The backend if the kernel supports it, else the reason it does not."""
    if point == "nat":
        return _nat_backend(name, kf)
    if point == "rx" and name in ("kprobe", "fentry"):
        return _rx_function_backend(name, kf)
    if point in TRACEPOINTS and name in ("tp_btf", "raw_tracepoint", "tracepoint"):
        return _tracepoint_backend(point, name, kf)
    return f"{point} has no backend {name!r}"


def _tracepoint_backend(point: str, name: str, kf: KernelFeatures) -> Backend | str:
    category, event = TRACEPOINTS[point]
    prefix = point.upper()
    if name in ("tp_btf", "raw_tracepoint"):
        targets: tuple[ProgramTarget, ...] = ()
        if name == "tp_btf":
            typedef = kf.tp_btf(event)
            if isinstance(typedef, str):
                return typedef
            targets = (ProgramTarget("tp_btf", event, f"trc_{point}_btf", typedef),)
        elif not (f := kf.raw_tracepoint(event)):
            return f.detail
        macros: dict[str, int | str | None] = {
            f"{prefix}_TP_BTF" if name == "tp_btf" else f"{prefix}_RAW_TRACEPOINT": None}
        if point == "drop":
            assert kf.btf is not None
            args = kf.btf.raw_tracepoint_args(event) or []
            if "enum skb_drop_reason" in args:
                macros["DROP_RAW_REASON_ARG"] = args.index("enum skb_drop_reason")
            if "struct sock *" in args:  # rx_sk, 6.12+
                macros["DROP_RAW_RX_SK_ARG"] = args.index("struct sock *")
            macros.update(_consumed_macro(kf))
        return Backend(point, name, event, point, macros, targets)
    fmt = kf.tracepoint_format(category, event)
    if fmt is None:
        return f"no tracepoint {category}:{event} (or tracefs not mounted)"
    fields = parse_tracepoint_format(fmt)
    macros = {f"{prefix}_TRACEPOINT": None, f"{prefix}_TP_SKBADDR_OFF": fields["skbaddr"][0]}
    if point == "drop":
        if "reason" in fields:
            macros["DROP_TP_REASON_OFF"] = fields["reason"][0]
        if "rx_sk" in fields:
            macros["DROP_TP_RX_SK_OFF"] = fields["rx_sk"][0]
        macros.update(_consumed_macro(kf))
    return Backend(point, name, f"{category}:{event}", point, macros)


def _consumed_macro(kf: KernelFeatures) -> dict[str, int | str | None]:
    names = drop_reason_names(kf.btf) if kf.btf is not None else {}
    for value, short in names.items():
        if short == "CONSUMED":
            return {"DROP_REASON_CONSUMED": value}
    return {}


def parse_backend_option(text: str | None) -> dict[str, str]:
    """'--backend kprobe' (every point that has it) or 'nat=kprobe,rx=tracepoint'.
    A point named (or a backend given bare) twice is refused: which one would
    win is a guess. Bare backends are preferences (for a point both offer,
    the first given: 'tp_btf,kprobe'), and yield to a point=backend item
    whatever their order ('kprobe,rx=tracepoint')."""
    if text is None:
        return {}
    forced: dict[str, str] = {}
    seen: set[str] = set()
    for item in text.split(","):
        item = item.strip()
        key = item.split("=", 1)[0].strip() if "=" in item else item
        if key in seen:
            raise UsageError(f"--backend: {key!r} given twice in {text!r}")
        seen.add(key)
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
