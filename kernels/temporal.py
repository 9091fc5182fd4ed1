"""Temporal attention: exact attention over the T frames at each position, on [B, T, S, H, D].

``temporal_attention(q, k, v)`` computes, for every (b, s, h),
``softmax(q[b, :, s, h] @ k[b, :, s, h].T / sqrt(D)) @ v[b, :, s, h]``; q, k, v, out:
[B, T, S, H, D]. T is small (1-64, any value), so each program keeps the whole T of a tile
of positions in fast memory and does one exact softmax (no online rescaling). The forward
saves the log-sum-exp [B, T, S, H] (float32); the backward recomputes p = exp(s - lse) and
produces dQ, dK and dV in a single kernel, since no reduction crosses programs.

TPU (Mosaic) layout and tiling
  * D is zero-padded to Dp = 128*ceil(D/128); the array is viewed as [B, T, S, H*Dp]
    (row-major merge of the minor axes, no transpose). One program = (b, h, tile of ``bs``
    positions): BlockSpec ``(None, T, bs, Dp)`` with index map ``(b, 0, i, h)``, i.e. a
    [T, bs, Dp] slab with the whole T.
  * In VMEM the slab is flattened to [T*bs, Dp] (bs is a multiple of 16, so this merge is
    tile-aligned) and the T x T problems of all bs positions are done as one MXU matmul
    ``s^T = k @ q^T`` [T*bs, T*bs], masked to its block-diagonal-by-position entries
    (row r and column c belong to positions r % bs and c % bs). This trades a factor bs of
    MXU work for large, aligned matmuls instead of bs tiny T x T ones; temporal attention
    is memory-bound (T/2 flop per byte at bf16), so the MXU has the slack.
  * Transposed orientation (queries on lanes) keeps lse lane-dense: it is written as
    [B, H, S/bs, 1, T*bs], in the kernel's own tile order, and re-laid out to
    [B, T, S, H] outside (an f32 array 1/D the size of q).

GPU (Triton) layout and tiling
  * BlockSpec ``(None, Tp, bs, None, Dp)`` on the 5-D array (head axis squeezed). Tp, Dp are
    powers of two >= 16; loads/stores are masked on t < T, d < D and s < S (no HBM padding).
    Grid (S/bs, B, H); the kernel loops over the bs positions of its tile and does a
    [Tp, Dp] x [Dp, Tp] ``tl.dot`` per position.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from .common import (
    NN,
    NT,
    TN,
    Blocks,
    check_block,
    dispatch,
    dot,
    gpu_head_dim,
    next_pow2,
    pad_axis,
    round_up,
    softmax_scale,
    tpu_head_dim,
    tpu_view,
)

Array = jax.Array

TPU_ROWS = 256  # target T*bs per TPU program
GPU_POSITIONS = 16  # positions per Triton program


# ======================================================================================
# TPU (Mosaic) kernels
# ======================================================================================


def _tpu_positions(t: int, s: int, override: int | None) -> tuple[int, int]:
    """(bs, padded S): bs is a power of two >= 16 dividing the padded S, with T*bs near TPU_ROWS."""
    s_pad = round_up(s, 16)
    target = override or max(16, TPU_ROWS // max(t, 1))
    bs = 16
    while bs * 2 <= min(target, s_pad) and s_pad % (bs * 2) == 0:
        bs *= 2
    return bs, s_pad


def _same_position(n: int, bs: int) -> Array:
    """[n, n] bool: rows and columns of the flattened [T*bs] axis that share a position (bs = 2^k)."""
    r = lax.broadcasted_iota(jnp.int32, (n, n), 0)
    c = lax.broadcasted_iota(jnp.int32, (n, n), 1)
    return (r & (bs - 1)) == (c & (bs - 1))


def _tpu_flat(ref) -> Array:
    t, bs, dp = ref.shape
    return ref[...].reshape(t * bs, dp)


def _tpu_scores(q2, k2, bs: int, scale: float) -> Array:
    """s^T [T*bs keys, T*bs queries], -inf between different positions."""
    st = dot(k2, q2, NT) * scale
    return jnp.where(_same_position(st.shape[0], bs), st, -jnp.inf)


def _tpu_fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale: float):
    t, bs, dp = q_ref.shape
    q2, k2, v2 = _tpu_flat(q_ref), _tpu_flat(k_ref), _tpu_flat(v_ref)
    st = _tpu_scores(q2, k2, bs, scale)
    m = st.max(axis=0, keepdims=True)  # [1, T*bs]
    pt = jnp.exp(st - m)
    l = pt.sum(axis=0, keepdims=True)
    ot = dot(v2, pt.astype(v2.dtype), TN) / l  # [Dp, T*bs]
    o_ref[...] = ot.T.reshape(t, bs, dp).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _tpu_bwd_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *, scale: float):
    t, bs, dp = q_ref.shape
    q2, k2, v2, do2 = _tpu_flat(q_ref), _tpu_flat(k_ref), _tpu_flat(v_ref), _tpu_flat(do_ref)
    pt = jnp.exp(_tpu_scores(q2, k2, bs, scale) - lse_ref[...])  # [keys, queries]
    dst = pt * (dot(v2, do2, NT) - delta_ref[...])
    dv_ref[...] = dot(pt.astype(do2.dtype), do2, NN).reshape(t, bs, dp).astype(dv_ref.dtype)
    dk_ref[...] = (dot(dst.astype(q2.dtype), q2, NN) * scale).reshape(t, bs, dp).astype(dk_ref.dtype)
    dq_ref[...] = (dot(dst.astype(k2.dtype), k2, TN) * scale).reshape(t, bs, dp).astype(dq_ref.dtype)


def _tpu_geometry(q: Array, blocks: Blocks):
    B, T, S, H, D = q.shape
    bs, s_pad = _tpu_positions(T, S, blocks.positions)
    return B, T, S, H, D, tpu_head_dim(D), bs, s_pad


def _tpu_params(T: int, bs: int, Dp: int, itemsize: int) -> pltpu.CompilerParams:
    """Parallel grid; scoped-VMEM limit raised when the [T*bs, T*bs] temporaries need it (T = 64
    gives 1024 x 1024 f32 score matrices). Estimate: ~6 such matrices (scores, probabilities,
    dp, ds, the iota masks) + 7 double-buffered slabs; 1.5x headroom, capped below 100 MiB."""
    rows = T * bs
    need = 6 * rows * rows * 4 + 7 * 2 * rows * Dp * itemsize
    limit = None if need < 12 * 2**20 else min(int(need * 1.5), 100 * 2**20)
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"), vmem_limit_bytes=limit)


def _tpu_specs(T, bs, Dp):
    slab = pl.BlockSpec((None, T, bs, Dp), lambda b, h, i: (b, 0, i, h))
    row = pl.BlockSpec((None, None, None, 1, T * bs), lambda b, h, i: (b, h, i, 0, 0))
    return slab, row


def _tpu_rows_to_canonical(x: Array, T: int, S: int, bs: int) -> Array:
    """[B, H, S_p/bs, 1, T*bs] (kernel tile order) -> [B, T, S, H]."""
    B, H, n = x.shape[:3]
    return x.reshape(B, H, n, T, bs).transpose(0, 3, 2, 4, 1).reshape(B, T, n * bs, H)[:, :, :S]


def _tpu_rows_from_canonical(x: Array, s_pad: int, bs: int) -> Array:
    """[B, T, S, H] -> [B, H, S_p/bs, 1, T*bs] (zero-padded positions)."""
    B, T, _, H = x.shape
    x = pad_axis(x, 2, s_pad).reshape(B, T, s_pad // bs, bs, H)
    return x.transpose(0, 4, 2, 1, 3).reshape(B, H, s_pad // bs, 1, T * bs)


def _temporal_fwd_tpu(q, k, v, *, blocks: Blocks, interpret: bool):
    B, T, S, H, D, Dp, bs, s_pad = _tpu_geometry(q, blocks)
    slab, row = _tpu_specs(T, bs, Dp)
    args = [tpu_view(x, s_pad, Dp) for x in (q, k, v)]
    o, lse = pl.pallas_call(
        functools.partial(_tpu_fwd_kernel, scale=softmax_scale(D)),
        grid=(B, H, s_pad // bs),
        in_specs=[slab, slab, slab],
        out_specs=[slab, row],
        out_shape=[jax.ShapeDtypeStruct(args[0].shape, q.dtype),
                   jax.ShapeDtypeStruct((B, H, s_pad // bs, 1, T * bs), jnp.float32)],
        compiler_params=_tpu_params(T, bs, Dp, q.dtype.itemsize),
        interpret=interpret,
        name="vidjax_temporal_fwd",
    )(*args)
    o = o.reshape(B, T, s_pad, H, Dp)[:, :, :S, :, :D]
    return o, _tpu_rows_to_canonical(lse, T, S, bs)


def _temporal_bwd_tpu(q, k, v, o, lse, do, *, blocks: Blocks, interpret: bool):
    B, T, S, H, D, Dp, bs, s_pad = _tpu_geometry(q, blocks)
    slab, row = _tpu_specs(T, bs, Dp)
    delta = (o.astype(jnp.float32) * do.astype(jnp.float32)).sum(-1)
    args = [tpu_view(x, s_pad, Dp) for x in (q, k, v, do)]
    args += [_tpu_rows_from_canonical(x, s_pad, bs) for x in (lse, delta)]
    grads = pl.pallas_call(
        functools.partial(_tpu_bwd_kernel, scale=softmax_scale(D)),
        grid=(B, H, s_pad // bs),
        in_specs=[slab] * 4 + [row, row],
        out_specs=[slab] * 3,
        out_shape=[jax.ShapeDtypeStruct(args[0].shape, x.dtype) for x in (q, k, v)],
        compiler_params=_tpu_params(T, bs, Dp, q.dtype.itemsize),
        interpret=interpret,
        name="vidjax_temporal_bwd",
    )(*args)
    return tuple(g.reshape(B, T, s_pad, H, Dp)[:, :, :S, :, :D] for g in grads)


# ======================================================================================
# GPU (Triton) kernels
# ======================================================================================


def _gpu_geometry(q: Array, blocks: Blocks):
    B, T, S, H, D = q.shape
    bs = min(blocks.positions or GPU_POSITIONS, next_pow2(S))
    return B, T, S, H, D, max(16, next_pow2(T)), gpu_head_dim(D), bs


def _gpu_tile_mask(tp: int, dp: int, t: int, d: int, valid) -> Array:
    return (jnp.arange(tp) < t)[:, None] & (jnp.arange(dp) < d)[None, :] & valid


def _gpu_fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, t, s, d, bs):
    tp, _, dp = q_ref.shape
    start = pl.program_id(0) * bs
    key_ok = (jnp.arange(tp) < t)[None, :]

    def body(j, carry):
        valid = start + j < s  # position inside the array (the last tile may overhang)
        ok = _gpu_tile_mask(tp, dp, t, d, valid)
        q = plgpu.load(q_ref.at[:, j, :], mask=ok, other=0.0)  # [Tp, Dp]
        k = plgpu.load(k_ref.at[:, j, :], mask=ok, other=0.0)
        v = plgpu.load(v_ref.at[:, j, :], mask=ok, other=0.0)
        sc = jnp.where(key_ok, dot(q, k, NT) * scale, -jnp.inf)  # [Tp, Tp]
        m = sc.max(axis=1)
        p = jnp.exp(sc - m[:, None])
        l = p.sum(axis=1)
        o = dot(p.astype(v.dtype), v) / l[:, None]
        plgpu.store(o_ref.at[:, j, :], o.astype(o_ref.dtype), mask=ok)
        plgpu.store(lse_ref.at[:, j], m + jnp.log(l), mask=(jnp.arange(tp) < t) & valid)
        return carry

    lax.fori_loop(0, bs, body, 0)


def _gpu_bwd_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, dq_ref, dk_ref, dv_ref, *, scale, t, s, d, bs):
    tp, _, dp = q_ref.shape
    start = pl.program_id(0) * bs
    key_ok = (jnp.arange(tp) < t)[None, :]

    def body(j, carry):
        valid = start + j < s
        ok = _gpu_tile_mask(tp, dp, t, d, valid)
        q, k, v, o, do = (plgpu.load(r.at[:, j, :], mask=ok, other=0.0) for r in (q_ref, k_ref, v_ref, o_ref, do_ref))
        lse = plgpu.load(lse_ref.at[:, j], mask=(jnp.arange(tp) < t) & valid, other=0.0)
        delta = (o.astype(jnp.float32) * do.astype(jnp.float32)).sum(axis=1)
        p = jnp.exp(jnp.where(key_ok, dot(q, k, NT) * scale, -jnp.inf) - lse[:, None])  # [Tp, Tp]
        ds = p * (dot(do, v, NT) - delta[:, None])
        plgpu.store(dv_ref.at[:, j, :], dot(p.astype(do.dtype), do, TN).astype(dv_ref.dtype), mask=ok)
        plgpu.store(dk_ref.at[:, j, :], (dot(ds.astype(q.dtype), q, TN) * scale).astype(dk_ref.dtype), mask=ok)
        plgpu.store(dq_ref.at[:, j, :], (dot(ds.astype(k.dtype), k) * scale).astype(dq_ref.dtype), mask=ok)
        return carry

    lax.fori_loop(0, bs, body, 0)


def _gpu_specs(Tp, bs, Dp):
    slab = pl.BlockSpec((None, Tp, bs, None, Dp), lambda i, b, h: (b, 0, i, h, 0))
    rows = pl.BlockSpec((None, Tp, bs, None), lambda i, b, h: (b, 0, i, h))
    return slab, rows


def _temporal_fwd_gpu(q, k, v, *, blocks: Blocks, interpret: bool):
    B, T, S, H, D, Tp, Dp, bs = _gpu_geometry(q, blocks)
    slab, rows = _gpu_specs(Tp, bs, Dp)
    return pl.pallas_call(
        functools.partial(_gpu_fwd_kernel, scale=softmax_scale(D), t=T, s=S, d=D, bs=bs),
        grid=(pl.cdiv(S, bs), B, H),
        in_specs=[slab, slab, slab],
        out_specs=[slab, rows],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, T, S, H), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="vidjax_temporal_fwd",
    )(q, k, v)


def _temporal_bwd_gpu(q, k, v, o, lse, do, *, blocks: Blocks, interpret: bool):
    B, T, S, H, D, Tp, Dp, bs = _gpu_geometry(q, blocks)
    slab, rows = _gpu_specs(Tp, bs, Dp)
    return tuple(pl.pallas_call(
        functools.partial(_gpu_bwd_kernel, scale=softmax_scale(D), t=T, s=S, d=D, bs=bs),
        grid=(pl.cdiv(S, bs), B, H),
        in_specs=[slab] * 5 + [rows],
        out_specs=[slab] * 3,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="vidjax_temporal_bwd",
    )(q, k, v, o, do, lse))


# ======================================================================================
# Public entry point with a custom VJP
# ======================================================================================

_FWD = {"tpu": _temporal_fwd_tpu, "gpu": _temporal_fwd_gpu}
_BWD = {"tpu": _temporal_bwd_tpu, "gpu": _temporal_bwd_gpu}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _temporal(q, k, v, backend, blocks):
    return _temporal_fwd(q, k, v, backend, blocks)[0]


def _temporal_fwd(q, k, v, backend, blocks):
    impls = {name: functools.partial(fn, blocks=blocks) for name, fn in _FWD.items()}
    o, lse = dispatch(backend, impls, q, k, v)
    return o, (q, k, v, o, lse)


def _temporal_bwd(backend, blocks, res, do):
    impls = {name: functools.partial(fn, blocks=blocks) for name, fn in _BWD.items()}
    return dispatch(backend, impls, *res, do)


_temporal.defvjp(_temporal_fwd, _temporal_bwd)


def temporal_attention(q: Array, k: Array, v: Array, *, backend: str | None = None,
                       block_positions: int | None = None) -> Array:
    """Attention over T for each (b, s, h). q, k, v: [B, T, S, H, D] -> [B, T, S, H, D].

    ``backend``: None (per lowering platform), "tpu", "gpu", "tpu_interpret" or "gpu_interpret".
    ``block_positions``: optional cap on the positions per program (a power of two >= 16).
    """
    if q.ndim != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"expected q, k, v [B,T,S,H,D] of one shape; got {q.shape}, {k.shape}, {v.shape}")
    check_block("block_positions", block_positions)
    return _temporal(q, k, v, backend, Blocks(positions=block_positions))
