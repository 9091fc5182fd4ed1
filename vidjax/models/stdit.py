"""STDiT: the spatial-temporal diffusion transformer of Open-Sora v1.0, in Flax NNX.

Each block runs, on tokens ``x: [B, T, S, C]``:
  1. spatial self-attention within each frame   (``(B T) S C``), adaLN-modulated, gated by ``g1``;
  2. temporal self-attention at each position    (``(B S) T C``), no norm, no modulation,
     re-using ``g1``; its output projection starts at zero, so an image model loads as-is;
     the temporal position embedding is added to its input in block 0 only (or, with
     ``temporal_pos="input"``, to every token once after patch embedding);
  3. cross-attention from all tokens to the caption (``B (T S) C``), ungated; the caption
     mask is a dense key mask, equivalent to xformers' block-diagonal packing;
  4. an adaLN-modulated MLP, gated by ``g2``.
The timestep drives modulation through one shared ``t_block`` (adaLN-single); the final
layer is modulated by ``t`` itself, not by ``t_block(t)``.
Optional STDiT3 features (Open-Sora v1.2): RMS qk-norm, temporal RoPE, fps conditioning.

Sections: (1) config and named sizes, (2) pieces shared with the DiT baselines (block
stacking, adaLN chunks, final layer, unpatchify), (3) the STDiT block, (4) the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vidjax.models.layers import (
    LINEAR_PRODUCT,
    Buffer,
    CaptionEmbedder,
    CrossAttention,
    Mlp,
    PatchEmbed3D,
    SelfAttention,
    TimestepEmbedder,
    constrain,
    gate,
    layer_norm,
    linear,
    modulate,
    normal02,
    sincos_2d,
    sincos_temporal,
    zeros,
)
from vidjax.parallel import sequence

Array = jax.Array
# activation layouts of x [B, T, S, C] (logical names; vidjax.parallel.rules maps them to mesh axes)
ACT = ("batch", "frames", None, "act_embed")  # T split: whole frames per chip (DSP, Ulysses)
ACT_TOKENS = ("batch", None, "tokens", "act_embed")  # S split: all frames of a position per chip (ring)
QKV_FRAMES = ("batch", "frames", None, "heads", None)  # q/k/v [B, T, S, H, D] with T split
QKV_TOKENS = ("batch", None, "tokens", "heads", None)  # q/k/v with S split
SEQUENCE_PARALLEL = ("dsp", "ulysses", "allgather", "ring")

# --------------------------------------------------------------------------------------
# 1. Config and named sizes
# --------------------------------------------------------------------------------------

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # save nothing inside a block: recompute all of it in the backward pass
    # keep the weight matmuls (the linear layers' products carry a name: their custom VJP hides the dot)
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        jax.checkpoint_policies.save_only_these_names(LINEAR_PRODUCT)),
}
FREEZE_OPTIONS = ("not_temporal", "text", "temporal")


@dataclasses.dataclass(frozen=True)
class STDiTConfig:
    depth: int = 28
    hidden: int = 1152
    heads: int = 16
    mlp_ratio: float = 4.0
    patch: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 4
    learn_sigma: bool = True  # out_channels = 2 * in_channels (eps + variance interpolation)
    caption_channels: int = 4096
    model_max_length: int = 120
    space_scale: float = 1.0  # 0.5 at 256px, 1.0 at 512px
    time_scale: float = 1.0  # 1.0 at 16 frames, 2/3 at 64 frames
    # None | "not_temporal" (train attn_temp only) | "text" (freeze cross_attn) | "temporal" (freeze attn_temp:
    # an image model, PixArt per frame, while the zero-initialised temporal attention stays zero)
    freeze: str | None = None
    # STDiT3 options (reference §2), all off in Open-Sora v1.0
    qk_norm: bool = False  # RMSNorm on q and k (eps 1e-6), before RoPE
    temporal_rope: bool = False  # interleaved-pair RoPE, theta 1e4, on temporal attention
    fps_conditioning: bool = False  # t += fps_embedder(fps)
    # where the temporal sincos embedding goes: "block0" (Open-Sora v1.0: the input of block 0's temporal
    # attention only) or "input" (added to every token after patch embedding, as Latte does, so every layer
    # knows which frame it is in; helps tiny models from scratch, no new parameters)
    temporal_pos: str = "block0"
    # numerics and memory
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"  # none | full | dots
    scan_layers: bool = True  # one nnx.scan over the blocks (fast compile) or unrolled (faster step; scan_blocks)
    skips: bool = False  # U-ViT's long skip connections between shallow and deep blocks (concatenate + linear)
    attention_impl: str = "xla"
    # how activations are split when the mesh has sequence > 1 (vidjax.parallel.sequence); no-op otherwise
    sequence_parallel: str = "auto"  # auto (= dsp) | dsp | ulysses | allgather | ring

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"model.hidden={self.hidden} is not divisible by model.heads={self.heads}")
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}; expected none, full or dots")
        if self.temporal_pos not in ("block0", "input"):
            raise ValueError(f"model.temporal_pos={self.temporal_pos!r}; expected block0 or input")
        if self.freeze_mode not in (None, *FREEZE_OPTIONS):
            raise ValueError(f"model.freeze={self.freeze!r}; expected none, not_temporal, text or temporal")
        if self.sequence_parallel not in ("auto", *SEQUENCE_PARALLEL):
            raise ValueError(f"model.sequence_parallel={self.sequence_parallel!r}; expected auto, dsp, ulysses, "
                             "allgather or ring")

    @property
    def sp_scheme(self) -> str:
        """The sequence-parallel scheme (``auto`` resolved): dsp for STDiT."""
        return "dsp" if self.sequence_parallel == "auto" else self.sequence_parallel

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def freeze_mode(self) -> str | None:
        return None if self.freeze in (None, "", "none") else self.freeze


STDIT_SIZES: dict[str, dict[str, Any]] = {
    "STDiT-XL/2": dict(depth=28, hidden=1152, heads=16, patch=(1, 2, 2)),
    "STDiT-B/2": dict(depth=12, hidden=768, heads=12, patch=(1, 2, 2)),
    "STDiT-S/2": dict(depth=12, hidden=384, heads=6, patch=(1, 2, 2)),
}


def sized_config(cls, sizes: dict[str, dict[str, Any]], size: str | None, overrides: dict):
    """A config dataclass from a named size (``None``: the class defaults) plus field overrides."""
    if size is not None and size not in sizes:
        raise ValueError(f"model.size={size!r}; expected one of {sorted(sizes)}")
    base = {} if size is None else dict(sizes[size])
    base.update(overrides)
    if "patch" in base:
        base["patch"] = tuple(base["patch"])
    return cls(**base)


def stdit_config(size: str | None = None, **overrides) -> STDiTConfig:
    """``stdit_config("STDiT-XL/2", space_scale=0.5)``; ``size=None`` gives the defaults (XL/2)."""
    return sized_config(STDiTConfig, STDIT_SIZES, size, overrides)


def trainable_filter(freeze: str | None = None) -> nnx.filterlib.Filter:
    """The nnx filter of trained parameters (Open-Sora ``freeze_not_temporal`` / ``freeze_text``).

    Buffers (``y_embedding``) are never trained. ``"text"`` freezes ``cross_attn``, as in v1.0; ``"temporal"``
    freezes ``attn_temp`` (the image stage of a three-stage schedule: its temporal attention stays at its zero
    initialisation, so the model is an image model applied frame by frame).
    """
    if freeze in (None, "", "none"):
        return nnx.Param
    if freeze == "not_temporal":
        return nnx.All(nnx.Param, nnx.PathContains("attn_temp"))
    if freeze == "text":
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("cross_attn")))
    if freeze == "temporal":
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("attn_temp")))
    raise ValueError(f"model.freeze={freeze!r}; expected none, not_temporal, text or temporal")


def count_params(model: nnx.Module, filter: nnx.filterlib.Filter = nnx.Param) -> int:
    """Parameters selected by ``filter`` (default all ``nnx.Param``; buffers are not counted)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, filter)))


# --------------------------------------------------------------------------------------
# 2. Pieces shared with the DiT baselines (vidjax.models.dit)
# --------------------------------------------------------------------------------------


def stack_blocks(make: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` blocks built by ``make`` with their parameters stacked on a leading ``layers`` axis."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs: nnx.Rngs) -> nnx.Module:
        return make(rngs)

    return build(rngs)


def scan_blocks(blocks: nnx.Module | tuple[nnx.Module, ...], x: Array, step: Callable, depth: int, remat: str,
                scan: bool = True, skips: nnx.Module | None = None) -> Array:
    """``x = step(block_i, x, i)`` for i < depth over blocks stacked on a leading ``layers`` axis.

    ``blocks`` may be a tuple of stacks walked together (STDiT3's spatial and temporal blocks); ``step``
    then gets a tuple. ``scan=True`` runs one ``nnx.scan``: one block is traced and compiled whatever
    the depth. ``scan=False`` (MaxText's ``scan_layers=False``) unrolls the stack in Python: compile
    time grows with depth, but the backward pass reads each block's saved activations directly instead
    of through stacked buffers that a scan zero-fills, writes and slices every step. The numerics are
    the same. ``remat`` wraps each block (``none`` | ``full`` | ``dots``).

    ``skips``: U-ViT's long skip connections, ``depth // 2`` stacked ``Linear(2C -> C)``. The output of each
    of the first ``depth // 2`` blocks is kept; block ``depth - 1 - k`` starts from
    ``skips[k](concat(x, kept_k))`` (a middle block, for odd depth, has none).
    """
    if remat != "none" and remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r}; expected none, full or dots")

    def walk(x, part, first: int, count: int, keep: bool = False, lins=None, kept=None):
        """blocks ``first .. first + count - 1`` (the stack ``part``), optionally with skip inputs."""

        def body(x, block, i, *skip):
            if skip:
                lin, s = skip
                x = lin(jnp.concatenate([x, s], axis=-1))
            x = step(block, x, i)
            return x, (x if keep else None)

        if remat != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
        extra = () if lins is None else (lins, kept)
        if scan:
            axes = (nnx.Carry, 0, 0) + (0,) * len(extra)
            return nnx.scan(body, in_axes=axes, out_axes=(nnx.Carry, 0))(x, part, first + jnp.arange(count), *extra)
        graphdef, stacked = nnx.split(part)
        lin_def, lin_stacked = nnx.split(lins) if lins is not None else (None, None)
        outs = []
        for k in range(count):
            block = nnx.merge(graphdef, jax.tree.map(lambda p, k=k: p[k], stacked))
            skip = () if lins is None else (nnx.merge(lin_def, jax.tree.map(lambda p, k=k: p[k], lin_stacked)),
                                            kept[k])
            x, out = body(x, block, jnp.asarray(first + k), *skip)
            outs.append(out)
        return x, outs

    if skips is None:
        return walk(x, blocks, 0, depth)[0]
    half = depth // 2
    graphdef, stacked = nnx.split(blocks)

    def part(a: int, b: int):
        return nnx.merge(graphdef, jax.tree.map(lambda p: p[a:b], stacked))

    x, kept = walk(x, part(0, half), 0, half, keep=True)  # kept: [half, ...] (scan) or a list
    if depth - 2 * half:
        x, _ = walk(x, part(half, depth - half), half, depth - 2 * half)
    return walk(x, part(depth - half, depth), depth - half, half, lins=skips, kept=kept[::-1])[0]


def long_skips(hidden: int, depth: int, rngs: nnx.Rngs, *, dtype=None) -> nnx.Module | None:
    """U-ViT's skip projections for ``depth`` blocks: ``depth // 2`` stacked ``Linear(2C -> C)`` (N(0, 0.02)
    weights, zero bias, as U-ViT initialises its linears); None below depth 2."""
    if depth < 2:
        return None
    return stack_blocks(lambda r: linear(2 * hidden, hidden, ("mlp", "embed"), r, init=normal02, dtype=dtype),
                        depth // 2, rngs)


def adaln_chunks(mod: Array, n: int) -> tuple[Array, ...]:
    """mod: [B, n·C] or [B, n, C] -> n arrays [B, 1, 1, C] (shift, scale, gate, ...)."""
    if mod.ndim == 2:
        mod = rearrange(mod, "b (n c) -> b n c", n=n)
    return tuple(rearrange(m, "b c -> b 1 1 c") for m in jnp.moveaxis(mod, 1, 0))


class FinalLayer(nnx.Module):
    """LayerNorm, modulation by a conditioning vector, and a zero-initialised linear to patch values.

    x: [B, T, S, C], c: [B, C] (STDiT: ``t``, not ``t0``) -> [B, T, S, pt·ph·pw·C_out].
    ``scale_shift_table`` [2, C] holds (shift, scale) offsets, as in PixArt's ``T2IFinalLayer``.
    """

    def __init__(self, hidden: int, patch_values: int, rngs: nnx.Rngs, *, dtype=None):
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (2, hidden)) / hidden**0.5,
                                           sharding=(None, "embed"))
        self.linear = linear(hidden, patch_values, ("embed", None), rngs, init=zeros, dtype=dtype)

    def __call__(self, x: Array, c: Array) -> Array:
        shift, scale = adaln_chunks(self.scale_shift_table[...][None].astype(x.dtype) + c[:, None], 2)
        return self.linear(modulate(layer_norm(x), shift, scale))


def unpatchify(x: Array, patch: tuple[int, int, int], grid_h: int) -> Array:
    """[B, T', S, (pt ph pw c)] -> [B, T'·pt, H'·ph, W'·pw, c] in float32."""
    pt, ph, pw = patch
    x = rearrange(x, "b t (h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c", h=grid_h, pt=pt, ph=ph, pw=pw)
    return x.astype(jnp.float32)


def patch_grid(shape: tuple[int, ...], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T', H', W') for an input [B, T, H, W, C]; the sizes must be multiples of the patch."""
    _, T, H, W, _ = shape
    pt, ph, pw = patch
    if T % pt or H % ph or W % pw:
        raise ValueError(f"input of {T} frames × {H}×{W} is not divisible by the patch size {tuple(patch)}")
    return T // pt, H // ph, W // pw


# --------------------------------------------------------------------------------------
# 3. The STDiT block
# --------------------------------------------------------------------------------------


class STDiTBlock(nnx.Module):
    """One STDiT block. x: [B, T, S, C], y: [B, L, C], mask: [B, L] | None, t0: [B, 6C], tpe: [T, C]."""

    def __init__(self, cfg: STDiTConfig, rngs: nnx.Rngs):
        C, kw = cfg.hidden, dict(dtype=cfg.compute_dtype, impl=cfg.attention_impl)
        self.scheme = cfg.sp_scheme
        # sequence parallelism (no-op off-mesh): DSP switches T-split <-> S-split around temporal attention;
        # Ulysses (the structure-unaware baseline) exchanges heads <-> frames inside both attentions;
        # all-gather keeps whole frames per chip and gathers temporal attention's K/V over the frames;
        # ring keeps S split everywhere and rings K/V in spatial attention (temporal attention is then local).
        spatial_sp, temporal_sp = {"dsp": (None, None), "ulysses": ("ulysses", "ulysses"),
                                   "allgather": (None, "allgather"), "ring": ("ring", None)}[self.scheme]
        layout = QKV_TOKENS if self.scheme == "ring" else QKV_FRAMES
        self.attn = SelfAttention(C, cfg.heads, rngs, axis="spatial", qk_norm=cfg.qk_norm, seq_parallel=spatial_sp,
                                  layout=layout, **kw)
        self.attn_temp = SelfAttention(C, cfg.heads, rngs, axis="temporal", qk_norm=cfg.qk_norm,
                                       rope=cfg.temporal_rope, seq_parallel=temporal_sp, layout=layout, **kw)
        self.cross_attn = CrossAttention(C, cfg.heads, rngs, **kw)  # proj zero-initialised
        self.mlp = Mlp(C, int(C * cfg.mlp_ratio), C, rngs, dtype=cfg.compute_dtype)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (6, C)) / C**0.5, sharding=(None, "embed"))
        # temporal zero-init (Open-Sora initialize_temporal): at init the block is PixArt applied per frame
        self.attn_temp.proj.kernel[...] = jnp.zeros_like(self.attn_temp.proj.kernel[...])

    def __call__(self, x: Array, y: Array, mask: Array | None, t0: Array, tpe: Array) -> Array:
        T, S = x.shape[1], x.shape[2]
        act = ACT_TOKENS if self.scheme == "ring" else ACT
        mod = self.scale_shift_table[...][None].astype(x.dtype) + rearrange(t0, "b (six c) -> b six c", six=6)
        sh1, sc1, g1, sh2, sc2, g2 = adaln_chunks(mod, 6)  # each [B, 1, 1, C]

        # spatial attention within each frame
        x = x + gate(g1, self.attn(modulate(layer_norm(x), sh1, sc1)))  # [B, T, S, C]
        x = constrain(x, act)

        # temporal attention at each position: raw residual, no norm, no modulation, re-uses g1
        tpe = rearrange(tpe, "t c -> 1 t 1 c")
        if self.scheme == "dsp":  # one all-to-all to S-split, one back (identity off-mesh)
            xt = sequence.split_tokens(x)  # [B, T, S', C], all frames of a position per chip
            xt = xt + gate(g1, self.attn_temp(xt + tpe))
            x = sequence.split_frames(xt, S)  # [B, T, S, C], whole frames per chip
        else:
            x = x + gate(g1, self.attn_temp(x + tpe))  # [B, T, S, C]
        x = constrain(x, act)

        # cross-attention to the caption, over all tokens of the clip, ungated; queries are independent, so
        # they are flattened with the split axis major and no chip needs another's tokens
        order = "(s t)" if self.scheme == "ring" else "(t s)"
        h = self.cross_attn(rearrange(x, f"b t s c -> b {order} c"), y, mask)  # [B, T·S, C]
        x = x + rearrange(h, f"b {order} c -> b t s c", t=T)

        # MLP
        x = x + gate(g2, self.mlp(modulate(layer_norm(x), sh2, sc2)))
        return constrain(x, act)


# --------------------------------------------------------------------------------------
# 4. The model
# --------------------------------------------------------------------------------------


class STDiT(nnx.Module):
    """Open-Sora v1.0 STDiT.

    x: [B, T, H, W, C_in] (channels last), t: [B] on the 0..1000 scale,
    y: [B, L, C_text] caption states, mask: [B, L] (True = real token) or None (all real),
    drop: [B] bool (replace the caption by the null ``y_embedding``) or None,
    fps: [B] (only with ``fps_conditioning``).
    Returns [B, T, H, W, C_out] in float32.

    Parameter names follow Open-Sora's state_dict (``vidjax.interop`` holds the exact map).
    The ``pos_embed`` / ``pos_embed_temporal`` buffers are not stored: they are recomputed
    for the grid of each input, as Open-Sora does when it loads a checkpoint.
    """

    def __init__(self, cfg: STDiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C, dt = cfg.hidden, cfg.compute_dtype
        self.x_embedder = PatchEmbed3D(cfg.patch, cfg.in_channels, C, rngs, dtype=dt)
        self.t_embedder = TimestepEmbedder(C, rngs, dtype=dt)
        self.t_block = linear(C, 6 * C, ("embed", "mlp"), rngs, init=normal02, dtype=dt)  # Sequential(SiLU, Linear)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.model_max_length, rngs, dtype=dt)
        self.fps_embedder = TimestepEmbedder(C, rngs, dtype=dt) if cfg.fps_conditioning else None
        if self.fps_embedder is not None:  # STDiT3: the fps branch starts at zero
            for p in (self.fps_embedder.mlp.fc2.kernel, self.fps_embedder.mlp.fc2.bias):
                p[...] = jnp.zeros_like(p[...])
        self.blocks = stack_blocks(lambda r: STDiTBlock(cfg, r), cfg.depth, rngs)
        self.skip_linears = long_skips(C, cfg.depth, rngs, dtype=dt) if cfg.skips else None
        self.final_layer = FinalLayer(C, int(np.prod(cfg.patch)) * cfg.out_channels, rngs, dtype=dt)

    # fixed position tables (float64 numpy, MAE convention), recomputed for the input's grid
    def pos_embed(self, grid_h: int, grid_w: int) -> np.ndarray:
        """[H'·W', C]; the first C/2 channels encode the column w."""
        return sincos_2d(self.cfg.hidden, grid_h, grid_w, scale=self.cfg.space_scale).astype(np.float32)

    def pos_embed_temporal(self, frames: int) -> np.ndarray:
        """[T', C] from positions ``arange(T') / time_scale``."""
        return sincos_temporal(self.cfg.hidden, frames, scale=self.cfg.time_scale).astype(np.float32)

    def trainable(self) -> nnx.filterlib.Filter:
        """Filter of the parameters to optimise under ``cfg.freeze``."""
        return trainable_filter(self.cfg.freeze)

    def __call__(self, x: Array, t: Array, y: Array, mask: Array | None = None, drop: Array | None = None,
                 fps: Array | None = None) -> Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        gt, gh, gw = patch_grid(x.shape, cfg.patch)

        scheme = cfg.sp_scheme
        if scheme == "ring":  # S split everywhere; one-line errors off-mesh are skipped (1 shard)
            sequence.check_divisible("tokens per frame", gh * gw, hint="ring attention needs equal blocks")
        else:  # T split (S is padded for DSP's temporal phase)
            sequence.check_divisible("latent frames", gt, hint=f"latent frames = data frames / VAE and patch "
                                                                f"stride {cfg.patch[0]}")
        x = self.x_embedder(x.astype(dt))  # [B, T', S, C]
        x = x + jnp.asarray(self.pos_embed(gh, gw), dt)[None, None]
        x = constrain(x, ACT_TOKENS if scheme == "ring" else ACT)

        t = self.t_embedder(t.astype(dt))  # [B, C]; the timestep is rounded to the model dtype first
        if self.fps_embedder is not None:
            if fps is None:
                raise ValueError("model.fps_conditioning=True: pass fps [B] to the model")
            t = t + self.fps_embedder(jnp.asarray(fps, jnp.float32))
        t0 = self.t_block(jax.nn.silu(t))  # [B, 6C]
        y = self.y_embedder(y.astype(dt), drop)  # [B, L, C]
        mask = None if mask is None else mask.astype(bool)

        tpe = jnp.asarray(self.pos_embed_temporal(gt), dt)  # [T', C]
        if cfg.temporal_pos == "input":  # into the tokens once; blocks then get none
            x = x + rearrange(tpe, "t c -> 1 t 1 c")
            tpe = jnp.zeros_like(tpe)

        def step(block: STDiTBlock, x: Array, i: Array) -> Array:
            return block(x, y, mask, t0, tpe * (i == 0).astype(dt))  # temporal pos-emb in block 0 only

        x = scan_blocks(self.blocks, x, step, cfg.depth, cfg.remat, cfg.scan_layers, self.skip_linears)  # [B, T', S, C]
        x = self.final_layer(x, t)  # [B, T', S, pt·ph·pw·C_out], modulated by t, not t0
        return unpatchify(x, cfg.patch, gh)


__all__ = [
    "STDiT", "STDiTBlock", "STDiTConfig", "STDIT_SIZES", "stdit_config", "count_params", "trainable_filter",
    "FinalLayer", "stack_blocks", "ACT", "ACT_TOKENS", "SEQUENCE_PARALLEL",
    "scan_blocks", "long_skips", "adaln_chunks", "unpatchify", "patch_grid", "Buffer",
]
