"""The CLIP text encoder in Flax NNX, loading Hugging Face ``CLIPTextModel`` / ``CLIPModel`` weights.

The earliest Open-Sora used CLIP text states (``clip-vit-base-patch32``) with the pooled output driving
adaLN; Open-Sora 2.0 adds CLIP-L/14's pooled 768-vector next to T5.

ids: [B, L] (``L <= max_position_embeddings``, 77) -> last hidden state [B, L, C] and pooled [B, C]:
  token + learned position embedding; pre-norm blocks of causal multi-head attention (scaled,
  with biases) and a quick-GELU MLP; a final LayerNorm; pooled = the final state at the EOS token.
Parameter names follow HF through one explicit map, ``clip_name_map``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vidjax.models.layers import Mlp, attention, constrain, linear, normal02
from vidjax.models.text.hf_weights import CheckpointError, NameMap, hf_activation, load_hf_weights, read_config

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CLIPTextEncoderConfig:
    """The fields of a HF ``CLIPTextConfig``; defaults are HF's (ViT-B/32's text tower)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # pooling token; the legacy value 2 (configs before transformers PR #24773) means "argmax of the ids"
    eos_token_id: int = 49407
    # numerics
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"  # needs an implementation that takes ``bias`` (the causal mask)

    @classmethod
    def from_hf(cls, config: dict[str, Any], source: str = "config.json", **overrides) -> CLIPTextEncoderConfig:
        """From a ``CLIPTextModel`` config, or the ``text_config`` of a full ``CLIPModel`` config."""
        model_type = config.get("model_type", "clip_text_model")
        if model_type == "clip":
            config = config.get("text_config") or {}
        elif model_type != "clip_text_model":
            raise CheckpointError(f"{source}: model_type {model_type!r} is not a CLIP text config")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in config.items() if k in fields and k not in ("dtype", "param_dtype")}
        if isinstance(kw.get("eos_token_id"), list):
            kw["eos_token_id"] = kw["eos_token_id"][0]
        cfg = cls(**kw, **overrides)
        if cfg.hidden_size % cfg.num_attention_heads:
            raise CheckpointError(f"{source}: hidden_size {cfg.hidden_size} is not divisible by "
                                  f"num_attention_heads {cfg.num_attention_heads}")
        hf_activation(cfg.hidden_act, source)
        return cfg


CLIP_TEXT_SIZES: dict[str, dict[str, Any]] = {
    "clip-vit-base-patch32": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
    "clip-vit-large-patch14": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                   num_attention_heads=12),
}

# --------------------------------------------------------------------------------------
# 2. Modules
# --------------------------------------------------------------------------------------


class CLIPAttention(nnx.Module):
    """Scaled multi-head self-attention with biases. x: [B, L, C], mask: [B, L] | None, bias: [1, 1, L, L]."""

    def __init__(self, cfg: CLIPTextEncoderConfig, rngs: nnx.Rngs):
        C, kw = cfg.hidden_size, dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        self.num_heads, self.impl = cfg.num_attention_heads, cfg.attention_impl
        self.q_proj = linear(C, C, ("embed", "heads"), rngs, **kw)
        self.k_proj = linear(C, C, ("embed", "heads"), rngs, **kw)
        self.v_proj = linear(C, C, ("embed", "heads"), rngs, **kw)
        self.out_proj = linear(C, C, ("heads", "embed"), rngs, **kw)

    def __call__(self, x: Array, mask: Array | None, bias: Array) -> Array:
        q, k, v = (rearrange(f(x), "b l (h d) -> b 1 l h d", h=self.num_heads)
                   for f in (self.q_proj, self.k_proj, self.v_proj))
        o = attention(q, k, v, axis="spatial", mask=mask, bias=bias, impl=self.impl)  # [B, 1, L, H, D]
        return self.out_proj(rearrange(o, "b 1 l h d -> b l (h d)"))


def _layer_norm(cfg: CLIPTextEncoderConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                         dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class CLIPLayer(nnx.Module):
    """Pre-norm block: x: [B, L, C] -> [B, L, C]."""

    def __init__(self, cfg: CLIPTextEncoderConfig, rngs: nnx.Rngs):
        self.layer_norm1 = _layer_norm(cfg, rngs)
        self.self_attn = CLIPAttention(cfg, rngs)
        self.layer_norm2 = _layer_norm(cfg, rngs)
        self.mlp = Mlp(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size, rngs,
                       act=hf_activation(cfg.hidden_act, "CLIPTextEncoderConfig"), dtype=jnp.dtype(cfg.dtype),
                       param_dtype=jnp.dtype(cfg.param_dtype))

    def __call__(self, x: Array, mask: Array | None, bias: Array) -> Array:
        x = x + self.self_attn(self.layer_norm1(x), mask, bias)
        x = x + self.mlp(self.layer_norm2(x))
        return constrain(x, ("batch", "text_len", "act_embed"))


class CLIPTextEncoder(nnx.Module):
    """CLIP text transformer.

    ids: [B, L] int, mask: [B, L] (True/1 = real token) or None -> (y [B, L, C], pooled [B, C]).
    Attention is causal (and, given ``mask``, skips padding keys, as HF does with ``attention_mask``;
    with right padding this changes only the states at padded positions). ``pooled`` is the final state
    at the first ``eos_token_id`` of each row (legacy configs with eos 2: at the largest id).
    """

    def __init__(self, cfg: CLIPTextEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt, pd = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pd, rngs=rngs,
                                         embedding_init=nnx.with_partitioning(normal02, ("vocab", "embed")))
        self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dt, param_dtype=pd,
                                            rngs=rngs, embedding_init=nnx.with_partitioning(normal02, (None, "embed")))
        self.layers = nnx.List([CLIPLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = _layer_norm(cfg, rngs)

    def __call__(self, ids: Array, mask: Array | None = None) -> tuple[Array, Array]:
        B, L = ids.shape
        if L > self.cfg.max_position_embeddings:
            raise ValueError(f"{L} tokens exceed CLIP's max_position_embeddings={self.cfg.max_position_embeddings}")
        mask = None if mask is None else mask.astype(bool)
        x = self.token_embedding(ids) + self.position_embedding(jnp.arange(L))[None]  # [B, L, C]
        causal = jnp.tril(jnp.ones((L, L), bool))
        bias = jnp.where(causal, 0.0, jnp.finfo(jnp.float32).min)[None, None]  # [1, 1, L, L]
        for layer in self.layers:
            x = layer(x, mask, bias)
        x = self.final_layer_norm(x)
        if self.cfg.eos_token_id == 2:
            eos = jnp.argmax(ids, axis=-1)
        else:
            eos = jnp.argmax(ids == self.cfg.eos_token_id, axis=-1)  # first EOS (padding may also be EOS)
        pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]  # [B, C]
        return x, pooled


# --------------------------------------------------------------------------------------
# 3. Hugging Face names and loading
# --------------------------------------------------------------------------------------


def clip_name_map(cfg: CLIPTextEncoderConfig) -> dict[str, NameMap]:
    """HF ``CLIPTextModel`` tensor name (``text_model.`` prefix removed) -> our state path."""
    m = {
        "embeddings.token_embedding.weight": NameMap(("token_embedding", "embedding")),
        "embeddings.position_embedding.weight": NameMap(("position_embedding", "embedding")),
        "final_layer_norm.weight": NameMap(("final_layer_norm", "scale")),
        "final_layer_norm.bias": NameMap(("final_layer_norm", "bias")),
    }
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"encoder.layers.{i}", ("layers", i)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            m[f"{hf}.self_attn.{name}.weight"] = NameMap((*ours, "self_attn", name, "kernel"), True)
            m[f"{hf}.self_attn.{name}.bias"] = NameMap((*ours, "self_attn", name, "bias"))
        for name in ("fc1", "fc2"):
            m[f"{hf}.mlp.{name}.weight"] = NameMap((*ours, "mlp", name, "kernel"), True)
            m[f"{hf}.mlp.{name}.bias"] = NameMap((*ours, "mlp", name, "bias"))
        for name in ("layer_norm1", "layer_norm2"):
            m[f"{hf}.{name}.weight"] = NameMap((*ours, name, "scale"))
            m[f"{hf}.{name}.bias"] = NameMap((*ours, name, "bias"))
    return m


def _strip_prefix(name: str) -> str:
    """transformers 4 saved ``text_model.embeddings...``; transformers 5 ``CLIPTextModel`` drops the prefix."""
    return name.removeprefix("text_model.")


def _ignore_clip(name: str) -> bool:
    """The vision tower and heads of a full ``CLIPModel``, and the old ``position_ids`` buffer."""
    return name.startswith(("vision_model.", "visual_projection.", "text_projection.", "logit_scale")) or (
        name == "embeddings.position_ids")


def abstract_clip_text_encoder(cfg: CLIPTextEncoderConfig) -> CLIPTextEncoder:
    return nnx.eval_shape(lambda: CLIPTextEncoder(cfg, rngs=nnx.Rngs(0)))


def load_clip_text_encoder(directory: str | Path, *, mesh: jax.sharding.Mesh | None = None, dtype: str = "float32",
                           param_dtype: str = "float32") -> CLIPTextEncoder:
    """A ``CLIPTextEncoder`` from a HF checkpoint directory (``CLIPTextModel`` or full ``CLIPModel``)."""
    source = str(Path(directory) / "config.json")
    cfg = CLIPTextEncoderConfig.from_hf(read_config(directory), source, dtype=dtype, param_dtype=param_dtype)
    return load_hf_weights(abstract_clip_text_encoder(cfg), directory, clip_name_map(cfg), ignore=_ignore_clip,
                           rename=_strip_prefix, mesh=mesh)


__all__ = [
    "CLIPTextEncoder", "CLIPTextEncoderConfig", "CLIPAttention", "CLIPLayer", "CLIP_TEXT_SIZES", "clip_name_map",
    "abstract_clip_text_encoder", "load_clip_text_encoder",
]
