"""Full-attention DiT baselines for video (early Open-Sora, reference §7 "E").

Every token of every frame attends to every other: x is held as one "frame" of all
N = T'·S tokens, ``[B, 1, N, C]``, so the same ``SelfAttention`` runs full attention.
Blocks are adaLN-Zero (per-block ``adaLN_modulation``: SiLU, Linear C->6C, zero-initialised)
conditioned on a vector ``c: [B, C]``. The caption enters in one of three ways:

- ``adaln``:        ``c = t + mean_L(y_embedder(y))`` over the caption's real tokens;
- ``cross-attn``:   ``c = t``; each block adds PixArt cross-attention to the caption after
                    its self-attention (E's block used cross-attention in place of self-attention;
                    here the baseline keeps full self-attention, as its name says);
- ``token-concat``: ``c = t``; the caption tokens are prepended to the video tokens, attended
                    with a key mask over caption padding, and dropped before the final layer.

Embeddings (patches, sincos positions, timestep, caption with the ``y_embedding`` null),
attention, MLP, modulation, block stacking and the final layer are STDiT's own.

Sections: (1) config and named sizes, (2) block, (3) the model.
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
    sincos_2d,
    sincos_temporal,
    zeros,
)
from vidjax.models.stdit import (
    FinalLayer,
    STDiTConfig,
    adaln_chunks,
    long_skips,
    patch_grid,
    scan_blocks,
    sized_config,
    stack_blocks,
    trainable_filter,
    unpatchify,
)

Array = jax.Array
ACT_FLAT = ("batch", None, "tokens", "act_embed")  # x [B, 1, N, C], the token axis split under sequence > 1
CONDITIONINGS = ("adaln", "cross-attn", "token-concat")

# --------------------------------------------------------------------------------------
# 1. Config and named sizes
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiTConfig(STDiTConfig):
    """STDiT's fields plus ``conditioning``; the temporal-only options do not apply.

    ``sequence_parallel``: ``auto`` (= ulysses), ``allgather`` or ``ring``, over the flat token axis.
    """

    conditioning: str = "cross-attn"  # adaln | cross-attn | token-concat

    @property
    def sp_scheme(self) -> str:
        return "ulysses" if self.sequence_parallel == "auto" else self.sequence_parallel

    def __post_init__(self):
        super().__post_init__()
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"model.conditioning={self.conditioning!r}; expected one of {CONDITIONINGS}")
        if self.sequence_parallel == "dsp":
            raise ValueError("model.sequence_parallel='dsp' needs factorized attention (STDiT); DiT takes ulysses, "
                             "allgather or ring")
        if self.temporal_rope or self.fps_conditioning or self.freeze_mode == "not_temporal":
            raise ValueError("DiT has no temporal attention: temporal_rope, fps_conditioning and "
                             "freeze='not_temporal' are STDiT options")


DIT_SIZES: dict[str, dict[str, Any]] = {
    "DiT-XL/2": dict(depth=28, hidden=1152, heads=16, patch=(1, 2, 2)),
    "DiT-B/2": dict(depth=12, hidden=768, heads=12, patch=(1, 2, 2)),
    "DiT-S/2": dict(depth=12, hidden=384, heads=6, patch=(1, 2, 2)),
}


def dit_config(size: str | None = None, **overrides) -> DiTConfig:
    """``dit_config("DiT-B/2", conditioning="token-concat")``; ``size=None`` gives the XL/2 defaults."""
    return sized_config(DiTConfig, DIT_SIZES, size, overrides)


# --------------------------------------------------------------------------------------
# 2. Block
# --------------------------------------------------------------------------------------


class DiTBlock(nnx.Module):
    """adaLN-Zero block over all tokens. x: [B, 1, N, C], c: [B, C], y: [B, L, C] (cross-attn only),
    mask: [B, L] caption mask, key_mask: [B, N] (token-concat) -> [B, 1, N, C]."""

    def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
        C, kw = cfg.hidden, dict(dtype=cfg.compute_dtype, impl=cfg.attention_impl)
        self.attn = SelfAttention(C, cfg.heads, rngs, axis="spatial", qk_norm=cfg.qk_norm, seq_parallel=cfg.sp_scheme,
                                  layout=("batch", None, "tokens", "heads", None), **kw)  # token axis split
        self.cross_attn = CrossAttention(C, cfg.heads, rngs, **kw) if cfg.conditioning == "cross-attn" else None
        self.mlp = Mlp(C, int(C * cfg.mlp_ratio), C, rngs, dtype=cfg.compute_dtype)
        self.adaLN_modulation = linear(C, 6 * C, ("embed", "mlp"), rngs, init=zeros, dtype=cfg.compute_dtype)

    def __call__(self, x: Array, c: Array, y: Array, mask: Array | None, key_mask: Array | None) -> Array:
        sh1, sc1, g1, sh2, sc2, g2 = adaln_chunks(self.adaLN_modulation(jax.nn.silu(c)), 6)  # each [B, 1, 1, C]
        x = x + gate(g1, self.attn(modulate(layer_norm(x), sh1, sc1), mask=key_mask))  # full attention
        if self.cross_attn is not None:
            x = x + self.cross_attn(x[:, 0], y, mask)[:, None]
        x = x + gate(g2, self.mlp(modulate(layer_norm(x), sh2, sc2)))
        return constrain(x, ACT_FLAT)


# --------------------------------------------------------------------------------------
# 3. The model
# --------------------------------------------------------------------------------------


class DiT(nnx.Module):
    """Full-attention video DiT with the STDiT call signature.

    x: [B, T, H, W, C_in], t: [B] (0..1000), y: [B, L, C_text], mask: [B, L] | None,
    drop: [B] bool | None -> [B, T, H, W, C_out] float32.
    """

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C, dt = cfg.hidden, cfg.compute_dtype
        self.x_embedder = PatchEmbed3D(cfg.patch, cfg.in_channels, C, rngs, dtype=dt)
        self.t_embedder = TimestepEmbedder(C, rngs, dtype=dt)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.model_max_length, rngs, dtype=dt)
        self.blocks = stack_blocks(lambda r: DiTBlock(cfg, r), cfg.depth, rngs)
        self.skip_linears = long_skips(C, cfg.depth, rngs, dtype=dt) if cfg.skips else None
        self.final_layer = FinalLayer(C, int(np.prod(cfg.patch)) * cfg.out_channels, rngs, dtype=dt)

    def pos_embed(self, frames: int, grid_h: int, grid_w: int) -> np.ndarray:
        """[T', H'·W', C]: the spatial 2D table plus the temporal 1D table."""
        cfg = self.cfg
        spatial = sincos_2d(cfg.hidden, grid_h, grid_w, scale=cfg.space_scale)
        temporal = sincos_temporal(cfg.hidden, frames, scale=cfg.time_scale)
        return (spatial[None] + temporal[:, None]).astype(np.float32)

    def trainable(self) -> nnx.filterlib.Filter:
        return trainable_filter(self.cfg.freeze)

    def __call__(self, x: Array, t: Array, y: Array, mask: Array | None = None, drop: Array | None = None) -> Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        gt, gh, gw = patch_grid(x.shape, cfg.patch)
        B, L = y.shape[:2]

        x = self.x_embedder(x.astype(dt)) + jnp.asarray(self.pos_embed(gt, gh, gw), dt)[None]  # [B, T', S, C]
        x = rearrange(x, "b t s c -> b 1 (t s) c")  # one "frame" of all tokens: full attention
        x = constrain(x, ACT_FLAT)
        c = self.t_embedder(t.astype(dt))  # [B, C]
        y = self.y_embedder(y.astype(dt), drop)  # [B, L, C]
        mask = jnp.ones((B, L), bool) if mask is None else mask.astype(bool)

        key_mask = None
        if cfg.conditioning == "adaln":
            w = mask.astype(dt)[..., None]
            c = c + (y * w).sum(1) / jnp.maximum(w.sum(1), 1)  # mean over the real caption tokens
        elif cfg.conditioning == "token-concat":
            x = jnp.concatenate([y[:, None], x], axis=2)  # [B, 1, L + N, C]
            key_mask = jnp.concatenate([mask, jnp.ones((B, x.shape[2] - L), bool)], axis=1)

        x = scan_blocks(self.blocks, x, lambda block, x, i: block(x, c, y, mask, key_mask), cfg.depth, cfg.remat,
                        cfg.scan_layers, self.skip_linears)
        if cfg.conditioning == "token-concat":
            x = x[:, :, L:]  # drop the caption tokens
        x = self.final_layer(x, c)  # [B, 1, N, pt·ph·pw·C_out]
        x = rearrange(x, "b 1 (t s) p -> b t s p", t=gt)
        return unpatchify(x, cfg.patch, gh)


__all__ = ["DiT", "DiTBlock", "DiTConfig", "DIT_SIZES", "dit_config", "CONDITIONINGS"]
