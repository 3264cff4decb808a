"""Test support that is not a test: booting a second kernel (Debian's 6.1,
which has CONFIG_KPROBES and loads fentry programs) for the backends a kernel
built without CONFIG_KPROBES cannot run (6.18.44 in docs/kernels.md, which
also refuses fentry).

Library only: nothing here imports BCC, so the host side of a VM test runs on
any Python that has the project installed.
"""

from tracer.testing.distro_kernel import KernelImage, KernelUnavailable, ensure_kernel
from tracer.testing.kernel_vm import (
    LAB_MODULES,
    VmBootError,
    VmError,
    VmResult,
    VmSetupError,
    VmTimeout,
    run_in_vm,
)

__all__ = [
    "LAB_MODULES",
    "KernelImage",
    "KernelUnavailable",
    "VmBootError",
    "VmError",
    "VmResult",
    "VmSetupError",
    "VmTimeout",
    "ensure_kernel",
    "run_in_vm",
]
