"""Latte: the four ways of factoring space and time in a video diffusion transformer (Ma et al. 2024, "Latte:
Latent Diffusion Transformer for Video Generation"), with STDiT's text conditioning, in Flax NNX.

Tokens ``x: [B, T, S, C]``. Every block is adaLN-single modulated by the shared ``t_block(t)`` plus the block's
``scale_shift_table`` (as STDiT / PixArt), attends to the caption with ungated cross-attention, and ends with a
modulated MLP. What differs is the self-attention (``variant``):

1. ``interleaved``: spatial blocks (attention within each frame) and temporal blocks (attention over time at each
   position) alternate: ``depth`` of each, ``2·depth`` blocks in all.
2. ``late_temporal``: ``depth`` spatial blocks first, then ``depth`` temporal blocks ("late fusion").
3. ``factorized_block``: one block holds spatial then temporal self-attention (each modulated and gated), then
   the cross-attention and the MLP; ``depth`` blocks.
4. ``factorized_heads``: one self-attention in which half the heads attend within the frame and half over time
   (``SelfAttention(axis="factorized")``); ``depth`` blocks.

The temporal sin/cos table is added to every token once after patch embedding (Latte's ``temp_embed``), the 2D
table before it. Optional U-ViT long skips (``skips``) connect block ``i`` to block ``n − 1 − i`` of the stack
(of pairs, for ``interleaved``).

Sequence parallelism keeps whole frames per chip (``frames`` split): spatial attention is local, and temporal
attention all-gathers its keys and values over the sequence group (``allgather``, the default) or exchanges heads
for frames (``ulysses``).

Sections: (1) config, (2) blocks, (3) the model.
"""

from __future__ import annotations

import dataclasses

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
    normal02,
    sincos_2d,
    sincos_temporal,
)
from vidjax.models.stdit import (
    ACT,
    QKV_FRAMES,
    FinalLayer,
    STDiTConfig,
    adaln_chunks,
    long_skips,
    patch_grid,
    scan_blocks,
    stack_blocks,
    trainable_filter,
    unpatchify,
)

Array = jax.Array
VARIANTS = ("interleaved", "late_temporal", "factorized_block", "factorized_heads")
KINDS = {"interleaved": ("spatial", "temporal"), "late_temporal": ("spatial", "temporal"),
         "factorized_block": ("both",), "factorized_heads": ("heads",)}

# --------------------------------------------------------------------------------------
# 1. Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatteConfig(STDiTConfig):
    """STDiT's fields plus ``variant``. ``sequence_parallel``: ``auto`` (= allgather), ``allgather`` or
    ``ulysses``; the STDiT-only options (temporal RoPE, fps, ``temporal_pos``, freezing) do not apply."""

    variant: str = "interleaved"

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant={self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.sequence_parallel not in ("auto", "allgather", "ulysses"):
            raise ValueError(f"model.sequence_parallel={self.sequence_parallel!r}: Latte keeps whole frames per chip "
                             "and takes auto (= allgather), allgather or ulysses")
        if self.variant == "factorized_heads" and self.heads % 2:
            raise ValueError(f"model.heads={self.heads}: variant 'factorized_heads' splits the heads in two halves")
        if self.temporal_rope or self.fps_conditioning or self.freeze_mode is not None:
            raise ValueError("Latte takes none of STDiT's temporal_rope, fps_conditioning or freeze options")

    @property
    def sp_scheme(self) -> str:
        return "allgather" if self.sequence_parallel == "auto" else self.sequence_parallel


def latte_config(**overrides) -> LatteConfig:
    """``latte_config(variant="factorized_heads", depth=12, hidden=384, heads=6)``."""
    if "patch" in overrides:
        overrides["patch"] = tuple(overrides["patch"])
    return LatteConfig(**overrides)


# --------------------------------------------------------------------------------------
# 2. Blocks
# --------------------------------------------------------------------------------------


class LatteBlock(nnx.Module):
    """One block of kind ``spatial`` | ``temporal`` | ``both`` | ``heads``.

    x: [B, T, S, C], y: [B, L, C], mask: [B, L] | None, t0: [B, 6C] -> [B, T, S, C].
    ``both`` modulates its temporal attention with three more (shift, scale, gate) rows of its table.
    """

    def __init__(self, cfg: LatteConfig, kind: str, rngs: nnx.Rngs):
        C, kw = cfg.hidden, dict(dtype=cfg.compute_dtype, impl=cfg.attention_impl)
        self.kind = kind
        temporal = dict(axis="temporal", seq_parallel=cfg.sp_scheme, layout=QKV_FRAMES)
        if kind == "heads":  # half the heads within the frame, half over time
            self.attn = SelfAttention(C, cfg.heads, rngs, qk_norm=cfg.qk_norm, **{**temporal, "axis": "factorized"},
                                      **kw)
        elif kind == "temporal":
            self.attn = SelfAttention(C, cfg.heads, rngs, qk_norm=cfg.qk_norm, **temporal, **kw)
        else:
            self.attn = SelfAttention(C, cfg.heads, rngs, axis="spatial", qk_norm=cfg.qk_norm, layout=QKV_FRAMES, **kw)
        self.attn_temp = (SelfAttention(C, cfg.heads, rngs, qk_norm=cfg.qk_norm, **temporal, **kw)
                          if kind == "both" else None)
        self.cross_attn = CrossAttention(C, cfg.heads, rngs, **kw)  # proj zero-initialised
        self.mlp = Mlp(C, int(C * cfg.mlp_ratio), C, rngs, dtype=cfg.compute_dtype)
        rows = 9 if kind == "both" else 6
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (rows, C)) / C**0.5,
                                           sharding=(None, "embed"))

    def __call__(self, x: Array, y: Array, mask: Array | None, t0: Array) -> Array:
        T = x.shape[1]
        table = self.scale_shift_table[...][None].astype(x.dtype)  # [1, rows, C]
        t0 = rearrange(t0, "b (six c) -> b six c", six=6)
        sh1, sc1, g1, sh2, sc2, g2 = adaln_chunks(table[:, :6] + t0, 6)  # each [B, 1, 1, C]

        x = x + gate(g1, self.attn(modulate(layer_norm(x), sh1, sc1)))  # spatial | temporal | split heads
        if self.attn_temp is not None:  # "both": temporal attention next, its own (shift, scale, gate) rows
            sh3, sc3, g3 = adaln_chunks(table[:, 6:] + t0[:, :3], 3)
            x = x + gate(g3, self.attn_temp(modulate(layer_norm(x), sh3, sc3)))
        x = constrain(x, ACT)

        h = self.cross_attn(rearrange(x, "b t s c -> b (t s) c"), y, mask)  # [B, T·S, C], queries independent
        x = x + rearrange(h, "b (t s) c -> b t s c", t=T)
        x = x + gate(g2, self.mlp(modulate(layer_norm(x), sh2, sc2)))
        return constrain(x, ACT)


# --------------------------------------------------------------------------------------
# 3. The model
# --------------------------------------------------------------------------------------


class Latte(nnx.Module):
    """Latte with STDiT's call signature: x [B, T, H, W, C_in], t [B] (0..1000), y [B, L, C_text], mask [B, L] |
    None, drop [B] bool | None -> [B, T, H, W, C_out] float32."""

    def __init__(self, cfg: LatteConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C, dt = cfg.hidden, cfg.compute_dtype
        self.x_embedder = PatchEmbed3D(cfg.patch, cfg.in_channels, C, rngs, dtype=dt)
        self.t_embedder = TimestepEmbedder(C, rngs, dtype=dt)
        self.t_block = linear(C, 6 * C, ("embed", "mlp"), rngs, init=normal02, dtype=dt)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.model_max_length, rngs, dtype=dt)
        kinds = KINDS[cfg.variant]
        self.blocks = stack_blocks(lambda r: LatteBlock(cfg, kinds[0], r), cfg.depth, rngs)
        self.temporal_blocks = (stack_blocks(lambda r: LatteBlock(cfg, "temporal", r), cfg.depth, rngs)
                                if len(kinds) == 2 else None)
        self.skip_linears = long_skips(C, cfg.depth, rngs, dtype=dt) if cfg.skips else None
        self.late_skip_linears = (long_skips(C, cfg.depth, rngs, dtype=dt)
                                  if cfg.skips and cfg.variant == "late_temporal" else None)
        self.final_layer = FinalLayer(C, int(np.prod(cfg.patch)) * cfg.out_channels, rngs, dtype=dt)

    def trainable(self) -> nnx.filterlib.Filter:
        return trainable_filter(None)

    def __call__(self, x: Array, t: Array, y: Array, mask: Array | None = None, drop: Array | None = None) -> Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        gt, gh, gw = patch_grid(x.shape, cfg.patch)
        x = self.x_embedder(x.astype(dt))  # [B, T', S, C]
        x = x + jnp.asarray(sincos_2d(cfg.hidden, gh, gw, scale=cfg.space_scale), dt)[None, None]
        x = x + jnp.asarray(sincos_temporal(cfg.hidden, gt, scale=cfg.time_scale), dt)[None, :, None]
        x = constrain(x, ACT)
        t = self.t_embedder(t.astype(dt))  # [B, C]
        t0 = self.t_block(jax.nn.silu(t))  # [B, 6C]
        y = self.y_embedder(y.astype(dt), drop)  # [B, L, C]
        mask = None if mask is None else mask.astype(bool)

        def one(block: LatteBlock, x: Array, i: Array) -> Array:
            return block(x, y, mask, t0)

        def pair(blocks: tuple[LatteBlock, LatteBlock], x: Array, i: Array) -> Array:
            return blocks[1](blocks[0](x, y, mask, t0), y, mask, t0)

        walk = dict(depth=cfg.depth, remat=cfg.remat, scan=cfg.scan_layers)
        if cfg.variant == "interleaved":
            x = scan_blocks((self.blocks, self.temporal_blocks), x, pair, skips=self.skip_linears, **walk)
        else:
            x = scan_blocks(self.blocks, x, one, skips=self.skip_linears, **walk)
            if self.temporal_blocks is not None:  # late_temporal: every temporal block after every spatial one
                x = scan_blocks(self.temporal_blocks, x, one, skips=self.late_skip_linears, **walk)
        x = self.final_layer(x, t)  # [B, T', S, pt·ph·pw·C_out]
        return unpatchify(x, cfg.patch, gh)


__all__ = ["Latte", "LatteBlock", "LatteConfig", "latte_config", "VARIANTS"]
