"""The backbone family on ``shapes`` at matched parameters and the same wall-clock budget (a script, not a test).

    python benchmarks/backbones.py --vae runs/vae_shapes_stage0 --minutes 5
    python benchmarks/backbones.py --vae runs/vae_shapes_stage0 --only latte_heads,dit --minutes 2

Every backbone trains ``configs/shapes_tiny.py`` (the same data, VAE, text encoder, optimiser and batch) with its
depth chosen so that its parameter count is closest to STDiT's. A short probe run measures its steps/s on this
machine; the full run then gets ``minutes × steps/s`` steps (so its learning-rate schedule ends on time), is scored
by ``vidjax.evaluate`` on the seen prompts during and after training and on the held-out pairs at the end.
Training FLOPs per step are ``vidjax.estimate``'s analytic count (3 × forward, × batch).

Writes ``<out>/backbones.md`` (the table) and ``<out>/backbones.png`` (all three right against training minutes).
One run each: differences of a few points are within run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (label, config variant, model / diffusion overrides); depth is matched to STDiT's parameters below
BACKBONES: dict[str, tuple[str, str, dict]] = {
    "stdit": ("STDiT (Open-Sora v1.0 blocks), rectified flow", "", {}),
    "sit_gvp": ("STDiT, SiT GVP path, velocity, Heun ODE", "sit", {}),
    "dit": ("DiT, full attention, cross-attention to the caption", "dit", {}),
    "uvit": ("U-ViT: full attention, caption as tokens, long skips", "uvit", {}),
    "latte_interleaved": ("Latte 1: spatial and temporal blocks interleaved", "latte", {}),
    "latte_late": ("Latte 2: spatial blocks, then temporal blocks", "latte", {"model.variant": "late_temporal"}),
    "latte_block": ("Latte 3: spatial then temporal attention in one block", "latte",
                    {"model.variant": "factorized_block"}),
    "latte_heads": ("Latte 4: half the heads spatial, half temporal", "latte", {"model.variant": "factorized_heads"}),
}


def config_for(name: str, vae: str, data_root: str, depth: int | None = None, **extra):
    from vidjax.config import load_config

    _, variant, overrides = BACKBONES[name]
    c = load_config(f"{ROOT / 'configs/shapes_tiny.py'}{':' + variant if variant else ''}",
                    [f"vae.path={vae}", "vae.train_config=", f"data.root={data_root}"])
    for key, value in {**overrides, **extra}.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    if depth is not None:
        c.model.depth = depth
    return c


def params_of(config) -> int:
    from flax import nnx

    from vidjax.models.stdit import count_params
    from vidjax.models.t2v import build_model
    from vidjax.models.vae import build_vae

    vae = build_vae(config.vae)
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0), latent_channels=vae.latent_channels))
    return count_params(model.dit)


def matched_depth(name: str, target: int, vae: str, root: str) -> tuple[int, int]:
    """The depth (1..12) whose denoiser parameter count is closest to ``target``: (depth, params)."""
    best = None
    for depth in range(1, 13):
        n = params_of(config_for(name, vae, root, depth))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (depth, n)
    return best


def train_flops_per_step(config) -> float:
    from vidjax.estimate import backbone_forward_flops
    from vidjax.models.vae import build_vae

    m, vae = config.model, build_vae(config.vae)
    t, h, w = vae.latent_shape(config.data.frames, config.data.height, config.data.width)
    _, fwd = backbone_forward_flops(m.name, m.depth, m.hidden, t, h, w, tuple(m.patch), variant=m.get("variant", ""),
                                    skips=m.get("skips", False), caption_len=config.text.max_length,
                                    caption_channels=config.text.dim, in_channels=vae.latent_channels,
                                    mlp_ratio=m.mlp_ratio)
    return 3 * fwd * config.train.batch_size


def overrides_of(config, keys: list[str]) -> list[str]:
    out = []
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        out.append(f"--config.{key}={node}")
    return out


def train(name: str, config, workdir: Path, steps: int, eval_every: int, variant: str) -> dict:
    keys = ["vae.path", "vae.train_config", "data.root", "model.depth", *BACKBONES[name][2]]
    cmd = [sys.executable, "-m", "vidjax.train", "--config",
           f"{ROOT / 'configs/shapes_tiny.py'}{':' + variant if variant else ''}", "--workdir", str(workdir),
           *overrides_of(config, keys), f"--config.train.steps={steps}", f"--config.sample.eval_every={eval_every}",
           f"--config.train.ckpt_every={max(steps, 1)}", f"--config.train.warmup={min(100, steps // 10)}",
           "--config.progress=False"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((workdir / "summary.json").read_text())


def heldout(workdir: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "vidjax.evaluate", "--workdir", str(workdir), "--split", "heldout"],
                         check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        curve = [json.loads(ln) for ln in (Path(r["workdir"]) / "eval_curve.jsonl").read_text().splitlines()]
        ax.plot([0] + [c["train_minutes"] for c in curve], [0] + [100 * c["all"] for c in curve], marker="o",
                label=r["name"])
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("all three right, seen prompts (%)")
    ax.set_title("shapes: backbones at matched parameters, same budget (one run each)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", required=True, help="a trained shapes VAE workdir (e.g. runs/vae_shapes_stage0)")
    p.add_argument("--data_root", default="data/shapes_8x32x32")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per backbone")
    p.add_argument("--out", default="runs/backbones")
    p.add_argument("--only", default="", help="comma-separated backbones (default all)")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vae, root = str(Path(a.vae).resolve()), str(Path(a.data_root).resolve())
    names = [n for n in (a.only.split(",") if a.only else BACKBONES) if n]
    target = params_of(config_for("stdit", vae, root))
    rows = []
    for name in names:
        label, variant, _ = BACKBONES[name]
        depth, params = (4, target) if name in ("stdit", "sit_gvp") else matched_depth(name, target, vae, root)
        config = config_for(name, vae, root, depth)
        probe = train(name, config, out / f"{name}_probe", 60, 0, variant)
        steps = max(int(a.minutes * 60 * probe["steps_per_s"]), 10)
        t0 = time.time()
        summary = train(name, config, out / name, steps, max(steps // 4, 1), variant)
        held = heldout(out / name)
        row = dict(name=name, label=label, depth=depth, params=params, flops=train_flops_per_step(config),
                   steps=steps, minutes=summary["train_minutes"], seen=summary["eval"], heldout=held,
                   workdir=str(out / name), wall=round((time.time() - t0) / 60, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "backbones.jsonl").open("a").write(json.dumps(row) + "\n")
    lines = ["| backbone | depth | parameters | GFLOP per step | steps in the budget (min) | seen: colour / shape / "
             "motion / all three | held-out: colour / shape / motion / all three |", "|---|---|---|---|---|---|---|"]

    def pct(s):
        return " / ".join(f"{100 * s[k]:.0f}%" for k in ("colour", "shape", "motion", "all"))

    for r in rows:
        lines.append(f"| {r['label']} | {r['depth']} | {r['params']:,} | {r['flops'] / 1e9:.1f} | {r['steps']:,} "
                     f"({r['minutes']:.1f}) | {pct(r['seen'])} | {pct(r['heldout'])} |")
    (out / "backbones.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, out / "backbones.png")


if __name__ == "__main__":
    main()
