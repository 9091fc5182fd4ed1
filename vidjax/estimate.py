"""The planner: what a training run costs (FLOPs, memory per chip, time) before you rent the chips.

    python -m vidjax.estimate --config configs/opensora_v1/stage1.py
    python -m vidjax.estimate --model STDiT-XL/2 --video 16x256x256 --batch 512 --steps 80000 \
        --chip h800 --chips 64 --mfu 0.3
    python -m vidjax.estimate --depth 32 --hidden 3072 --heads 24 --video 40s@24fps,256x256 --compression 4x8x8 \
        --patch 2x2x2 --chip a100 --chips 300 --days 75        # how many samples a budget buys
    python -m vidjax.estimate --published                      # Open-Sora v1.0's stage budgets, side by side

**FLOPs** are analytic model FLOPs (no remat recompute), from the architecture of ``vidjax/models/stdit.py``.
Per block and sample, with N = T·S tokens, C width, L caption length, M the MLP width:

    spatial attention   8·N·C² + 4·T·S²·C        temporal attention  8·N·C² + 4·S·T²·C
    cross-attention     4·N·C² + 4·L·C² + 4·N·L·C                 MLP  4·N·C·M
    (a full-attention DiT has one attention over all N tokens: 8·N·C² + 4·N²·C)

A training step costs 3× the forward pass (forward + backward). Time = FLOPs / (chips · peak · MFU); the MFU is an
assumption the planner prints, never a measurement (training logs measure it: ``mfu`` in metrics.jsonl).

**Memory per chip** under a mesh of ``fsdp × sequence × data`` chips (vidjax's FSDP shards every parameter and its
optimizer state over ``fsdp``; sequence parallelism splits each sample's tokens over ``sequence``):

    weights   fp32 parameters + EMA + AdamW moments (2) + gradients = 20 bytes / parameter, ÷ fsdp
    inputs    latents + caption embeddings of the chip's samples (fp32)
    activations, per block and sample (N/sequence tokens, b bytes per element of the compute dtype):
              b·(42·N·C + 3·N·M) saved for the backward pass (norms, modulations, q/k/v, attention outputs,
              layout copies between the spatial and temporal passes, residuals, MLP)
              + 4·heads·(T·S² + S·T² + N·L) for the fp32 attention probabilities, which the attention backward
              keeps (none with a flash kernel)
    remat none: depth blocks of that;  remat full: the depth block inputs (b·N·C each) + one block recomputed

The activation coefficients are fitted to XLA's ``memory_analysis()`` of vidjax's compiled train step, and
tests/test_estimate.py holds the model within 25% of it at two clip sizes, with and without remat.
The chip table (peak bf16 TFLOP/s, HBM) is the data file ``vidjax/chips.toml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import tomllib
from importlib import resources

from vidjax.errors import ConfigError

# --------------------------------------------------------------------------------------
# 1. The chip table (vidjax/chips.toml)
# --------------------------------------------------------------------------------------


def load_chips() -> dict[str, dict]:
    """``{key: {"name", "peak_bf16_tflops", "hbm_gib", "device_kind"}}`` from ``vidjax/chips.toml``."""
    return tomllib.loads(resources.files("vidjax").joinpath("chips.toml").read_text())


CHIPS = load_chips()
CHIP_PEAK_TFLOPS = {k: float(v["peak_bf16_tflops"]) for k, v in CHIPS.items()}

GiB = 2**30

# --------------------------------------------------------------------------------------
# 2. Sizes: video -> latent -> tokens
# --------------------------------------------------------------------------------------


def parse_video(text: str) -> tuple[int, int, int]:
    """``"16x256x256"`` (frames × height × width) or ``"40s@24fps,256x256"`` -> (frames, height, width)."""
    t = text.strip().lower().replace("×", "x")
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", t)
    if m:
        return int(m[1]), int(m[2]), int(m[3])
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s@(\d+(?:\.\d+)?)fps,(\d+)x(\d+)", t)
    if m:
        return max(1, round(float(m[1]) * float(m[2]))), int(m[3]), int(m[4])
    raise ConfigError(f"--video {text!r}: expected FRAMESxHEIGHTxWIDTH (16x256x256) or SECONDSs@FPSfps,HEIGHTxWIDTH "
                      "(40s@24fps,256x256)")


def parse_triple(text: str, flag: str) -> tuple[int, int, int]:
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"{flag} {text!r}: expected three positive integers TxHxW, e.g. 1x2x2")
    return int(parts[0]), int(parts[1]), int(parts[2])


def latent_size(video: tuple[int, int, int], compression: tuple[int, int, int]) -> tuple[int, int, int]:
    """Latent frames, height, width of a pixel clip through a VAE compressing ``compression`` (time, h, w)."""
    return tuple(math.ceil(v / c) for v, c in zip(video, compression, strict=True))


# --------------------------------------------------------------------------------------
# 3. FLOPs
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    params: int
    tokens_per_sample: int
    train_flops_per_sample: float
    attention_share: float  # fraction of FLOPs in the quadratic attention terms

    def step_flops(self, batch: int) -> float:
        return self.train_flops_per_sample * batch


def _count_params(depth, hidden, patch, caption_len, caption_channels, in_channels, mlp_ratio, heads=None) -> int:
    """Exact trainable-parameter count from the model itself, without allocating it."""
    from flax import nnx

    from vidjax.models.stdit import STDiT, count_params, stdit_config

    heads = heads or (16 if hidden % 16 == 0 else 1)
    cfg = stdit_config(depth=depth, hidden=hidden, heads=heads, patch=tuple(patch), in_channels=in_channels,
                       caption_channels=caption_channels, model_max_length=caption_len, mlp_ratio=mlp_ratio)
    return count_params(nnx.eval_shape(lambda: STDiT(cfg, rngs=nnx.Rngs(0))))


def flops_breakdown(depth: int, hidden: int, frames: int, height: int, width: int, patch=(1, 2, 2),
                    caption_len: int = 120, caption_channels: int = 4096, in_channels: int = 4,
                    mlp_ratio: float = 4.0, temporal: bool = True) -> dict[str, float]:
    """Forward FLOPs per sample by part: ``spatial``, ``temporal`` (STDiT) or ``attention`` (full-attention DiT),
    ``cross``, ``mlp``, ``embed``, plus ``quadratic`` (the attention-score terms inside the attention parts)."""
    pt, ph, pw = patch
    T, S, C, L = frames // pt, (height // ph) * (width // pw), hidden, caption_len
    N = T * S
    parts = {}
    if temporal:
        parts["spatial"] = depth * (8 * N * C * C + 4 * T * S * S * C)
        parts["temporal"] = depth * (8 * N * C * C + 4 * S * T * T * C)
        quad = depth * (4 * T * S * S * C + 4 * S * T * T * C)
    else:
        parts["attention"] = depth * (8 * N * C * C + 4 * N * N * C)
        quad = depth * 4 * N * N * C
    parts["cross"] = depth * (4 * N * C * C + 4 * L * C * C + 4 * N * L * C)
    parts["mlp"] = depth * 4 * N * C * int(C * mlp_ratio)
    parts["embed"] = 2 * N * C * (pt * ph * pw * in_channels) * 3 + 2 * L * caption_channels * C + 2 * L * C * C
    parts["quadratic"] = quad
    return parts


def forward_flops(depth: int, hidden: int, frames: int, height: int, width: int, patch=(1, 2, 2),
                  caption_len: int = 120, caption_channels: int = 4096, in_channels: int = 4, mlp_ratio: float = 4.0,
                  temporal: bool = True) -> tuple[int, float, float]:
    """(tokens per sample, forward FLOPs per sample, FLOPs of the quadratic attention terms) of STDiT
    (``temporal=True``) or a full-attention DiT; ``frames/height/width`` are the latent input size."""
    parts = flops_breakdown(depth, hidden, frames, height, width, patch, caption_len, caption_channels, in_channels,
                            mlp_ratio, temporal)
    pt, ph, pw = patch
    tokens = (frames // pt) * (height // ph) * (width // pw)
    return tokens, sum(v for k, v in parts.items() if k != "quadratic"), parts["quadratic"]


def backbone_forward_flops(name: str, depth: int, hidden: int, frames: int, height: int, width: int,
                           patch=(1, 2, 2), *, variant: str = "", skips: bool = False, **dims) -> tuple[int, float]:
    """(tokens per sample, forward FLOPs per sample) of ``model.name`` ``stdit``, ``dit`` or ``latte`` (with its
    ``variant``), plus U-ViT's skip projections when ``skips``. Latte's ``interleaved`` / ``late_temporal`` have
    ``depth`` spatial and ``depth`` temporal blocks, each with its own cross-attention and MLP; ``factorized_heads``
    has one qkv / projection per block and half the heads on each axis."""
    parts = flops_breakdown(depth, hidden, frames, height, width, patch, temporal=name != "dit", **dims)
    pt, ph, pw = patch
    T, S, C = frames // pt, (height // ph) * (width // pw), hidden
    N = T * S
    stacks = 1
    if name == "latte" and variant in ("interleaved", "late_temporal"):
        parts["cross"], parts["mlp"] = 2 * parts["cross"], 2 * parts["mlp"]
        stacks = 2 if variant == "late_temporal" else 1  # late: two stacks, each with its own skips
    elif name == "latte" and variant == "factorized_heads":
        parts["spatial"] = depth * (8 * N * C * C + 2 * T * S * S * C)
        parts["temporal"] = depth * 2 * S * T * T * C
    if skips:
        parts["skips"] = stacks * (depth // 2) * 2 * N * (2 * C) * C
    return N, sum(v for k, v in parts.items() if k != "quadratic")


def estimate(depth: int, hidden: int, frames: int, height: int, width: int, patch=(1, 2, 2),
             caption_len: int = 120, caption_channels: int = 4096, in_channels: int = 4, mlp_ratio: float = 4.0,
             temporal: bool = True, heads: int | None = None) -> Estimate:
    """Parameters and FLOPs of one training sample for STDiT (``temporal=True``) or a full-attention DiT.

    ``frames/height/width`` are the latent input size (e.g. 16×32×32 for 16×256² through SD-VAE).
    """
    tokens, fwd, quad = forward_flops(depth, hidden, frames, height, width, patch, caption_len, caption_channels,
                                      in_channels, mlp_ratio, temporal)
    return Estimate(_count_params(depth, hidden, patch, caption_len, caption_channels, in_channels, mlp_ratio, heads),
                    tokens, 3.0 * fwd, quad / fwd)


# --------------------------------------------------------------------------------------
# 4. Memory per chip
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per chip."""

    weights: float  # parameters + EMA + AdamW moments + gradients, sharded over fsdp
    inputs: float  # the chip's latents and caption embeddings
    activations: dict[str, float]  # remat policy -> bytes saved for the backward pass
    samples_per_chip: float

    def total(self, remat: str) -> float:
        return self.weights + self.inputs + self.activations[remat]


def memory_per_chip(params: int, depth: int, hidden: int, heads: int, frames: int, height: int, width: int,
                    patch=(1, 2, 2), caption_len: int = 120, caption_channels: int = 4096, in_channels: int = 4,
                    mlp_ratio: float = 4.0, samples_per_chip: float = 1.0, fsdp: int = 1, sequence: int = 1,
                    compute_bytes: int = 2, flash: bool = False, temporal: bool = True) -> Memory:
    """The memory model of the module docstring; ``frames/height/width`` are the latent size, ``samples_per_chip``
    the samples whose activations one chip holds (a sample split over ``sequence`` chips counts once per chip)."""
    pt, ph, pw = patch
    T, S, C, L = frames // pt, (height // ph) * (width // pw), hidden, caption_len
    N = T * S / sequence  # tokens of one sample on one chip
    M = int(C * mlp_ratio)
    weights = 20.0 * params / fsdp
    latent = frames * height * width * in_channels / sequence
    inputs = 4.0 * samples_per_chip * (latent + caption_len * caption_channels)
    saved = compute_bytes * (42 * N * C + 3 * N * M)
    if not flash:
        scores = (T * S * S + S * T * T) if temporal else T * S * T * S
        saved += 4 * heads * (scores / sequence + N * L)
    block_input = compute_bytes * N * C
    activations = {"none": samples_per_chip * depth * saved,
                   "full": samples_per_chip * (depth * block_input + saved)}
    return Memory(weights, inputs, activations, samples_per_chip)


# --------------------------------------------------------------------------------------
# 5. Published budgets (reference: Open-Sora's report, §6 of shared/reference/opensora.md)
# --------------------------------------------------------------------------------------

# Open-Sora v1.0 on H800: STDiT-XL/2, SD-VAE (1×8×8), T5-XXL 120 tokens, batch 8×64 (2×64 at 512²)
OPENSORA_V1_BUDGETS = [
    dict(stage="16×256² from PixArt-512 (366K clips)", video=(16, 256, 256), steps=80_000, batch=512, gpu_days=117),
    dict(stage="16×256² HQ (20K clips)", video=(16, 256, 256), steps=24_000, batch=512, gpu_days=45),
    dict(stage="16×512² HQ (20K clips)", video=(16, 512, 512), steps=20_000, batch=128, gpu_days=35),
]


def published_table(mfu: float, chip: str = "h800") -> list[dict]:
    """Each published v1.0 stage next to the planner: train FLOPs, the MFU the published days imply, and the
    planner's chip-days at ``mfu``."""
    rows = []
    peak = CHIP_PEAK_TFLOPS[chip] * 1e12
    for b in OPENSORA_V1_BUDGETS:
        lat = latent_size(b["video"], (1, 8, 8))
        e = estimate(28, 1152, *lat)
        flops = e.train_flops_per_sample * b["batch"] * b["steps"]
        days = flops / (peak * mfu) / 86400
        rows.append({**b, "tokens": e.tokens_per_sample, "train_pflop": flops / 1e15,
                     "implied_mfu": flops / (b["gpu_days"] * 86400 * peak), "planner_days": days,
                     "ratio": b["gpu_days"] / days})
    return rows


# --------------------------------------------------------------------------------------
# 6. The command line
# --------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f} GiB"


def _print_published(mfu: float) -> None:
    rows = published_table(mfu)
    print(f"Open-Sora v1.0 (STDiT-XL/2, SD-VAE, T5-XXL; 64× H800) against the planner at {mfu:.1%} MFU:")
    print(f"  {'stage':<38} {'tokens':>6} {'steps':>7} {'batch':>5} {'PFLOP':>10} {'published':>10} "
          f"{'planner':>8} {'ratio':>6} {'implied MFU':>11}")
    for r in rows:
        print(f"  {r['stage']:<38} {r['tokens']:>6,} {r['steps']:>7,} {r['batch']:>5} {r['train_pflop']:>10,.0f} "
              f"{r['gpu_days']:>6} GPU-d {r['planner_days']:>6.1f} d {r['ratio']:>5.2f}× {r['implied_mfu']:>10.1%}")
    lo, hi = min(r["ratio"] for r in rows), max(r["ratio"] for r in rows)
    print(f"  published / planner: {lo:.2f}×–{hi:.2f}× (model FLOPs only; v1.0 also recomputed every block "
          "(grad checkpointing, +1/3), encoded video with the VAE and T5 online, and loaded data)")


def main(argv: list[str] | None = None) -> int:
    from vidjax.config import add_config_arguments, parse_config_args

    p = argparse.ArgumentParser(prog="python -m vidjax.estimate", description=__doc__.split("\n")[0])
    add_config_arguments(p, required=False)  # optional: reads model, data, vae, train, mesh
    p.add_argument("--model", default=None, help="a named size, e.g. STDiT-XL/2 (overrides --config's)")
    p.add_argument("--depth", type=int, help="blocks (a size of your own, with --hidden)")
    p.add_argument("--hidden", type=int, help="width")
    p.add_argument("--heads", type=int, help="attention heads (default: width / 72, as STDiT-XL/2)")
    p.add_argument("--video", help="pixel clip: 16x256x256 or 40s@24fps,256x256")
    p.add_argument("--compression", help="the VAE's time×height×width factors, e.g. 4x8x8 (default: the config's "
                   "VAE, else SD-VAE's 1x8x8)")
    p.add_argument("--latent_channels", type=int, help="the VAE's latent channels (default 4)")
    p.add_argument("--patch", help="the model's patch, e.g. 1x2x2 or 2x2x2")
    p.add_argument("--frames", type=int, help="latent frames (instead of --video)")
    p.add_argument("--height", type=int, help="latent height")
    p.add_argument("--width", type=int, help="latent width")
    p.add_argument("--batch", type=int, help="global batch size")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--days", type=float, help="instead of --steps: the wall-clock budget; prints the samples it buys")
    p.add_argument("--chip", default="h100", choices=sorted(CHIPS), help="a row of vidjax/chips.toml")
    p.add_argument("--chips", type=int, default=8)
    p.add_argument("--fsdp", type=int, help="chips sharing each parameter (default: the config's mesh, else all)")
    p.add_argument("--sequence", type=int, help="chips sharing each sample's tokens (default: the config's, else 1)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="compute dtype (activations)")
    p.add_argument("--flash", action="store_true", help="a flash-attention kernel: no attention probabilities saved")
    p.add_argument("--mfu", type=float, default=0.3, help="assumed model FLOPs utilisation")
    p.add_argument("--dollars_per_chip_hour", type=float, default=0.0)
    p.add_argument("--published", action="store_true", help="Open-Sora v1.0's published stage budgets next to the "
                   "planner's (at --mfu), then exit")
    a, c = parse_config_args(p, argv)
    if not 0 < a.mfu <= 1:
        raise ConfigError(f"--mfu {a.mfu}: expected a fraction in (0, 1]")
    if a.published:
        _print_published(a.mfu)
        return 0

    from vidjax.models.stdit import STDIT_SIZES

    dims = dict(depth=28, hidden=1152, patch=(1, 2, 2), caption_len=120, caption_channels=4096, in_channels=4)
    heads, compression, video, latent = 16, (1, 8, 8), None, (16, 32, 32)
    batch, steps, fsdp, sequence, dtype, name = 8, 1000, None, 1, "bfloat16", "STDiT-XL/2"
    if c is not None:
        m = c.model
        if m.get("name", "stdit") != "stdit":
            raise ConfigError(f"config.model.name={m.name!r}: vidjax.estimate models STDiT (v1.0) only so far; "
                              "for a v1.0-shaped budget give --model STDiT-XL/2 and the sizes instead of --config")
        base = dict(STDIT_SIZES[m.size]) if m.get("size") else {}
        dims.update(depth=base.get("depth", m.depth), hidden=base.get("hidden", m.hidden),
                    patch=tuple(base.get("patch", m.patch)), caption_len=c.text.max_length,
                    caption_channels=c.text.dim)
        heads, name = base.get("heads", m.heads), c.name
        from vidjax.models.vae import vae_architecture

        vae = vae_architecture(c.vae)  # the run's own compressor: its latent size and channels
        video = (c.data.frames, c.data.height, c.data.width)
        compression = tuple(vae.downsample)
        latent = vae.latent_shape(*video)
        dims["in_channels"] = vae.latent_channels
        batch, steps, dtype = c.train.batch_size, c.train.steps, m.get("dtype", "float32")
        fsdp = c.mesh.fsdp if c.mesh.fsdp > 0 else None
        sequence = max(1, c.mesh.sequence)
    if a.model:
        if a.model not in STDIT_SIZES:
            p.error(f"--model {a.model!r}; expected one of {sorted(STDIT_SIZES)}")
        s = STDIT_SIZES[a.model]
        dims.update(depth=s["depth"], hidden=s["hidden"], patch=tuple(s["patch"]))
        heads, name = s["heads"], a.model
    if a.depth or a.hidden:
        if not (a.depth and a.hidden):
            p.error("--depth and --hidden go together")
        dims.update(depth=a.depth, hidden=a.hidden)
        heads, name = a.heads or max(1, a.hidden // 72), "a size of your own"
    heads = a.heads or heads
    if dims["hidden"] % heads:
        raise ConfigError(f"--heads {heads}: must divide the width {dims['hidden']}")
    if a.patch:
        dims["patch"] = parse_triple(a.patch, "--patch")
    if a.latent_channels:
        dims["in_channels"] = a.latent_channels
    if a.compression:
        compression = parse_triple(a.compression, "--compression")
    if a.video:
        video = parse_video(a.video)
    if a.video or a.compression:
        latent = latent_size(video or tuple(x * f for x, f in zip(latent, compression, strict=True)), compression)
    latent = (a.frames or latent[0], a.height or latent[1], a.width or latent[2])
    batch, steps = a.batch or batch, a.steps or steps
    dtype = a.dtype or dtype
    fsdp, sequence = a.fsdp or fsdp or a.chips, a.sequence or sequence
    if a.chips % (fsdp * sequence):
        raise ConfigError(f"--chips {a.chips} is not a multiple of fsdp {fsdp} × sequence {sequence}")
    pt, ph, pw = dims["patch"]
    if latent[0] % pt or latent[1] % ph or latent[2] % pw:
        raise ConfigError(f"the latent {latent[0]}×{latent[1]}×{latent[2]} is not divisible by the patch "
                          f"{pt}×{ph}×{pw}")

    chip = CHIPS[a.chip]
    depth, hidden = dims["depth"], dims["hidden"]
    rest = {k: v for k, v in dims.items() if k not in ("depth", "hidden")}  # patch, caption and input sizes
    e = estimate(depth, hidden, *latent, **rest, heads=heads)
    parts = flops_breakdown(depth, hidden, *latent, **rest)
    dit = forward_flops(depth, hidden, *latent, temporal=False, **rest)[1] * 3
    T, S = latent[0] // pt, (latent[1] // ph) * (latent[2] // pw)

    print(f"model          {e.params / 1e6:,.1f} M parameters ({name}; STDiT, depth {dims['depth']}, "
          f"width {dims['hidden']}, {heads} heads)")
    if video:
        print(f"video          {video[0]}×{video[1]}×{video[2]} pixels -> latent {latent[0]}×{latent[1]}×{latent[2]}"
              f"×{dims['in_channels']} (VAE {compression[0]}×{compression[1]}×{compression[2]})")
    print(f"tokens         {e.tokens_per_sample:,} per sample ({latent[0]}×{latent[1]}×{latent[2]} latent, "
          f"patch {dims['patch']}: {T} frames × {S} per frame)")
    fwd = sum(v for k, v in parts.items() if k != "quadratic")
    split = ", ".join(f"{k} {v / fwd:.0%}" for k, v in parts.items() if k != "quadratic")
    print(f"train FLOPs    {e.train_flops_per_sample / 1e12:,.3f} TFLOP per sample ({split}; "
          f"{e.attention_share:.0%} in attention scores)")
    print(f"               a full-attention DiT of the same size: {dit / 1e12:,.3f} TFLOP per sample "
          f"({dit / e.train_flops_per_sample:.2f}× STDiT)")

    ranks = a.chips // sequence  # chips holding different samples
    per_chip = batch / ranks
    mem = memory_per_chip(e.params, depth, hidden, heads, *latent, **rest, samples_per_chip=per_chip, fsdp=fsdp,
                          sequence=sequence, compute_bytes=2 if dtype == "bfloat16" else 4, flash=a.flash)
    hbm = chip["hbm_gib"] * GiB
    print(f"memory/chip    mesh fsdp {fsdp} × sequence {sequence} × data {a.chips // (fsdp * sequence)}; "
          f"{per_chip:g} sample(s) per chip; {dtype} activations"
          f"{', flash attention' if a.flash else ''}; {a.chip} has {chip['hbm_gib']} GiB")
    print(f"  weights      {_gib(mem.weights)} (fp32 parameters, EMA, AdamW moments, gradients ÷ fsdp)")
    print(f"  inputs       {_gib(mem.inputs)}")
    for remat in ("none", "full"):
        tot = mem.total(remat)
        act_per_sample = mem.activations[remat] / max(per_chip, 1e-9)
        room = (hbm - mem.weights - mem.inputs / max(per_chip, 1e-9)) / (act_per_sample + mem.inputs / max(per_chip,
                                                                                                        1e-9))
        print(f"  remat {remat:<6} activations {_gib(mem.activations[remat])}, total {_gib(tot)}: "
              f"{'fits' if tot <= hbm else 'does NOT fit'} ({tot / hbm:.0%} of HBM; at most "
              f"{max(0, math.floor(room))} sample(s) per chip)")

    peak = CHIP_PEAK_TFLOPS[a.chip] * 1e12
    step_s = e.step_flops(batch) / (a.chips * peak * a.mfu)
    print(f"step           {e.step_flops(batch) / 1e15:,.3f} PFLOP at batch {batch}: {step_s:,.3f} s "
          f"({1 / step_s:,.2f} steps/s) on {a.chips}× {a.chip} at an assumed {a.mfu:.1%} MFU")
    if a.days:
        samples = a.days * 86400 / step_s * batch
        print(f"budget         {a.days:g} days on {a.chips}× {a.chip} ({a.days * a.chips:,.0f} chip-days): "
              f"{samples / 1e6:,.2f} M samples ({samples * e.tokens_per_sample / 1e12:,.2f} T tokens)")
        return 0
    hours = step_s * steps / 3600
    line = (f"run            {steps:,} steps: {hours:,.2f} h, {hours * a.chips:,.1f} {a.chip}-hours "
            f"({hours * a.chips / 24:,.1f} chip-days)")
    if a.dollars_per_chip_hour:
        line += f", ${hours * a.chips * a.dollars_per_chip_hour:,.0f}"
    print(line)
    return 0


if __name__ == "__main__":
    from vidjax import cli

    cli.run("vidjax.estimate", main)
