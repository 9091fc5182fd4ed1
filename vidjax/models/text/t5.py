"""The T5 encoder (v1.0 and v1.1) in Flax NNX, loading Hugging Face checkpoints without torch.

Open-Sora conditions on the T5 v1.1 XXL encoder (``DeepFloyd/t5-v1_1-xxl``): ids [B, L] padded to
120 / 200 / 300 tokens with a mask -> ``last_hidden_state`` y [B, L, 4096].

T5 specifics, all kept here:
  * one relative position bias table [buckets, H], owned by block 0 in HF and shared by every block;
    positions are bucketed (half exact, half log-spaced up to ``relative_attention_max_distance``);
  * RMS LayerNorm with a scale and no bias, *before* each sub-layer (pre-norm), and a final one;
  * no 1/sqrt(D) scaling of the attention logits (folded into the initialisation);
  * FFN: ``wo(relu(wi x))`` in v1.0, ``wo(gelu_tanh(wi_0 x) * wi_1 x)`` ("gated-gelu") in v1.1;
  * no dropout: this module is for inference (HF's ``dropout_rate`` is ignored).

Parameter names follow HF through one explicit map, ``t5_name_map``. ``load_t5_encoder`` builds the
model with ``nnx.eval_shape`` and fills it tensor by tensor (optionally straight onto a mesh).

Size (T5 v1.1 XXL: vocab 32128, d_model 4096, 64 heads × d_kv 64, d_ff 10240, 24 blocks, 32 buckets):
  shared embedding            32128 · 4096            =   131,596,288
  one block: q, k, v, o       4 · 4096 · 4096         =    67,108,864
             wi_0, wi_1, wo   3 · 4096 · 10240        =   125,829,120
             two RMS scales   2 · 4096                =         8,192   (block: 192,946,176)
  24 blocks                                           = 4,630,708,224
  relative bias 32 · 64 = 2,048; final norm 4,096
  **total 4,762,310,656** — what ``nnx.eval_shape`` gives (tests/test_text.py) and what
  ``transformers.T5EncoderModel(config).num_parameters()`` reports for google/t5-v1_1-xxl's config
  (the "4.7B T5-XXL encoder" of PixArt / SD3); the full encoder-decoder is the published 11B.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vidjax.models.layers import RMSNorm, attention, constrain, linear
from vidjax.models.text.hf_weights import (
    CheckpointError,
    NameMap,
    hf_activation,
    load_hf_weights,
    read_config,
)

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
    """The encoder fields of a HF ``T5Config``; defaults are HF's (t5-small), sizes in ``T5_SIZES``."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (v1.0) | "gated-gelu" (v1.1) | "[gated-]<act>"
    # numerics
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "xla"  # needs an implementation that takes ``bias`` and ``scale``

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def act_name(self) -> str:
        """HF's ``dense_act_fn``: the last part of ``feed_forward_proj``, with "gated-gelu" meaning tanh GELU."""
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_hf(cls, config: dict[str, Any], source: str = "config.json", **overrides) -> T5EncoderConfig:
        """From a HF ``config.json`` dict (missing keys take HF's defaults); ``overrides`` set dtypes etc."""
        if config.get("model_type", "t5") not in ("t5", "mt5"):
            raise CheckpointError(f"{source}: model_type {config.get('model_type')!r} is not a T5 config")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in config.items() if k in fields and k not in ("dtype", "param_dtype")}
        cfg = cls(**kw, **overrides)
        parts = cfg.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise CheckpointError(f"{source}: feed_forward_proj {cfg.feed_forward_proj!r} is not "
                                  "'<act>' or 'gated-<act>'")
        hf_activation(cfg.act_name, source)
        return cfg


T5_SIZES: dict[str, dict[str, Any]] = {
    # google/t5-v1_1-xxl = DeepFloyd/t5-v1_1-xxl (Open-Sora, PixArt)
    "t5-v1_1-xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu"),
    "t5-v1_1-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, feed_forward_proj="gated-gelu"),
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, feed_forward_proj="relu"),
}


def t5_config(size: str, **overrides) -> T5EncoderConfig:
    """``t5_config("t5-v1_1-xxl", dtype="bfloat16")``."""
    return T5EncoderConfig(**{**T5_SIZES[size], **overrides})


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int,
                              bidirectional: bool = True) -> np.ndarray:
    """Bucket of ``key_pos - query_pos`` for every pair: int [q_len, k_len] in [0, num_buckets).

    Bidirectional: half the buckets for keys after the query. In each half, distances below half of it
    are exact; larger ones are log-spaced up to ``max_distance`` (the log in float32, as Mesh TF / HF).
    """
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    out = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
    log_scaled = np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    large = np.minimum(max_exact + log_scaled.astype(np.int64), num_buckets - 1)
    return out + np.where(rel < max_exact, rel, large)


# --------------------------------------------------------------------------------------
# 2. Modules
# --------------------------------------------------------------------------------------


class T5Attention(nnx.Module):
    """Unscaled multi-head self-attention with an additive position bias.

    x: [B, L, C], mask: [B, L] (True = real token), bias: [1, H, L, L] -> [B, L, C].
    """

    def __init__(self, cfg: T5EncoderConfig, rngs: nnx.Rngs):
        kw = dict(bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        self.num_heads, self.impl = cfg.num_heads, cfg.attention_impl
        self.q = linear(cfg.d_model, cfg.inner_dim, ("embed", "heads"), rngs, **kw)
        self.k = linear(cfg.d_model, cfg.inner_dim, ("embed", "heads"), rngs, **kw)
        self.v = linear(cfg.d_model, cfg.inner_dim, ("embed", "heads"), rngs, **kw)
        self.o = linear(cfg.inner_dim, cfg.d_model, ("heads", "embed"), rngs, **kw)

    def __call__(self, x: Array, mask: Array | None, bias: Array) -> Array:
        q, k, v = (rearrange(f(x), "b l (h d) -> b 1 l h d", h=self.num_heads) for f in (self.q, self.k, self.v))
        o = attention(q, k, v, axis="spatial", mask=mask, bias=bias, scale=1.0, impl=self.impl)  # [B, 1, L, H, D]
        return self.o(rearrange(o, "b 1 l h d -> b l (h d)"))


class T5FeedForward(nnx.Module):
    """x: [B, L, C] -> [B, L, C]: ``wo(act(wi x))`` or, gated, ``wo(act(wi_0 x) * wi_1 x)``."""

    def __init__(self, cfg: T5EncoderConfig, rngs: nnx.Rngs):
        kw = dict(bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        self.act, self.gated = hf_activation(cfg.act_name, "T5EncoderConfig"), cfg.is_gated
        if self.gated:
            self.wi_0 = linear(cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs, **kw)
            self.wi_1 = linear(cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs, **kw)
        else:
            self.wi = linear(cfg.d_model, cfg.d_ff, ("embed", "mlp"), rngs, **kw)
        self.wo = linear(cfg.d_ff, cfg.d_model, ("mlp", "embed"), rngs, **kw)

    def __call__(self, x: Array) -> Array:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))  # [B, L, d_ff]
        return self.wo(h)


class T5Block(nnx.Module):
    """Pre-norm residual block: x: [B, L, C] -> [B, L, C] (attention, then FFN)."""

    def __init__(self, cfg: T5EncoderConfig, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=pd)
        self.self_attn = T5Attention(cfg, rngs)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=pd)
        self.ff = T5FeedForward(cfg, rngs)

    def __call__(self, x: Array, mask: Array | None, bias: Array) -> Array:
        x = x + self.self_attn(self.attn_norm(x), mask, bias)
        x = x + self.ff(self.ff_norm(x))
        return constrain(x, ("batch", "text_len", "act_embed"))


class T5Encoder(nnx.Module):
    """T5 encoder stack. ids: [B, L] int, mask: [B, L] (True/1 = real token) or None -> y: [B, L, d_model].

    y is in the compute dtype ``cfg.dtype``; padded positions are computed too (as in HF) and should be
    ignored through the mask downstream.
    """

    def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt, pd = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dt, param_dtype=pd, rngs=rngs,
                                embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ("vocab", "embed")))
        table = nnx.initializers.normal(1.0)(rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads), pd)
        self.relative_attention_bias = nnx.Param(table, sharding=(None, "heads"))  # [buckets, H]
        self.blocks = nnx.List([T5Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=pd)

    def position_bias(self, length: int) -> Array:
        """[1, H, L, L] float32, shared by all blocks."""
        cfg = self.cfg
        buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                            cfg.relative_attention_max_distance)
        values = self.relative_attention_bias[...].astype(jnp.float32)[jnp.asarray(buckets)]  # [L, L, H]
        return rearrange(values, "q k h -> 1 h q k")

    def __call__(self, ids: Array, mask: Array | None = None) -> Array:
        mask = None if mask is None else mask.astype(bool)
        x = self.shared(ids)  # [B, L, C]
        x = constrain(x, ("batch", "text_len", "act_embed"))
        bias = self.position_bias(ids.shape[1])
        for block in self.blocks:
            x = block(x, mask, bias)
        return self.final_layer_norm(x)


# --------------------------------------------------------------------------------------
# 3. Hugging Face names and loading
# --------------------------------------------------------------------------------------


def t5_name_map(cfg: T5EncoderConfig) -> dict[str, NameMap]:
    """HF ``T5EncoderModel`` / ``T5ForConditionalGeneration`` tensor name -> our state path.

    torch ``Linear.weight`` is [out, in]; our kernels are [in, out], hence ``transpose``.
    ``encoder.embed_tokens.weight`` is tied to ``shared.weight``; either fills ``shared``.
    """
    m = {
        "shared.weight": NameMap(("shared", "embedding")),
        "encoder.embed_tokens.weight": NameMap(("shared", "embedding")),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": NameMap(("relative_attention_bias",)),
        "encoder.final_layer_norm.weight": NameMap(("final_layer_norm", "weight")),
    }
    ff = ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo")
    for i in range(cfg.num_layers):
        hf = f"encoder.block.{i}.layer"
        m[f"{hf}.0.layer_norm.weight"] = NameMap(("blocks", i, "attn_norm", "weight"))
        for name in ("q", "k", "v", "o"):
            m[f"{hf}.0.SelfAttention.{name}.weight"] = NameMap(("blocks", i, "self_attn", name, "kernel"), True)
        m[f"{hf}.1.layer_norm.weight"] = NameMap(("blocks", i, "ff_norm", "weight"))
        for name in ff:
            m[f"{hf}.1.DenseReluDense.{name}.weight"] = NameMap(("blocks", i, "ff", name, "kernel"), True)
    return m


def _ignore_t5(name: str) -> bool:
    """Tensors of a full encoder-decoder checkpoint that the encoder does not use."""
    return name.startswith(("decoder.", "lm_head."))


def abstract_t5_encoder(cfg: T5EncoderConfig) -> T5Encoder:
    """The model with ``ShapeDtypeStruct`` leaves: no memory, for sizes and for loading."""
    return nnx.eval_shape(lambda: T5Encoder(cfg, rngs=nnx.Rngs(0)))


def load_t5_encoder(directory: str | Path, *, mesh: jax.sharding.Mesh | None = None, dtype: str = "float32",
                    param_dtype: str = "float32") -> T5Encoder:
    """A ``T5Encoder`` from a HF checkpoint directory (``config.json`` + safetensors, single or sharded).

    With ``mesh``, every tensor goes straight to its ``NamedSharding`` (logical axes -> mesh axes through
    ``vidjax.parallel.rules``), so the model is never whole on one device. Errors are one line naming the
    file and the first mismatching key or shape.
    """
    source = str(Path(directory) / "config.json")
    cfg = T5EncoderConfig.from_hf(read_config(directory), source, dtype=dtype, param_dtype=param_dtype)
    return load_hf_weights(abstract_t5_encoder(cfg), directory, t5_name_map(cfg), ignore=_ignore_t5, mesh=mesh)


__all__ = [
    "T5Encoder", "T5EncoderConfig", "T5Attention", "T5Block", "T5FeedForward", "T5_SIZES", "t5_config",
    "t5_name_map", "abstract_t5_encoder", "load_t5_encoder", "relative_position_buckets",
]
