"""``model.attention_impl`` implementations and the ``auto`` policy.

Registered into ``vidjax.models.layers.ATTENTION_IMPLS`` (signature ``f(q, k, v, *, axis, mask)``
on [B, T, S, H, D]) when ``vidjax.kernels`` is imported:

  xla     ``layers.xla_attention`` (registered by the lead; einsums on the native layout)
  pallas  the vidjax Pallas kernels; Mosaic on TPU, Triton on CUDA/ROCm (chosen when the
          computation is lowered, so one traced function exports to either), interpret mode
          on CPU (slow; for tests). Under a multi-device mesh they run per shard
          (``sharding.per_shard``: ``jax.shard_map`` with specs from the logical-axis table)
  cudnn   ``jax.nn.dot_product_attention(implementation="cudnn")`` with the reshapes and
          transposes it needs (GPU only; bf16/fp16)
  splash  JAX's TPU splash attention for spatial/cross attention; Pallas temporal kernel (both per shard)
  auto    per backend and sequence length, see ``choose_impl``; each distinct choice is logged
          once (logger ``vidjax.kernels``)

Cross-attention is the model's spatial call with T = 1, Sq = all T*S tokens and Sk = the
caption length, so it runs through the same spatial kernel (key mask = caption mask).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from vidjax.models.layers import ATTENTION_IMPLS, register_attention, xla_attention

from .reference import dot_product_attention
from .sharding import per_shard
from .spatial import spatial_attention
from .splash import splash_spatial
from .temporal import temporal_attention

Array = jax.Array
log = logging.getLogger("vidjax.kernels")

# Below these sizes one fused XLA softmax is already cheap and a kernel launch buys nothing.
MIN_SPATIAL_PAIRS = 128 * 128  # Sq * Sk
MIN_FRAMES = 2
_LOGGED: set[tuple] = set()


def _check_axis(axis: str, mask: Array | None) -> None:
    if axis not in ("spatial", "temporal"):
        raise ValueError(f"axis={axis!r}; expected 'spatial' or 'temporal'")
    if axis == "temporal" and mask is not None:
        raise ValueError("temporal attention takes no key mask")


def _pallas_local(q: Array, k: Array, v: Array, *, axis: str, mask: Array | None) -> Array:
    if axis == "spatial":
        return spatial_attention(q, k, v, mask=mask)
    return temporal_attention(q, k, v)


@register_attention("pallas")
def pallas_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None) -> Array:
    """The vidjax kernels on q, k, v [B, T, S, H, D] (mask [B, Sk]), per shard of the active mesh."""
    _check_axis(axis, mask)
    return per_shard(_pallas_local, q, k, v, axis=axis, mask=mask)


def _cudnn_supported(q: Array) -> str | None:
    """Why cuDNN flash attention cannot run these inputs, or None if it can."""
    if jax.default_backend() != "gpu":
        return f"needs a CUDA GPU (backend is {jax.default_backend()!r})"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"needs bf16/fp16 inputs (got {q.dtype}; set model.dtype=bfloat16)"
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return f"needs head dim a multiple of 8 and <= 128 (got {q.shape[-1]})"
    return None


@register_attention("cudnn")
def cudnn_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None) -> Array:
    _check_axis(axis, mask)
    if (why := _cudnn_supported(q)) is not None:
        raise ValueError(f"attention_impl='cudnn' {why}")
    return dot_product_attention(q, k, v, axis=axis, mask=mask, implementation="cudnn")


def _splash_local(q: Array, k: Array, v: Array, *, axis: str, mask: Array | None) -> Array:
    if axis == "spatial":
        return splash_spatial(q, k, v, mask)
    return temporal_attention(q, k, v)


@register_attention("splash")
def splash_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None) -> Array:
    """Splash (spatial) / vidjax temporal kernel on q, k, v [B, T, S, H, D], per shard of the active mesh."""
    _check_axis(axis, mask)
    return per_shard(_splash_local, q, k, v, axis=axis, mask=mask)


def choose_impl(axis: str, q_shape: tuple[int, ...], k_shape: tuple[int, ...], dtype, platform: str) -> str:
    """The ``auto`` policy: which implementation to use on ``platform`` for these shapes.

    cpu (or any other platform): xla; Pallas runs only in interpret mode there.
    Tiny problems (spatial Sq*Sk < 128*128, temporal T = 1): xla; a kernel launch buys nothing.
    tpu: pallas (cross-attention too: one 128-key block, streamed over all T*S queries).
    gpu: spatial uses cuDNN flash attention for bf16/fp16 with a head dim it supports, else pallas
         (Triton); temporal uses pallas.
    The thresholds are defaults, not tuned on hardware (see kernels/README.md).
    """
    if platform not in ("tpu", "gpu"):
        return "xla"
    if axis == "spatial" and q_shape[2] * k_shape[2] < MIN_SPATIAL_PAIRS:
        return "xla"
    if axis == "temporal" and q_shape[1] < MIN_FRAMES:
        return "xla"
    head_dim = q_shape[-1]
    if (platform == "gpu" and axis == "spatial" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0 and head_dim <= 128):
        return "cudnn"
    return "pallas"


@register_attention("auto")
def auto_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None) -> Array:
    _check_axis(axis, mask)
    platform = jax.default_backend()
    impl = choose_impl(axis, q.shape, k.shape, q.dtype, platform)
    key = (platform, axis, tuple(q.shape), tuple(k.shape), str(q.dtype), impl)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("attention_impl=auto on %s: %s attention q%s k%s %s -> %s", platform, axis, tuple(q.shape),
                 tuple(k.shape), q.dtype, impl)
    if impl == "xla":
        return xla_attention(q, k, v, axis=axis, mask=mask)
    return ATTENTION_IMPLS[impl](q, k, v, axis=axis, mask=mask)
