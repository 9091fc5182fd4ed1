"""STDiT3: the spatial-temporal diffusion transformer of Open-Sora v1.2, in Flax NNX.

Tokens ``x: [B, T, S, C]`` (T latent frames after the patch, S = H'·W' patches per frame) pass
``depth`` pairs of blocks, ``spatial_blocks.i`` then ``temporal_blocks.i``. Both are the same block;
only the axis of self-attention differs:
  1. self-attention, adaLN-modulated and gated: within each frame (spatial, ``(B T) S C``) or
     across frames at each position (temporal, ``(B S) T C``, with RoPE on interleaved pairs,
     applied after the RMS q/k norm);
  2. cross-attention from all tokens to the caption (``B (T S) C``), ungated; the caption mask
     is a dense key mask, equivalent to v1.2's xformers block-diagonal packing;
  3. an adaLN-modulated, gated MLP.
Every block modulates from the same ``t_block(t)`` [B, 6C] (adaLN-single) plus its own
``scale_shift_table`` [6, C]; ``t = t_embedder(timestep) + fps_embedder(fps)``.

Frame masks (``x_mask`` [B, T], True = frame being generated): frames marked False are clean
conditioning frames; their tokens are modulated by ``t0 = t_embedder(0) + fps_embedder(fps)``
instead of ``t``, in every block and in the final layer. v1.2's final layer modulates all tokens
by ``t`` and then, for clean frames, layer-normalises the *already modulated* tokens once more
and modulates them by ``t0``: reproduced as it is.

The 2D sin/cos position table is rebuilt for each input from its patch grid (H', W'), the
first sample's pixel size (``height``, ``width``), ``scale = sqrt(height·width) / input_sq_size``
and ``base_size = round(sqrt(H'·W'))``; its first C/2 channels encode the column.
There is no temporal position table: temporal attention uses RoPE.

Sections: (1) config and named sizes, (2) the block, (3) the final layer, (4) the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vidjax.errors import ConfigError
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
    xavier,
    zeros,
)
from vidjax.models.stdit import (
    ACT,
    ACT_TOKENS,
    QKV_FRAMES,
    QKV_TOKENS,
    REMAT_POLICIES,
    SEQUENCE_PARALLEL,
    adaln_chunks,
    count_params,
    scan_blocks,
    stack_blocks,
    unpatchify,
)
from vidjax.parallel import sequence

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config and named sizes
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class STDiT3Config:
    """Open-Sora v1.2 ``STDiT3Config`` (same field names and defaults), plus vidjax's numerics fields.

    ``enable_flash_attn``, ``enable_layernorm_kernel`` and ``enable_sequence_parallelism`` are kept so a
    published ``config.json`` round-trips; in vidjax the kernel is ``attention_impl`` and sequence
    parallelism follows the mesh (``sequence_parallel``). ``input_size`` is informational (v1.2 sizes
    every input dynamically). ``class_dropout_prob`` is the training caption dropout (the diffusion
    loss draws it in vidjax).
    """

    input_size: tuple[int | None, int | None, int | None] = (None, None, None)
    input_sq_size: int = 512
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True  # out_channels = 2 * in_channels; v1.2's sampler keeps the first half
    drop_path: float = 0.0
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    enable_flash_attn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False
    only_train_temporal: bool = False
    freeze_y_embedder: bool = False
    skip_y_embedder: bool = False  # y is already in the model width [B, L, C]: y_embedder is not applied
    # vidjax numerics and memory (not in v1.2's config)
    dtype: str = "float32"  # compute dtype; parameters stay float32
    remat: str = "none"  # none | full | dots
    scan_layers: bool = True  # one nnx.scan over the blocks, or unrolled (vidjax.models.stdit.scan_blocks)
    attention_impl: str = "xla"
    sequence_parallel: str = "auto"  # auto (= dsp) | dsp | ulysses | allgather | ring

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "input_size", tuple(self.input_size))
        if len(self.patch_size) != 3:
            raise ConfigError(f"model.patch_size={self.patch_size}; expected 3 integers (t, h, w)")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size={self.hidden_size} is not divisible by "
                              f"model.num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(f"model.hidden_size={self.hidden_size}: the 2D position table needs a multiple of 4")
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"model.hidden_size / num_heads = {self.hidden_size // self.num_heads}: rotary "
                              "embedding needs an even head dimension")
        if self.drop_path:
            raise ConfigError(f"model.drop_path={self.drop_path}: stochastic depth is not implemented in vidjax "
                              "(every released v1.2 config uses 0.0)")
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat={self.remat!r}; expected none, full or dots")
        if self.sequence_parallel not in ("auto", *SEQUENCE_PARALLEL):
            raise ConfigError(f"model.sequence_parallel={self.sequence_parallel!r}; expected auto, dsp, ulysses, "
                              "allgather or ring")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.pred_sigma else 1)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def sp_scheme(self) -> str:
        """The sequence-parallel scheme (``auto`` resolved): dsp."""
        return "dsp" if self.sequence_parallel == "auto" else self.sequence_parallel

    def opensora_dict(self) -> dict[str, Any]:
        """The v1.2 ``STDiT3Config`` fields only (``config.json`` of a published model, minus HF metadata)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in OPENSORA_FIELDS}
        out["input_size"], out["patch_size"] = list(self.input_size), list(self.patch_size)
        return out


VIDJAX_FIELDS = ("dtype", "remat", "scan_layers", "attention_impl", "sequence_parallel")
OPENSORA_FIELDS = tuple(f.name for f in dataclasses.fields(STDiT3Config) if f.name not in VIDJAX_FIELDS)

# v1.2 registers these names; both use STDiT3Config's defaults otherwise (pred_sigma, qk_norm, 300 tokens)
STDIT3_SIZES: dict[str, dict[str, Any]] = {
    "STDiT3-XL/2": dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16),
    "STDiT3-3B/2": dict(depth=28, hidden_size=1872, patch_size=(1, 2, 2), num_heads=26),
}


def stdit3_config(size: str | None = None, **overrides) -> STDiT3Config:
    """``stdit3_config("STDiT3-XL/2", qk_norm=True)``; ``size=None`` gives the class defaults (XL/2)."""
    if size is not None and size not in STDIT3_SIZES:
        raise ConfigError(f"model.size={size!r}; expected one of {sorted(STDIT3_SIZES)}")
    base = {} if size is None else dict(STDIT3_SIZES[size])
    base.update(overrides)
    return STDiT3Config(**base)


# keys transformers' PretrainedConfig may write into a config.json besides the model's own fields
HF_CONFIG_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "auto_map",
    "_commit_hash", "_attn_implementation_autoset", "return_dict", "output_hidden_states", "output_attentions",
    "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder",
    "id2label", "label2id", "problem_type", "tokenizer_class", "prefix", "bos_token_id", "pad_token_id",
    "eos_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task"})


def config_from_opensora(fields: dict[str, Any], *, source: str = "config", **vidjax_fields) -> STDiT3Config:
    """An ``STDiT3Config`` from a v1.2 ``config.json`` dict; HF metadata keys are ignored, unknown keys rejected."""
    hf_meta = HF_CONFIG_KEYS
    unknown = sorted(k for k in fields if k not in OPENSORA_FIELDS and k not in hf_meta and k not in VIDJAX_FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown STDiT3Config fields {unknown}; expected some of {list(OPENSORA_FIELDS)}")
    kw = {k: v for k, v in fields.items() if k in OPENSORA_FIELDS or k in VIDJAX_FIELDS}
    kw.update(vidjax_fields)
    return STDiT3Config(**kw)


def trainable_filter(cfg: STDiT3Config) -> nnx.filterlib.Filter:
    """Trained parameters under v1.2's ``only_train_temporal`` / ``freeze_y_embedder`` (buffers never)."""
    if cfg.only_train_temporal:
        return nnx.All(nnx.Param, nnx.PathContains("temporal_blocks"))
    if cfg.freeze_y_embedder:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("y_embedder")))
    return nnx.Param


# --------------------------------------------------------------------------------------
# 2. The block (spatial or temporal)
# --------------------------------------------------------------------------------------


def select_frames(x_mask: Array | None, a: Array, a0: Array) -> Array:
    """``a`` on frames with ``x_mask`` True, ``a0`` on the others. x_mask: [B, T]; a, a0: [B, T or 1, S or 1, C]."""
    if x_mask is None:
        return a
    return jnp.where(x_mask[:, :, None, None], a, a0)


class STDiT3Block(nnx.Module):
    """One block. x: [B, T, S, C], y: [B, L, C], mask: [B, L] | None, tm / tm0: [B, 6C], x_mask: [B, T] | None.

    Under DSP a temporal block switches to the S-split layout on entry and back on exit (one
    all-to-all each); spatial blocks keep whole frames per chip.
    """

    def __init__(self, cfg: STDiT3Config, rngs: nnx.Rngs, *, temporal: bool):
        C, kw = cfg.hidden_size, dict(dtype=cfg.compute_dtype, impl=cfg.attention_impl)
        self.temporal, self.scheme = temporal, cfg.sp_scheme
        spatial_sp, temporal_sp = {"dsp": (None, None), "ulysses": ("ulysses", "ulysses"),
                                   "allgather": (None, "allgather"), "ring": ("ring", None)}[self.scheme]
        layout = QKV_TOKENS if self.scheme == "ring" else QKV_FRAMES
        self.attn = SelfAttention(C, cfg.num_heads, rngs, axis="temporal" if temporal else "spatial",
                                  qk_norm=cfg.qk_norm, rope=temporal,
                                  seq_parallel=temporal_sp if temporal else spatial_sp, layout=layout, **kw)
        self.cross_attn = CrossAttention(C, cfg.num_heads, rngs, zero_out=temporal, **kw)
        self.mlp = Mlp(C, int(C * cfg.mlp_ratio), C, rngs, out_init=zeros if temporal else None,
                       dtype=cfg.compute_dtype)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (6, C)) / C**0.5, sharding=(None, "embed"))
        if temporal:  # v1.2 initialize_weights: a new temporal block starts as the identity
            self.attn.proj.kernel[...] = jnp.zeros_like(self.attn.proj.kernel[...])

    def __call__(self, x: Array, y: Array, mask: Array | None, tm: Array, tm0: Array | None,
                 x_mask: Array | None) -> Array:
        S = x.shape[2]
        dsp_switch = self.temporal and self.scheme == "dsp"
        tokens_split = self.scheme == "ring" or dsp_switch
        act = ACT_TOKENS if tokens_split else ACT
        if dsp_switch:  # [B, T, S', C], all frames of a position per chip (identity off-mesh)
            x = sequence.split_tokens(x)

        table = self.scale_shift_table[...][None].astype(x.dtype)
        mod = adaln_chunks(table + rearrange(tm, "b (six c) -> b six c", six=6), 6)  # 6 × [B, 1, 1, C]
        if x_mask is not None:
            mod0 = adaln_chunks(table + rearrange(tm0, "b (six c) -> b six c", six=6), 6)
            mod = tuple(select_frames(x_mask, m, m0) for m, m0 in zip(mod, mod0, strict=True))  # [B, T, 1, C]
        sh1, sc1, g1, sh2, sc2, g2 = mod

        # self-attention (within frames, or across frames with RoPE)
        x = x + gate(g1, self.attn(modulate(layer_norm(x), sh1, sc1)))
        x = constrain(x, act)

        # cross-attention over all tokens of the clip, split axis major
        T = x.shape[1]
        order = "(s t)" if tokens_split else "(t s)"
        h = self.cross_attn(rearrange(x, f"b t s c -> b {order} c"), y, mask)
        x = x + rearrange(h, f"b {order} c -> b t s c", t=T)

        # MLP
        x = x + gate(g2, self.mlp(modulate(layer_norm(x), sh2, sc2)))
        x = constrain(x, act)
        if dsp_switch:
            x = constrain(sequence.split_frames(x, S), ACT)
        return x


# --------------------------------------------------------------------------------------
# 3. The final layer (PixArt's T2IFinalLayer with v1.2's frame mask)
# --------------------------------------------------------------------------------------


class FinalLayer3(nnx.Module):
    """x: [B, T, S, C], t / t0: [B, C], x_mask: [B, T] | None -> [B, T, S, pt·ph·pw·C_out].

    Frames with x_mask False get ``modulate(LN(modulate(LN(x), t)), t0)``: v1.2 normalises the
    tokens it has already modulated by ``t`` (its ``x_zero`` is computed from the updated ``x``).
    """

    def __init__(self, hidden: int, patch_values: int, rngs: nnx.Rngs, *, dtype=None):
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (2, hidden)) / hidden**0.5,
                                           sharding=(None, "embed"))
        self.linear = linear(hidden, patch_values, ("embed", None), rngs, init=xavier, dtype=dtype)

    def __call__(self, x: Array, t: Array, x_mask: Array | None = None, t0: Array | None = None) -> Array:
        table = self.scale_shift_table[...][None].astype(x.dtype)
        shift, scale = adaln_chunks(table + t[:, None], 2)
        x = modulate(layer_norm(x), shift, scale)
        if x_mask is not None:
            shift0, scale0 = adaln_chunks(table + t0[:, None], 2)
            x = select_frames(x_mask, x, modulate(layer_norm(x), shift0, scale0))
        return self.linear(x)


# --------------------------------------------------------------------------------------
# 4. The model
# --------------------------------------------------------------------------------------


def pixel_size(value, latent: int, name: str) -> float:
    """The first sample's pixel height or width as a Python float (v1.2 reads ``height[0].item()``)."""
    if value is None:
        return float(latent)
    try:
        arr = np.asarray(value).reshape(-1)
    except jax.errors.TracerArrayConversionError as err:
        raise ValueError(f"{name}: pass the pixel {name} as a Python number or a concrete array (it sizes the "
                         "position table, so it is static under jit)") from err
    if arr.size == 0:
        raise ValueError(f"{name}: empty; expected the pixel {name} of the video")
    return float(arr[0])


class STDiT3(nnx.Module):
    """Open-Sora v1.2 STDiT3.

    x: [B, T, H, W, C_in] latents (channels last), timestep: [B] on the 0..1000 scale,
    y: [B, L, C_text] caption states (``skip_y_embedder``: [B, L, C]),
    mask: [B, L] (True / 1 = real token) or None,
    x_mask: [B, T'] bool over latent frames after the patch (T' = ceil(T / patch_t); True = generated
    frame, False = clean condition frame) or None,
    fps: [B] (required, as in v1.2),
    height / width: the pixel size of the video, a Python number or a concrete array whose first entry
    is used (default: the latent size × 8),
    drop: [B] bool (replace the caption by the null ``y_embedding``) or None.
    Returns [B, T, H, W, C_out] in float32, C_out = 2·C_in with ``pred_sigma``. T, H, W that are not
    multiples of the patch are zero-padded and the output cropped back, as in v1.2.

    Parameter names follow v1.2's ``state_dict``; ``vidjax.interop.torch_names`` holds the map.
    """

    def __init__(self, cfg: STDiT3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        C, dt = cfg.hidden_size, cfg.compute_dtype
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, C, rngs, dtype=dt)
        self.t_embedder = TimestepEmbedder(C, rngs, dtype=dt)
        self.fps_embedder = TimestepEmbedder(C, rngs, dtype=dt)  # v1.2 SizeEmbedder: same layers
        for p in (self.fps_embedder.mlp.fc2.kernel, self.fps_embedder.mlp.fc2.bias):  # the fps branch starts at 0
            p[...] = jnp.zeros_like(p[...])
        self.t_block = linear(C, 6 * C, ("embed", "mlp"), rngs, dtype=dt)  # Sequential(SiLU, Linear)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.model_max_length, rngs, dtype=dt)
        self.spatial_blocks = stack_blocks(lambda r: STDiT3Block(cfg, r, temporal=False), cfg.depth, rngs)
        self.temporal_blocks = stack_blocks(lambda r: STDiT3Block(cfg, r, temporal=True), cfg.depth, rngs)
        self.final_layer = FinalLayer3(C, int(np.prod(cfg.patch_size)) * cfg.out_channels, rngs, dtype=dt)
        # v1.2 initialises every Linear xavier-uniform (layers.py's embedders default to N(0, 0.02)); the fps
        # branch's first layer stays N(0, 0.02) and its second zero, as in v1.2
        for lin in (self.t_embedder.mlp.fc1, self.t_embedder.mlp.fc2, self.y_embedder.y_proj.fc1,
                    self.y_embedder.y_proj.fc2):
            lin.kernel[...] = xavier(rngs.params(), lin.kernel[...].shape, lin.kernel[...].dtype)

    def pos_embed(self, grid_h: int, grid_w: int, height: float, width: float) -> np.ndarray:
        """[H'·W', C] table for a patch grid and a pixel size (v1.2 ``PositionEmbedding2D``)."""
        scale = (height * width) ** 0.5 / self.cfg.input_sq_size
        base_size = round((grid_h * grid_w) ** 0.5)
        return sincos_2d(self.cfg.hidden_size, grid_h, grid_w, scale=scale, base_size=base_size).astype(np.float32)

    def trainable(self) -> nnx.filterlib.Filter:
        return trainable_filter(self.cfg)

    def num_params(self) -> int:
        return count_params(self)

    def __call__(self, x: Array, timestep: Array, y: Array, mask: Array | None = None,
                 x_mask: Array | None = None, fps: Array | None = None, height=None, width=None,
                 drop: Array | None = None) -> Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        if fps is None:
            raise ValueError("STDiT3: pass fps [B] (v1.2 conditions every sample on its frame rate)")
        B, Tx, Hx, Wx, _ = x.shape
        pt, ph, pw = cfg.patch_size
        pad = ((0, 0), (0, -Tx % pt), (0, -Hx % ph), (0, -Wx % pw), (0, 0))
        if any(p[1] for p in pad):
            x = jnp.pad(x, pad)
        gt, gh, gw = x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw
        if cfg.sp_scheme == "ring":
            sequence.check_divisible("tokens per frame", gh * gw, hint="ring attention needs equal blocks")
        else:
            sequence.check_divisible("latent frames", gt, hint=f"latent frames / patch stride {pt}")

        # timestep, fps and their zero-timestep twin for clean frames
        fps_emb = self.fps_embedder(jnp.asarray(fps, jnp.float32).reshape(-1) * jnp.ones((B,), jnp.float32))
        t = self.t_embedder(jnp.asarray(timestep).astype(dt)) + fps_emb  # [B, C]
        tm = self.t_block(jax.nn.silu(t))  # [B, 6C]
        t0 = tm0 = None
        if x_mask is not None:
            x_mask = jnp.asarray(x_mask).astype(bool)
            if x_mask.shape != (B, gt):
                raise ValueError(f"x_mask has shape {tuple(x_mask.shape)}; expected (batch, latent frames / "
                                 f"patch t) = {(B, gt)}")
            t0 = self.t_embedder(jnp.zeros((B,), dt)) + fps_emb
            tm0 = self.t_block(jax.nn.silu(t0))

        # caption
        y = y.astype(dt)
        if not cfg.skip_y_embedder:
            y = self.y_embedder(y, drop)  # [B, L, C]
        mask = None if mask is None else jnp.asarray(mask).astype(bool)

        # patches + the 2D position table of this grid and pixel size
        act = ACT_TOKENS if cfg.sp_scheme == "ring" else ACT
        H_pix, W_pix = pixel_size(height, Hx * 8, "height"), pixel_size(width, Wx * 8, "width")
        x = self.x_embedder(x.astype(dt))  # [B, T', S, C]
        x = x + jnp.asarray(self.pos_embed(gh, gw, H_pix, W_pix), dt)[None, None]
        x = constrain(x, act)

        def step(pair: tuple[STDiT3Block, STDiT3Block], x: Array, i: Array) -> Array:
            spatial, temporal = pair
            return temporal(spatial(x, y, mask, tm, tm0, x_mask), y, mask, tm, tm0, x_mask)

        x = scan_blocks((self.spatial_blocks, self.temporal_blocks), x, step, cfg.depth, cfg.remat,
                        cfg.scan_layers)

        x = self.final_layer(x, t, x_mask, t0)  # [B, T', S, pt·ph·pw·C_out]
        x = unpatchify(x, cfg.patch_size, gh)
        return x[:, :Tx, :Hx, :Wx]


def build_abstract(cfg: STDiT3Config) -> STDiT3:
    """STDiT3 with abstract parameters (``nnx.eval_shape``): shapes and names, no memory, no init."""
    return nnx.eval_shape(lambda: STDiT3(cfg, rngs=nnx.Rngs(0)))


__all__ = ["STDiT3", "STDiT3Block", "STDiT3Config", "STDIT3_SIZES", "FinalLayer3", "OPENSORA_FIELDS",
           "stdit3_config", "config_from_opensora", "trainable_filter", "select_frames", "build_abstract"]
