"""``attention_impl="splash"``: JAX's TPU splash attention for spatial / cross attention.

Splash wants [H, S, D] per batch element with S a multiple of its 128-wide blocks, so this
path pays what the vidjax kernels avoid: a transpose [B, T, S, H, D] -> [B*T, H, S, D] in
HBM before and after, and padding S to a multiple of 128. The key mask and the padding
become splash segment ids (query id 1; key id 1 = keep, 0 = masked or padding). Splash
needs at least one live key per row, so a batch element whose keys are all masked runs
with all its real keys live and its output is replaced by the uniform key average, the
XLA reference's answer for that case. Temporal attention (T < 128) does not fit splash's
blocks and uses the vidjax Pallas temporal kernel. Off TPU, splash runs in interpret mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from .common import pad_axis, softmax_scale, tpu_seq_block

Array = jax.Array

SPLASH_BLOCK = 512


@functools.lru_cache(maxsize=32)
def _kernel(heads: int, sq: int, sk_len: int, bq: int, bk: int, interpret: bool):
    mask = sm.MultiHeadMask([sm.FullMask((sq, sk_len))] * heads)
    blocks = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                           block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    with jax.ensure_compile_time_eval():  # concrete mask metadata, safe to cache across traces
        return sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_spatial(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
    """Spatial attention via splash. q: [B, T, Sq, H, D], k/v: [B, T, Sk, H, D], mask: [B, Sk]."""
    B, T, Sq, H, D = q.shape
    Sk = k.shape[2]
    bq, sq_p = tpu_seq_block(Sq, SPLASH_BLOCK, 128)
    bk, sk_p = tpu_seq_block(Sk, SPLASH_BLOCK, 128)
    kernel = _kernel(H, sq_p, sk_p, bq, bk, jax.default_backend() != "tpu")

    keep = jnp.ones((B, Sk), bool) if mask is None else mask.astype(bool)
    empty = ~keep.any(axis=1)  # [B] rows with no live key
    live = keep | empty[:, None]
    kv_ids = pad_axis(live.astype(jnp.int32), 1, sk_p)  # padding -> 0
    kv_ids = jnp.repeat(kv_ids, T, axis=0)  # [B*T, Sk_p]
    q_ids = jnp.ones((B * T, sq_p), jnp.int32)

    def heads_major(x, s_pad):  # [B, T, S, H, D] -> [B*T, H, S_p, D]
        return pad_axis(x, 2, s_pad).transpose(0, 1, 3, 2, 4).reshape(B * T, H, s_pad, D)

    qs = (q * np.asarray(softmax_scale(D), q.dtype)).astype(q.dtype)  # splash does not scale
    run = lambda qq, kk, vv, qi, ki: kernel(qq, kk, vv, segment_ids=sk.SegmentIds(q=qi, kv=ki))
    o = jax.vmap(run)(heads_major(qs, sq_p), heads_major(k, sk_p), heads_major(v, sk_p), q_ids, kv_ids)
    o = o.reshape(B, T, H, sq_p, D).transpose(0, 1, 3, 2, 4)[:, :, :Sq]
    if mask is None:
        return o
    uniform = jnp.broadcast_to(v.mean(axis=2, keepdims=True), o.shape).astype(o.dtype)
    return jnp.where(empty[:, None, None, None, None], uniform, o)
