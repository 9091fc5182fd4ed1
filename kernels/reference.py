"""XLA reference for factorized attention: ``jax.nn.dot_product_attention`` on [B, T, S, H, D].

``jax.nn.dot_product_attention`` wants [batch, length, heads, D] ("BTNH"):

* spatial: [B, T, S, H, D] -> [B*T, S, H, D] is a free reshape (S is already the length axis);
* temporal: the length axis is T, so [B, T, S, H, D] -> [B, S, T, H, D] -> [B*S, T, H, D]
  needs a transpose in HBM before and after; exactly the cost the Pallas kernels avoid.

This is the test oracle (``implementation="xla"``) and the body of ``attention_impl="cudnn"``
(``implementation="cudnn"``). The mask is a key mask [B, Sk], True = keep; masked logits are
filled with one large negative value, so a row with every key masked averages its keys
uniformly (same convention as ``vidjax.models.layers.xla_attention``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def dot_product_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None,
                          implementation: str | None = "xla") -> Array:
    """Softmax attention over S ("spatial") or T ("temporal") of q, k, v: [B, T, S, H, D]."""
    B, T, Sq, H, D = q.shape
    if axis == "spatial":
        Sk = k.shape[2]
        fold = lambda x: x.reshape(B * T, x.shape[2], H, D)
        m = None
        if mask is not None:
            m = jnp.broadcast_to(mask.astype(bool)[:, None, None, None, :], (B, T, 1, 1, Sk)).reshape(B * T, 1, 1, Sk)
        o = jax.nn.dot_product_attention(fold(q), fold(k), fold(v), mask=m, implementation=implementation)
        return o.reshape(B, T, Sq, H, D)
    if axis == "temporal":
        if mask is not None:
            raise ValueError("temporal attention takes no key mask")
        fold = lambda x: x.transpose(0, 2, 1, 3, 4).reshape(B * Sq, T, H, D)
        o = jax.nn.dot_product_attention(fold(q), fold(k), fold(v), implementation=implementation)
        return o.reshape(B, Sq, T, H, D).transpose(0, 2, 1, 3, 4)
    raise ValueError(f"axis={axis!r}; expected 'spatial' or 'temporal'")


def reference_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None) -> Array:
    """The test oracle: the XLA path computed in float32 (returned in float32)."""
    f32 = lambda x: x.astype(jnp.float32)
    return dot_product_attention(f32(q), f32(k), f32(v), axis=axis, mask=mask, implementation="xla")
