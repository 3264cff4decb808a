"""Where a kernel function lives, for kprobes and fentry: its text symbol in
/proc/kallsyms (vmlinux, or which module) and its BTF id (in vmlinux's BTF,
or in the module's split BTF under /sys/kernel/btf/<module>).

fentry needs the BTF id, and for a function in a module also the module's BTF
object: nf_nat_inet_fn is built into vmlinux on some kernels and lives in
nf_nat.ko on others (Debian's 6.1, CONFIG_NF_NAT=m), and BCC 0.26 only looks
in vmlinux's BTF. A kprobe only needs the exact symbol name: GCC clones keep
the name with a suffix (__netif_receive_skb_core is only
__netif_receive_skb_core.constprop.0 on Debian's 6.1) and those are not the
function by its name, nor in BTF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracer.btf import KIND_FUNC, Btf, BtfError

KALLSYMS = Path("/proc/kallsyms")


@dataclass(frozen=True)
class KernelFunction:
    name: str
    btf_id: int
    module: str | None  # None: vmlinux

    def describe(self) -> str:
        return self.name if self.module is None else f"{self.name} [{self.module}]"


def read_kallsyms(path: Path = KALLSYMS) -> dict[str, str | None]:
    """Text symbol -> the module it is in (None: vmlinux). Empty if unreadable.
    Lines are "addr type name" or "addr type name\\t[module]"."""
    out: dict[str, str | None] = {}
    try:
        with path.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tT":
                    module = parts[3][1:-1] if len(parts) >= 4 else None
                    out.setdefault(parts[2], module)
    except OSError:
        pass
    return out


class FunctionLocator:
    """Finds functions in vmlinux's BTF, then in the BTF of the module that
    kallsyms says holds them. Module BTF is parsed once per module."""

    def __init__(self, vmlinux: Btf, symbols: dict[str, str | None]):
        self.vmlinux = vmlinux
        self.symbols = symbols
        self._modules: dict[str, Btf | None] = {}

    def _module_btf(self, module: str) -> Btf | None:
        if module not in self._modules:
            try:
                self._modules[module] = Btf.load_module(module, self.vmlinux)
            except BtfError:
                self._modules[module] = None
        return self._modules[module]

    def locate(self, name: str) -> KernelFunction | str:
        """The function's BTF location, or why there is none."""
        btf_id = self.vmlinux.find(name, (KIND_FUNC,))
        if btf_id is not None:
            return KernelFunction(name, btf_id, None)
        if name not in self.symbols:
            return f"{name} is not in vmlinux BTF nor in /proc/kallsyms"
        module = self.symbols[name]
        if module is None:
            # Built in but not in BTF: pahole leaves out functions it cannot
            # describe (e.g. with clones or inconsistent prototypes).
            return f"{name} is in vmlinux but not in its BTF"
        mod_btf = self._module_btf(module)
        if mod_btf is None:
            return f"{name} is in module {module}, which has no BTF (/sys/kernel/btf/{module})"
        btf_id = mod_btf.find(name, (KIND_FUNC,), own_only=True)
        if btf_id is None:
            return f"{name} is not in the BTF of module {module}"
        return KernelFunction(name, btf_id, module)
