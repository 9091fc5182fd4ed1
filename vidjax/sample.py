"""Generate videos from text with a trained workdir.

    python -m vidjax.sample --workdir runs/shapes_tiny --prompt "a blue square moving up" --out out.mp4
    python -m vidjax.sample --workdir runs/shapes_tiny --prompts prompts.txt --out samples/

Writes mp4 files and a PNG grid of frames (one row per prompt) next to them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from vidjax import cli
from vidjax.cli import check_writable
from vidjax.data.video_io import frame_grid, save_png, write_video
from vidjax.errors import ConfigError, InputError, MissingFileError


def generate(model, config, vae, diffusion, tokenizer, prompts: list[str], *, seed: int = 0, steps: int | None = None,
             cfg_scale: float | None = None, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Sample one clip per prompt: uint8 [N, T, H, W, 3]. Prompt i always gets noise ``fold_in(seed, i)``."""
    d = config.data
    steps = steps or config.diffusion.sample_steps
    cfg_scale = config.diffusion.cfg_scale if cfg_scale is None else cfg_scale
    batch_size = batch_size or config.sample.get("batch_size", 16)
    lt, lh, lw = vae.latent_shape(d.frames, d.height, d.width)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, noise, cond, rng):
        # rebuild the module inside the model function: the sampler's loop traces it at its own
        # level, and NNX variables must be created at the level where they are used
        def model_fn(x, t, c, drop):
            return nnx.merge(graphdef, jax.tree.map(lambda v: v, state))(x, t, c, drop)

        z = diffusion.sample(model_fn, noise, cond, rng, steps=steps, cfg_scale=cfg_scale)
        return vae.decode(z, num_frames=d.frames)  # a causal VAE's front padding cropped (an image: 1 frame)

    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress, unit="batch"):
        chunk = prompts[i : i + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # keep one compiled shape
        cond = tokenizer(chunk)  # {"ids", "mask"} (trainable encoder) or {"y", "mask"} (frozen T5 / CLIP)
        if isinstance(cond, tuple):
            cond = {"ids": cond[0], "mask": cond[1]}
        noise = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.key(seed), i + j),
                                             (lt, lh, lw, vae.latent_channels)) for j in range(batch_size)])
        rng = jax.random.fold_in(jax.random.key(seed + 1), i)  # the ancestral sampler's per-step noise
        video = run(state, noise, {k: jnp.asarray(v) for k, v in cond.items()}, rng)[:n]
        out.append(np.asarray(jnp.clip((video + 1) * 127.5, 0, 255).round().astype(jnp.uint8)))
    return np.concatenate(out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def save_samples(out_dir: str | Path, clips: np.ndarray, prompts: list[str], fps: int = 8) -> Path:
    """mp4 per clip plus ``grid.png`` (row per clip, upscaled for viewing); returns the grid path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (clip, p) in enumerate(zip(clips, prompts, strict=True)):
        write_video(out_dir / f"{i:03d}_{_slug(p)}.mp4", clip, fps=fps)
    (out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
    grid = out_dir / "grid.png"
    save_png(grid, frame_grid(clips), scale=max(1, 128 // clips.shape[2]))
    return grid


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped (with a warning). One-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: prompts file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); save the prompts file as UTF-8") from None
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts (the file is empty or has only blank lines)")
    if len(prompts) < len(lines):
        print(f"warning: {path}: skipped {len(lines) - len(prompts)} blank line(s)", file=sys.stderr)
    return prompts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidjax.sample", description=__doc__.split("\n")[1])
    p.add_argument("--workdir", required=True, help="training workdir holding checkpoints/")
    p.add_argument("--prompt", action="append", help="a caption (repeatable)")
    p.add_argument("--prompts", help="a text file with one caption per line")
    p.add_argument("--out", default="samples", help="an .mp4 path (one prompt) or a folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--cfg_scale", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA")
    a = p.parse_args(argv)
    prompts = list(a.prompt or []) + (read_prompts(a.prompts) if a.prompts else [])
    if not prompts:
        p.error("give --prompt or --prompts")
    if a.steps is not None and a.steps < 1:
        raise ConfigError(f"--steps={a.steps}: the number of sampling steps must be at least 1")
    out = Path(a.out)
    if out.suffix == ".mp4" and len(prompts) != 1:
        raise ConfigError(f"--out {out} is a single .mp4 but {len(prompts)} prompts were given; give a folder")
    check_writable(out, what="--out")  # before any compute
    from vidjax.checkpoint import restore_model
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import text_inputs
    from vidjax.models.vae import build_vae

    config, model, step = restore_model(a.workdir, a.step, ema=not a.no_ema)
    clips = generate(model, config, build_vae(config.vae), build_diffusion(config.diffusion), text_inputs(config),
                     prompts, seed=a.seed, steps=a.steps, cfg_scale=a.cfg_scale, progress=True)
    if out.suffix == ".mp4":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_video(out, clips[0], fps=config.sample.fps)
        save_png(out.with_suffix(".png"), frame_grid(clips), scale=max(1, 128 // clips.shape[2]))
        print(f"wrote {out} and {out.with_suffix('.png')} (checkpoint step {step})")
    else:
        grid = save_samples(out, clips, prompts, fps=config.sample.fps)
        print(f"wrote {len(prompts)} clips to {out}/ and {grid} (checkpoint step {step})")
    return 0


if __name__ == "__main__":
    cli.run("vidjax.sample", main)
