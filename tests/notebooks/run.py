"""Executes the shipped notebooks end to end, as a user's Jupyter would.

The kernel is this interpreter (the virtualenv's python, where tracer is
installed), registered as a kernel spec in a temporary directory: a "python3"
spec found elsewhere on the machine could start a python without tracer.
The notebook reads its captures from TRACER_CAPTURES (its `parameters` cell),
and runs in its own directory, where its default sample lives."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("latency_analysis", "lb_fairness")
KERNEL = "tracer-tests"


def kernel_spec_dir(root: Path) -> Path:
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tracer (tests)",
        "language": "python",
    }))
    return root / "kernels"


@dataclass
class Executed:
    nb: nbformat.NotebookNode

    def outputs(self) -> list[dict]:
        return [o for c in self.nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]

    def errors(self) -> list[str]:
        return [f"{o['ename']}: {o['evalue']}" for o in self.outputs() if o["output_type"] == "error"]

    def text(self) -> str:
        parts = []
        for o in self.outputs():
            if o["output_type"] == "stream":
                parts.append(o["text"])
            elif "text/plain" in o.get("data", {}):
                parts.append(o["data"]["text/plain"])
        return "\n".join(parts)

    def images(self) -> int:
        return sum(1 for o in self.outputs() if "image/png" in o.get("data", {}))

    def figure_cells(self) -> list[str]:
        """Sources of the cells that drew a figure."""
        return [c.source for c in self.nb.cells if c.cell_type == "code"
                and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


def execute(name: str, captures: list[Path] | None, scratch: Path, timeout: float = 300) -> Executed:
    """Run notebooks/<name>.ipynb top to bottom; captures=None reads its shipped sample.
    A failing cell raises nbclient's CellExecutionError with the cell's traceback."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_spec_dir(scratch))])
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)
    env = {k: v for k, v in os.environ.items() if k != "TRACER_CAPTURES"}
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    if captures is not None:
        env["TRACER_CAPTURES"] = os.pathsep.join(str(p) for p in captures)
    client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    return Executed(nb)
