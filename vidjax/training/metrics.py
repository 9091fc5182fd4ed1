"""What a run writes while it trains: JSON-lines metrics, TensorBoard scalars, plots, throughput and MFU."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from vidjax.estimate import CHIP_PEAK_TFLOPS, CHIPS

# jax device_kind substrings -> keys of the chip table (vidjax/chips.toml)
_DEVICE_KINDS = {pattern: chip for chip, row in CHIPS.items() for pattern in row.get("device_kind", [])}


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from): the chip table for known accelerators
    (bf16 dense peak), otherwise a float32 matmul measured once on this device (CPU)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for pattern, chip in _DEVICE_KINDS.items():
        if pattern in kind:
            return CHIP_PEAK_TFLOPS[chip] * 1e12, f"chip table ({chip})"
    return measured_matmul_flops(device), "measured matmul"


def measured_matmul_flops(device: jax.Device, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an ``n×n @ n×n`` float32 matmul on ``device`` (best of ``repeats``)."""
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _json_value(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN: a skipped step's loss is logged as null


def write_metrics(pending: list[tuple[int, dict]], mf, writer) -> list[dict]:
    """Append host-side ``[(step, {name: value})]`` as JSON lines to ``mf`` (and TensorBoard ``train/<name>``);
    returns the rows (values as floats, NaN kept)."""
    rows = []
    for step, metrics in pending:
        rec = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        mf.write(json.dumps({k: _json_value(v) if k != "step" else v for k, v in rec.items()}) + "\n")
        if writer is not None:
            for k, v in rec.items():
                if k != "step" and math.isfinite(v):
                    writer.add_scalar(f"train/{k}", v, step)
        rows.append(rec)
    mf.flush()
    return rows


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop logged rows after ``step``: they are about to be redone."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def tb_writer(workdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover
        return None
    return SummaryWriter(str(workdir / "tb"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Loss versus step (log scale) with a running mean; skipped (non-finite) steps are left out."""
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if r.get("loss") is not None]
    if not rows:
        return
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps[k - 1 :], smooth, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if loss.min() > 0:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_curve(curve_path: Path, out: Path, keys: tuple[str, ...], *, ylabel: str, chance: dict | None = None,
               percent: bool = False) -> None:
    """Evaluation figures versus training minutes, one line per key (``chance`` dotted)."""
    rows = [json.loads(ln) for ln in curve_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    plt = _pyplot()
    scale = 100 if percent else 1
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, k in enumerate(keys):
        pts = [(r["train_minutes"], scale * r[k]) for r in rows if r.get(k) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=k)
        if chance and k in chance:
            ax.axhline(scale * chance[k], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("training minutes")
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 100)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
