"""Executes notebooks/colab_tpu.ipynb top to bottom under SMOKE=1 (train, curves, inline video, export)."""

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' installs nbformat/nbclient/ipykernel")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client import KernelManager  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_tpu.ipynb"


def _kernel_manager(tmp: Path) -> KernelManager:
    """A kernel started with this interpreter (``sys.executable``), not whichever ``python`` is first on PATH."""
    spec = tmp / "kernels" / "vidjax-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "vidjax test", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return KernelManager(kernel_name="vidjax-test", kernel_spec_manager=specs)


def _displays_a_video(output: dict) -> bool:
    data = output.get("data", {})
    return "video/mp4" in data or "image/gif" in data or "<video" in data.get("text/html", "")


def test_colab_notebook_runs_under_smoke(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel inherits this environment: SMOKE, one CPU device, and the checkout found via VIDJAX_REPO
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("VIDJAX_REPO", str(ROOT))
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    work = tmp_path / "work"
    work.mkdir()
    km = _kernel_manager(tmp_path)
    client = nbclient.NotebookClient(nb, km=km, timeout=240, resources={"metadata": {"path": str(work)}})
    t0 = time.time()
    client.execute()  # raises CellExecutionError naming the cell if any cell errors
    seconds = time.time() - t0
    assert seconds < 300, f"the notebook took {seconds:.0f} s under SMOKE=1"
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(_displays_a_video(o) for o in outputs), "no inline video among the outputs"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no loss/eval figure among the outputs"
    kernel_python = [o for o in outputs if "vidjax from" in o.get("text", "")]
    assert kernel_python and str(ROOT / "vidjax") in kernel_python[0]["text"]
    assert (work / "runs" / "colab" / "stdit.safetensors").stat().st_size > 0
    print(f"notebook executed in {seconds:.0f} s")
