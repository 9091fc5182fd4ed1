"""Compute estimator: how much does a training run cost before you launch it?

    python -m vidjax.estimate --config configs/shapes_tiny.py
    python -m vidjax.estimate --model STDiT-XL/2 --frames 16 --height 256 --width 256 \
        --batch 512 --steps 80000 --chip h100 --chips 64 --mfu 0.15

Counts are analytic (model FLOPs, no remat recompute), from the architecture of
``vidjax/models/stdit.py``. Per block and sample, with N = T·S tokens, C width, L caption length:

    spatial attention   8·N·C² + 4·T·S²·C        temporal attention  8·N·C² + 4·S·T²·C
    cross-attention     4·N·C² + 4·L·C² + 4·N·L·C                 MLP  16·N·C²   (mlp_ratio 4)

A training step costs 3× the forward pass (forward + backward). Time = FLOPs / (chips · peak · MFU).
"""

from __future__ import annotations

import argparse
import dataclasses

from vidjax.errors import ConfigError

# bf16 dense peak TFLOP/s per chip (see shared reference notes: vendor specs)
CHIP_PEAK_TFLOPS = {"h100": 989.4, "h800": 989.4, "a100": 312.0, "v5p": 459.0, "v6e": 918.0, "v5e": 197.0,
                    "cpu": 0.1}


@dataclasses.dataclass(frozen=True)
class Estimate:
    params: int
    tokens_per_sample: int
    train_flops_per_sample: float
    attention_share: float  # fraction of FLOPs in the quadratic attention terms

    def step_flops(self, batch: int) -> float:
        return self.train_flops_per_sample * batch


def _count_params(depth, hidden, patch, caption_len, caption_channels, in_channels, mlp_ratio) -> int:
    """Exact trainable-parameter count from the model itself, without allocating it."""
    from flax import nnx

    from vidjax.models.stdit import STDiT, count_params, stdit_config

    heads = 16 if hidden % 16 == 0 else 1
    cfg = stdit_config(depth=depth, hidden=hidden, heads=heads, patch=tuple(patch), in_channels=in_channels,
                       caption_channels=caption_channels, model_max_length=caption_len, mlp_ratio=mlp_ratio)
    return count_params(nnx.eval_shape(lambda: STDiT(cfg, rngs=nnx.Rngs(0))))


def forward_flops(depth: int, hidden: int, frames: int, height: int, width: int, patch=(1, 2, 2),
                  caption_len: int = 120, caption_channels: int = 4096, in_channels: int = 4, mlp_ratio: float = 4.0,
                  temporal: bool = True) -> tuple[int, float, float]:
    """(tokens per sample, forward FLOPs per sample, FLOPs of the quadratic attention terms) of STDiT
    (``temporal=True``) or a full-attention DiT; ``frames/height/width`` are the latent input size."""
    pt, ph, pw = patch
    T, S, C, L = frames // pt, (height // ph) * (width // pw), hidden, caption_len
    N = T * S
    mlp = 4 * N * C * int(C * mlp_ratio)
    cross = 4 * N * C * C + 4 * L * C * C + 4 * N * L * C
    if temporal:
        quad = 4 * T * S * S * C + 4 * S * T * T * C
        lin = 16 * N * C * C + cross + mlp
    else:
        quad = 4 * N * N * C
        lin = 8 * N * C * C + cross + mlp
    embed = 2 * N * C * (pt * ph * pw * in_channels) * 3 + 2 * L * caption_channels * C + 2 * L * C * C
    return N, depth * (quad + lin) + embed, depth * quad


def estimate(depth: int, hidden: int, frames: int, height: int, width: int, patch=(1, 2, 2),
             caption_len: int = 120, caption_channels: int = 4096, in_channels: int = 4, mlp_ratio: float = 4.0,
             temporal: bool = True) -> Estimate:
    """Parameters and FLOPs of one training sample for STDiT (``temporal=True``) or a full-attention DiT.

    ``frames/height/width`` are the latent input size (e.g. 16×32×32 for 16×256² through SD-VAE).
    """
    tokens, fwd, quad = forward_flops(depth, hidden, frames, height, width, patch, caption_len, caption_channels,
                                      in_channels, mlp_ratio, temporal)
    return Estimate(_count_params(depth, hidden, patch, caption_len, caption_channels, in_channels, mlp_ratio),
                    tokens, 3.0 * fwd, quad / fwd)


def main(argv: list[str] | None = None) -> int:
    from vidjax.config import add_config_arguments, parse_config_args

    p = argparse.ArgumentParser(prog="python -m vidjax.estimate", description=__doc__.split("\n")[1])
    add_config_arguments(p, required=False)  # optional: reads model, data, vae, train
    p.add_argument("--model", default=None, help="a named size, e.g. STDiT-XL/2 (overrides --config's)")
    p.add_argument("--frames", type=int, help="latent frames")
    p.add_argument("--height", type=int, help="latent height")
    p.add_argument("--width", type=int, help="latent width")
    p.add_argument("--batch", type=int, help="global batch size")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--chip", default="h100", choices=sorted(CHIP_PEAK_TFLOPS))
    p.add_argument("--chips", type=int, default=8)
    p.add_argument("--mfu", type=float, default=0.3, help="assumed model FLOPs utilisation")
    p.add_argument("--dollars_per_chip_hour", type=float, default=0.0)
    a, c = parse_config_args(p, argv)

    from vidjax.models.stdit import STDIT_SIZES

    dims = dict(depth=28, hidden=1152, patch=(1, 2, 2), caption_len=120, caption_channels=4096, in_channels=4)
    frames, height, width, batch, steps = 16, 32, 32, 8, 1000
    if c is not None:
        m = c.model
        if m.get("name", "stdit") != "stdit":
            raise ConfigError(f"config.model.name={m.name!r}: vidjax.estimate models STDiT (v1.0) only so far; "
                              "for a v1.0-shaped budget give --model STDiT-XL/2 and the sizes instead of --config")
        base = dict(STDIT_SIZES[m.size]) if m.get("size") else {}
        dims.update(depth=base.get("depth", m.depth), hidden=base.get("hidden", m.hidden),
                    patch=tuple(base.get("patch", m.patch)), caption_len=c.text.max_length,
                    caption_channels=c.text.dim)
        from vidjax.models.vae import vae_architecture

        vae = vae_architecture(c.vae)  # the run's own compressor (shapes only): its latent size and channels
        frames, height, width = vae.latent_shape(c.data.frames, c.data.height, c.data.width)
        dims["in_channels"] = vae.latent_channels
        batch, steps = c.train.batch_size, c.train.steps
    if a.model:
        if a.model not in STDIT_SIZES:
            p.error(f"--model {a.model!r}; expected one of {sorted(STDIT_SIZES)}")
        s = STDIT_SIZES[a.model]
        dims.update(depth=s["depth"], hidden=s["hidden"], patch=tuple(s["patch"]))
    frames, height, width = a.frames or frames, a.height or height, a.width or width
    batch, steps = a.batch or batch, a.steps or steps
    e = estimate(frames=frames, height=height, width=width, **dims)
    peak = CHIP_PEAK_TFLOPS[a.chip] * 1e12
    step_s = e.step_flops(batch) / (a.chips * peak * a.mfu)
    hours = step_s * steps / 3600
    print(f"model          {e.params / 1e6:,.1f} M parameters (STDiT, depth {dims['depth']}, width {dims['hidden']})")
    print(f"tokens         {e.tokens_per_sample:,} per sample ({frames}×{height}×{width} latent, "
          f"patch {dims['patch']})")
    print(f"train FLOPs    {e.train_flops_per_sample / 1e12:,.3f} TFLOP per sample; "
          f"{e.attention_share:.0%} in attention scores")
    print(f"step           {e.step_flops(batch) / 1e15:,.3f} PFLOP at batch {batch}: {step_s:,.3f} s on "
          f"{a.chips}× {a.chip} at {a.mfu:.0%} MFU")
    line = f"run            {steps:,} steps: {hours:,.2f} h, {hours * a.chips:,.1f} {a.chip}-hours"
    if a.dollars_per_chip_hour:
        line += f", ${hours * a.chips * a.dollars_per_chip_hour:,.0f}"
    print(line)
    return 0


if __name__ == "__main__":
    from vidjax import cli

    cli.run("vidjax.estimate", main)
