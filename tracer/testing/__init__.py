"""Test support that is not a test: booting a second kernel for the backends
the development machines' own kernel cannot run (kprobes, fentry).

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
