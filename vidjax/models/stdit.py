"""STDiT: the spatial-temporal diffusion transformer of Open-Sora v1.0, in Flax NNX.

Each block runs, on tokens ``x: [B, T, S, C]``:
  1. spatial self-attention within each frame   (``(B T) S C``), adaLN-modulated, gated by ``g1``;
  2. temporal self-attention at each position    (``(B S) T C``), no norm, no modulation,
     re-using ``g1``; its output projection starts at zero, so an image model loads as-is;
  3. cross-attention from all tokens to the caption (``B (T S) C``), ungated;
  4. an adaLN-modulated MLP, gated by ``g2``.
The timestep drives modulation through one shared ``t_block`` (adaLN-single).
Optional STDiT3 features: RMS qk-norm and temporal RoPE.

Sections: (1) config and named sizes, (2) block, (3) final layer, (4) the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vidjax.models.layers import (
    Buffer,
    CaptionEmbedder,
    CrossAttention,
    Mlp,
    PatchEmbed3D,
    SelfAttention,
    TimestepEmbedder,
    constrain,
    layer_norm,
    linear,
    modulate,
    normal02,
    sincos_2d,
    sincos_temporal,
    zeros,
)

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config and named sizes
# --------------------------------------------------------------------------------------


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
    space_scale: float = 1.0
    time_scale: float = 1.0
    # STDiT3 options
    qk_norm: bool = False
    temporal_rope: bool = False
    # numerics and memory
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"  # none | full | dots
    attention_impl: str = "xla"

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


STDIT_SIZES: dict[str, dict[str, Any]] = {
    "STDiT-XL/2": dict(depth=28, hidden=1152, heads=16, patch=(1, 2, 2)),
    "STDiT-B/2": dict(depth=12, hidden=768, heads=12, patch=(1, 2, 2)),
    "STDiT-S/2": dict(depth=12, hidden=384, heads=6, patch=(1, 2, 2)),
}


def stdit_config(size: str | None = None, **overrides) -> STDiTConfig:
    """``stdit_config("STDiT-XL/2", in_channels=4)``; ``size=None`` gives the defaults (XL/2)."""
    base = {} if size is None else dict(STDIT_SIZES[size])
    base.update(overrides)
    if "patch" in base:
        base["patch"] = tuple(base["patch"])
    return STDiTConfig(**base)


REMAT_POLICIES = {
    "full": None,  # save nothing inside a block
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# --------------------------------------------------------------------------------------
# 2. Block
# --------------------------------------------------------------------------------------


class STDiTBlock(nnx.Module):
    """One STDiT block. x: [B, T, S, C], y: [B, L, C], mask: [B, L], t0: [B, 6C], tpe: [T, C]."""

    def __init__(self, cfg: STDiTConfig, rngs: nnx.Rngs):
        C, kw = cfg.hidden, dict(dtype=cfg.compute_dtype)
        self.hidden = C
        self.attn = SelfAttention(C, cfg.heads, rngs, axis="spatial", qk_norm=cfg.qk_norm,
                                  impl=cfg.attention_impl, **kw)
        self.attn_temp = SelfAttention(C, cfg.heads, rngs, axis="temporal", qk_norm=cfg.qk_norm,
                                       rope=cfg.temporal_rope, impl=cfg.attention_impl, **kw)
        # zero-initialised temporal projection: at init the block is PixArt applied per frame
        self.attn_temp.proj.kernel[...] = jnp.zeros_like(self.attn_temp.proj.kernel[...])
        self.cross_attn = CrossAttention(C, cfg.heads, rngs, impl=cfg.attention_impl, **kw)
        self.mlp = Mlp(C, int(C * cfg.mlp_ratio), C, rngs, **kw)
        table = jax.random.normal(rngs.params(), (6, C)) / C**0.5
        self.scale_shift_table = nnx.Param(table, sharding=(None, "embed"))

    def __call__(self, x: Array, y: Array, mask: Array, t0: Array, tpe: Array) -> Array:
        T = x.shape[1]
        mod = self.scale_shift_table[...][None].astype(x.dtype) + rearrange(t0, "b (six c) -> b six c", six=6)
        sh1, sc1, g1, sh2, sc2, g2 = (rearrange(m, "b c -> b 1 1 c") for m in jnp.moveaxis(mod, 1, 0))

        # spatial attention within each frame
        x = x + g1 * self.attn(modulate(layer_norm(x), sh1, sc1))
        x = constrain(x, ("batch", "frames", "tokens", "act_embed"))

        # temporal attention at each position: raw residual, temporal pos-emb only in block 0
        x = x + g1 * self.attn_temp(x + rearrange(tpe, "t c -> 1 t 1 c"))
        x = constrain(x, ("batch", "frames", "tokens", "act_embed"))

        # cross-attention to the caption, over all tokens of the clip
        h = self.cross_attn(rearrange(x, "b t s c -> b (t s) c"), y, mask)
        x = x + rearrange(h, "b (t s) c -> b t s c", t=T)

        # MLP
        x = x + g2 * self.mlp(modulate(layer_norm(x), sh2, sc2))
        return constrain(x, ("batch", "frames", "tokens", "act_embed"))


# --------------------------------------------------------------------------------------
# 3. Final layer
# --------------------------------------------------------------------------------------


class FinalLayer(nnx.Module):
    """LayerNorm, modulation by ``t`` (not ``t0``), and a zero-initialised linear to patch values.

    x: [B, T, S, C], t: [B, C] -> [B, T, S, pt·ph·pw·C_out].
    """

    def __init__(self, hidden: int, patch_values: int, rngs: nnx.Rngs, *, dtype=None):
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (2, hidden)) / hidden**0.5,
                                           sharding=(None, "embed"))
        self.linear = linear(hidden, patch_values, ("embed", None), rngs, init=zeros, dtype=dtype)

    def __call__(self, x: Array, t: Array) -> Array:
        mod = self.scale_shift_table[...][None].astype(x.dtype) + t[:, None]  # [B, 2, C]
        shift, scale = rearrange(mod[:, 0], "b c -> b 1 1 c"), rearrange(mod[:, 1], "b c -> b 1 1 c")
        return self.linear(modulate(layer_norm(x), shift, scale))


# --------------------------------------------------------------------------------------
# 4. The model
# --------------------------------------------------------------------------------------


class STDiT(nnx.Module):
    """Open-Sora v1.0 STDiT.

    x: [B, T, H, W, C_in] (channels last), t: [B] on the 0..1000 scale,
    y: [B, L, C_text] caption states, mask: [B, L] (True = real token),
    drop: [B] bool (replace the caption by the null ``y_embedding``) or None.
    Returns [B, T, H, W, C_out] in float32.
    """

    def __init__(self, cfg: STDiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C, dt = cfg.hidden, cfg.compute_dtype
        self.x_embedder = PatchEmbed3D(cfg.patch, cfg.in_channels, C, rngs, dtype=dt)
        self.t_embedder = TimestepEmbedder(C, rngs, dtype=dt)
        self.t_block = linear(C, 6 * C, ("embed", "mlp"), rngs, init=normal02, dtype=dt)  # Sequential(SiLU, Linear)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.model_max_length, rngs, dtype=dt)

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> STDiTBlock:
            return STDiTBlock(cfg, rngs)

        self.blocks = make_blocks(rngs)
        self.final_layer = FinalLayer(C, int(np.prod(cfg.patch)) * cfg.out_channels, rngs, dtype=dt)

    # fixed position tables, recomputed for whatever grid the input has
    def pos_embed(self, grid_h: int, grid_w: int) -> np.ndarray:
        return sincos_2d(self.cfg.hidden, grid_h, grid_w, scale=self.cfg.space_scale).astype(np.float32)

    def pos_embed_temporal(self, frames: int) -> np.ndarray:
        return sincos_temporal(self.cfg.hidden, frames, scale=self.cfg.time_scale).astype(np.float32)

    def __call__(self, x: Array, t: Array, y: Array, mask: Array, drop: Array | None = None) -> Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        B, T, H, W, _ = x.shape
        pt, ph, pw = cfg.patch
        if T % pt or H % ph or W % pw:
            raise ValueError(f"input of {T} frames × {H}×{W} is not divisible by the patch size {cfg.patch}")
        gt, gh, gw = T // pt, H // ph, W // pw

        x = self.x_embedder(x.astype(dt))  # [B, T', S, C]
        x = x + jnp.asarray(self.pos_embed(gh, gw), dt)[None, None]
        x = constrain(x, ("batch", "frames", "tokens", "act_embed"))

        t = self.t_embedder(t.astype(dt))  # [B, C]
        t0 = self.t_block(jax.nn.silu(t))  # [B, 6C]
        y = self.y_embedder(y.astype(dt), drop)  # [B, L, C]
        mask = mask.astype(bool)

        tpe = jnp.asarray(self.pos_embed_temporal(gt), dt)
        first = jnp.arange(cfg.depth) == 0  # temporal pos-emb goes into block 0 only

        def body(x, block: STDiTBlock, is_first):
            return block(x, y, mask, t0, tpe * is_first.astype(dt)), None

        if cfg.remat != "none":
            if cfg.remat not in REMAT_POLICIES:
                raise ValueError(f"model.remat={cfg.remat!r}; expected none, full or dots")
            body = nnx.remat(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        x, _ = nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))(x, self.blocks, first)

        x = self.final_layer(x, t)  # [B, T', S, pt·ph·pw·C_out]
        x = rearrange(x, "b t (h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c", h=gh, pt=pt, ph=ph, pw=pw)
        return x.astype(jnp.float32)


def count_params(model: nnx.Module) -> int:
    """Trainable parameters (``nnx.Param``); buffers such as ``y_embedding`` are not counted."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["STDiT", "STDiTBlock", "STDiTConfig", "STDIT_SIZES", "stdit_config", "count_params", "Buffer"]
