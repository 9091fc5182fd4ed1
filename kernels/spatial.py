"""Spatial attention: flash attention over the S tokens of each frame, on [B, T, S, H, D].

``spatial_attention(q, k, v, mask=None)`` computes, for every (b, t, h),
``softmax(q[b, t, :, h] @ k[b, t, :, h].T / sqrt(D) + mask_bias[b]) @ v[b, t, :, h]``.
q: [B, T, Sq, H, D]; k, v: [B, T, Sk, H, D] (Sk may differ: cross-attention calls it with
T = 1, Sq = all T*S video tokens and Sk = the caption length); mask: [B, Sk], True = keep.
The output has q's shape and dtype; scores, softmax and accumulators are float32.

Forward = online-softmax (flash) attention. It saves the per-row log-sum-exp
``lse = m + log(l)`` [B, T, H, Sq]; the backward recomputes ``p = exp(s - lse)`` block by block
and never materialises the [Sq, Sk] matrix. Two backward kernels: dK/dV (one program per
key block, looping over query blocks) and dQ (one program per query block).

TPU (Mosaic) layout and tiling
  * D is zero-padded to Dp = 128*ceil(D/128) and the array viewed as [B, T, S, H*Dp]
    (merging the two minor axes is a row-major no-op, not a transpose). BlockSpec
    ``(None, None, block, Dp)`` with index map ``(b, t, i, h)`` reads head h of a tile of
    tokens straight from that layout.
  * Grid (B, T, H, Sq/bq, Sk/bk); the last axis is the sequential reduction.
  * Kernels work in *transposed* orientation: ``s^T = k @ q^T`` is [bk, bq] with queries
    on lanes, so the softmax statistics m, l and the saved lse are lane-dense rows [1, bq]
    (no 128x lane replication in HBM), and the key bias is a [bk, 1] column.
    The accumulator is ``acc^T`` [Dp, bq]; one transpose per query tile at the end.
  * lse is written as [B, T, H, 1, Sq_p]: block (1, bq) obeys the (8, 128) rule.
  * Sequences are padded to the block size; padded keys get bias -inf.

GPU (Triton) layout and tiling
  * Blocks ``(None, None, bq, None, Dp)`` on the 5-D array itself (head axis squeezed, no
    reshape). Dp = next power of two >= D; loads/stores are masked on d < D and on s < S,
    so nothing is padded in HBM. Grid (Sq/bq, B*T, H); the key loop runs inside the kernel.
  * lse and delta are [B, T, H, Sq] (contiguous per (b, t, h)).
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
    MASKED,
    NN,
    NT,
    TN,
    Blocks,
    check_block,
    dispatch,
    dot,
    gpu_head_dim,
    key_bias,
    next_pow2,
    pad_axis,
    softmax_scale,
    tpu_head_dim,
    tpu_seq_block,
    tpu_view,
)

Array = jax.Array

TPU_BLOCK_Q, TPU_BLOCK_K = 512, 512
GPU_BLOCK_Q, GPU_BLOCK_K = 64, 64  # fwd and bwd; small enough for D=128 in registers


def _row_dot(o: Array, do: Array) -> Array:
    """delta = rowsum(o * do) as [B, T, H, S] float32 (an elementwise fusion + reduce in XLA)."""
    return jnp.moveaxis((o.astype(jnp.float32) * do.astype(jnp.float32)).sum(-1), 3, 2)


# ======================================================================================
# TPU (Mosaic) kernels
# ======================================================================================


def _tpu_scores(q_ref, k_ref, bias_ref, scale: float) -> Array:
    """s^T = k @ q^T * scale (+ key bias): [bk, bq] float32."""
    st = dot(k_ref[...], q_ref[...], NT) * scale
    if bias_ref is not None:
        st = st + bias_ref[...]  # [bk, 1] broadcast over queries (lanes)
    return st


def _tpu_fwd_kernel(q_ref, k_ref, v_ref, *refs, scale: float, has_bias: bool):
    bias_ref = refs[0] if has_bias else None
    o_ref, lse_ref, m_sc, l_sc, acc_sc = refs[1:] if has_bias else refs
    j, nk = pl.program_id(4), pl.num_programs(4)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    st = _tpu_scores(q_ref, k_ref, bias_ref, scale)  # [bk, bq]
    m_prev = m_sc[...]  # [1, bq]
    m_new = jnp.maximum(m_prev, st.max(axis=0, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)  # 0 on the first block (m_prev = -inf, m_new finite)
    pt = jnp.exp(st - m_new)  # [bk, bq]
    l_sc[...] = alpha * l_sc[...] + pt.sum(axis=0, keepdims=True)
    v = v_ref[...]
    acc_sc[...] = alpha * acc_sc[...] + dot(v, pt.astype(v.dtype), TN)  # [Dp, bq]
    m_sc[...] = m_new

    @pl.when(j == nk - 1)
    def _finish():
        l = l_sc[...]
        o_ref[...] = (acc_sc[...] / l).T.astype(o_ref.dtype)  # [bq, Dp]
        lse_ref[...] = m_sc[...] + jnp.log(l)


def _tpu_geometry(q: Array, k: Array, blocks: Blocks):
    B, T, Sq, H, D = q.shape
    Sk = k.shape[2]
    align = 16  # sublane tile of bf16; also fine for f32
    bq, sq_p = tpu_seq_block(Sq, blocks.q or TPU_BLOCK_Q, align)
    bk, sk_p = tpu_seq_block(Sk, blocks.k or TPU_BLOCK_K, align)
    return B, T, Sq, Sk, H, D, tpu_head_dim(D), bq, sq_p, bk, sk_p


def _tpu_bias_spec(bias: Array, bk: int, key_axis: int):
    """BlockSpec for the [Bm, Sk_p, 1] key bias; ``key_axis`` = grid axis of the key block."""
    per_batch = bias.shape[0] > 1
    return pl.BlockSpec((None, bk, 1), lambda *g: (g[0] if per_batch else 0, g[key_axis], 0))


def _spatial_fwd_tpu(q, k, v, mask, *, blocks: Blocks, interpret: bool):
    B, T, Sq, Sk, H, D, Dp, bq, sq_p, bk, sk_p = _tpu_geometry(q, k, blocks)
    bias = key_bias(mask, B, Sk, sk_p)
    args = [tpu_view(q, sq_p, Dp), tpu_view(k, sk_p, Dp), tpu_view(v, sk_p, Dp)]
    q_spec = pl.BlockSpec((None, None, bq, Dp), lambda b, t, h, i, j: (b, t, i, h))
    kv_spec = pl.BlockSpec((None, None, bk, Dp), lambda b, t, h, i, j: (b, t, j, h))
    in_specs = [q_spec, kv_spec, kv_spec]
    if bias is not None:
        args.append(bias[..., None])
        in_specs.append(_tpu_bias_spec(bias, bk, key_axis=4))
    o, lse = pl.pallas_call(
        functools.partial(_tpu_fwd_kernel, scale=softmax_scale(D), has_bias=bias is not None),
        grid=(B, T, H, sq_p // bq, sk_p // bk),
        in_specs=in_specs,
        out_specs=[q_spec, pl.BlockSpec((None, None, None, 1, bq), lambda b, t, h, i, j: (b, t, h, 0, i))],
        out_shape=[
            jax.ShapeDtypeStruct((B, T, sq_p, H * Dp), q.dtype),
            jax.ShapeDtypeStruct((B, T, H, 1, sq_p), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((1, bq), jnp.float32), pltpu.VMEM((1, bq), jnp.float32),
                        pltpu.VMEM((Dp, bq), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="vidjax_spatial_fwd",
    )(*args)
    o = o.reshape(B, T, sq_p, H, Dp)[:, :, :Sq, :, :D]
    return o, lse[:, :, :, 0, :Sq]


def _tpu_bwd_terms(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, bias_ref, scale: float):
    """Recompute p^T and form ds^T = p^T * (dp^T - delta) for one (key block, query block)."""
    st = _tpu_scores(q_ref, k_ref, bias_ref, scale)  # [bk, bq]
    pt = jnp.exp(st - lse_ref[...])  # lse row [1, bq]; masked / padding keys -> exactly 0
    dpt = dot(v_ref[...], do_ref[...], NT)  # [bk, bq]
    return pt, pt * (dpt - delta_ref[...])


def _tpu_dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, scale: float, has_bias: bool):
    bias_ref = refs[0] if has_bias else None
    dk_ref, dv_ref, dk_sc, dv_sc = refs[1:] if has_bias else refs
    i, nq = pl.program_id(4), pl.num_programs(4)

    @pl.when(i == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    pt, dst = _tpu_bwd_terms(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, bias_ref, scale)
    do, q = do_ref[...], q_ref[...]
    dv_sc[...] += dot(pt.astype(do.dtype), do, NN)  # [bk, Dp]
    dk_sc[...] += dot(dst.astype(q.dtype), q, NN)

    @pl.when(i == nq - 1)
    def _finish():
        dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _tpu_dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, scale: float, has_bias: bool):
    bias_ref = refs[0] if has_bias else None
    dq_ref, dq_sc = refs[1:] if has_bias else refs
    j, nk = pl.program_id(4), pl.num_programs(4)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    _, dst = _tpu_bwd_terms(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, bias_ref, scale)
    k = k_ref[...]
    dq_sc[...] += dot(dst.astype(k.dtype), k, TN)  # [bq, Dp]

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _spatial_bwd_tpu(q, k, v, mask, o, lse, do, *, blocks: Blocks, interpret: bool):
    B, T, Sq, Sk, H, D, Dp, bq, sq_p, bk, sk_p = _tpu_geometry(q, k, blocks)
    scale = softmax_scale(D)
    bias = key_bias(mask, B, Sk, sk_p)
    has_bias = bias is not None
    delta = _row_dot(o, do)
    row = lambda x: pad_axis(x, 3, sq_p)[:, :, :, None, :]  # [B, T, H, Sq] -> [B, T, H, 1, Sq_p]
    qp, kp, vp, dop = (tpu_view(q, sq_p, Dp), tpu_view(k, sk_p, Dp), tpu_view(v, sk_p, Dp),
                       tpu_view(do, sq_p, Dp))
    args = [qp, kp, vp, dop, row(lse), row(delta)] + ([bias[..., None]] if has_bias else [])
    params = dict(scale=scale, has_bias=has_bias)
    n_q, n_k = sq_p // bq, sk_p // bk

    # dK, dV: grid (B, T, H, key block j, query block i); reduce over i.
    q_spec = pl.BlockSpec((None, None, bq, Dp), lambda b, t, h, j, i: (b, t, i, h))
    kv_spec = pl.BlockSpec((None, None, bk, Dp), lambda b, t, h, j, i: (b, t, j, h))
    row_spec = pl.BlockSpec((None, None, None, 1, bq), lambda b, t, h, j, i: (b, t, h, 0, i))
    specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    dk, dv = pl.pallas_call(
        functools.partial(_tpu_dkv_kernel, **params),
        grid=(B, T, H, n_k, n_q),
        in_specs=specs + ([_tpu_bias_spec(bias, bk, key_axis=3)] if has_bias else []),
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((bk, Dp), jnp.float32), pltpu.VMEM((bk, Dp), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="vidjax_spatial_bwd_dkv",
    )(*args)

    # dQ: grid (B, T, H, query block i, key block j); reduce over j.
    q_spec = pl.BlockSpec((None, None, bq, Dp), lambda b, t, h, i, j: (b, t, i, h))
    kv_spec = pl.BlockSpec((None, None, bk, Dp), lambda b, t, h, i, j: (b, t, j, h))
    row_spec = pl.BlockSpec((None, None, None, 1, bq), lambda b, t, h, i, j: (b, t, h, 0, i))
    specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    dq = pl.pallas_call(
        functools.partial(_tpu_dq_kernel, **params),
        grid=(B, T, H, n_q, n_k),
        in_specs=specs + ([_tpu_bias_spec(bias, bk, key_axis=4)] if has_bias else []),
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((bq, Dp), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="vidjax_spatial_bwd_dq",
    )(*args)

    unpad = lambda x, s: x.reshape(B, T, x.shape[2], H, Dp)[:, :, :s, :, :D]
    return unpad(dq, Sq), unpad(dk, Sk), unpad(dv, Sk)


# ======================================================================================
# GPU (Triton) kernels
# ======================================================================================


def _gpu_geometry(q: Array, k: Array, blocks: Blocks):
    B, T, Sq, H, D = q.shape
    Sk = k.shape[2]
    bq = min(blocks.q or GPU_BLOCK_Q, max(16, next_pow2(Sq)))
    bk = min(blocks.k or GPU_BLOCK_K, max(16, next_pow2(Sk)))
    return B, T, Sq, Sk, H, D, gpu_head_dim(D), bq, bk


def _gpu_load(ref, start, rows: int, n_valid: int, d: int, *, other=0.0):
    """Masked load of a [rows, Dp] tile starting at row ``start`` (rows >= n_valid, cols >= d -> 0)."""
    dp = ref.shape[-1]
    ok = ((start + jnp.arange(rows)) < n_valid)[:, None] & (jnp.arange(dp) < d)[None, :]
    return plgpu.load(ref.at[pl.ds(start, rows), :], mask=ok, other=other)


def _gpu_store(ref, start, value, n_valid: int, d: int):
    rows, dp = value.shape
    ok = ((start + jnp.arange(rows)) < n_valid)[:, None] & (jnp.arange(dp) < d)[None, :]
    plgpu.store(ref.at[pl.ds(start, rows), :], value.astype(ref.dtype), mask=ok)


def _gpu_vec(ref, start, rows: int, n_valid: int, other):
    ok = (start + jnp.arange(rows)) < n_valid
    return plgpu.load(ref.at[pl.ds(start, rows)], mask=ok, other=other)


def _gpu_key_bias(mask_ref, start, bk: int, sk: int) -> Array:
    """[bk] additive bias for keys start..start+bk: 0 keep, MASKED, -inf past the end."""
    valid = (start + jnp.arange(bk)) < sk
    if mask_ref is None:
        return jnp.where(valid, 0.0, -jnp.inf)
    keep = _gpu_vec(mask_ref, start, bk, sk, 0) != 0
    return jnp.where(valid, jnp.where(keep, 0.0, MASKED), -jnp.inf)


def _gpu_fwd_kernel(q_ref, k_ref, v_ref, mask_ref, o_ref, lse_ref, *, scale, sq, sk, d, bq, bk):
    start_q = pl.program_id(0) * bq
    q = _gpu_load(q_ref, 0, bq, sq - start_q, d)  # the block already starts at start_q

    def body(j, carry):
        acc, m_prev, l_prev = carry
        start_k = j * bk
        k = _gpu_load(k_ref, start_k, bk, sk, d)
        s = dot(q, k, NT) * scale + _gpu_key_bias(mask_ref, start_k, bk, sk)[None, :]
        m_new = jnp.maximum(m_prev, s.max(axis=1))
        alpha = jnp.exp(m_prev - m_new)
        p = jnp.exp(s - m_new[:, None])
        v = _gpu_load(v_ref, start_k, bk, sk, d)
        acc = alpha[:, None] * acc + dot(p.astype(v.dtype), v)
        return acc, m_new, alpha * l_prev + p.sum(axis=1)

    dp = q_ref.shape[-1]
    init = (jnp.zeros((bq, dp), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(0, pl.cdiv(sk, bk), body, init)
    _gpu_store(o_ref, 0, acc / l[:, None], sq - start_q, d)
    plgpu.store(lse_ref.at[pl.ds(0, bq)], m + jnp.log(l), mask=jnp.arange(bq) < sq - start_q)


def _gpu_specs(T: int, Dp: int, bq: int, sk_blk: int):
    """Specs for grid (query block n, b*T + t, h): q tile, whole k/v, lse/delta row, key mask."""
    bt = lambda g: (g // T, g % T)
    q_spec = pl.BlockSpec((None, None, bq, None, Dp), lambda n, g, h: (*bt(g), n, h, 0))
    kv_full = pl.BlockSpec((None, None, sk_blk, None, Dp), lambda n, g, h: (*bt(g), 0, h, 0))
    row_spec = pl.BlockSpec((None, None, None, bq), lambda n, g, h: (*bt(g), h, n))
    mask_spec = pl.BlockSpec((None, sk_blk), lambda n, g, h: (g // T, 0))
    return q_spec, kv_full, row_spec, mask_spec


def _gpu_params(d: int) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _spatial_fwd_gpu(q, k, v, mask, *, blocks: Blocks, interpret: bool):
    B, T, Sq, Sk, H, D, Dp, bq, bk = _gpu_geometry(q, k, blocks)
    sk_blk = pl.cdiv(Sk, bk) * bk  # key blocks overhang the array; loads are masked
    q_spec, kv_spec, row_spec, mask_spec = _gpu_specs(T, Dp, bq, sk_blk)
    m = None if mask is None else mask.astype(jnp.int32)
    o, lse = pl.pallas_call(
        functools.partial(_gpu_fwd_kernel, scale=softmax_scale(D), sq=Sq, sk=Sk, d=D, bq=bq, bk=bk),
        grid=(pl.cdiv(Sq, bq), B * T, H),
        in_specs=[q_spec, kv_spec, kv_spec, None if m is None else mask_spec],
        out_specs=[q_spec, row_spec],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, T, H, Sq), jnp.float32)],
        compiler_params=_gpu_params(D),
        interpret=interpret,
        name="vidjax_spatial_fwd",
    )(q, k, v, m)
    return o, lse


def _gpu_bwd_terms(q, k, v, do, lse, delta, mask_ref, start_k, bk, sk, scale):
    """p = exp(s - lse) and ds = p * (dp - delta) for a [bq, bk] block."""
    bias = _gpu_key_bias(mask_ref, start_k, bk, sk)
    p = jnp.exp(dot(q, k, NT) * scale + bias[None, :] - lse[:, None])  # masked / padding keys -> 0
    return p, p * (dot(do, v, NT) - delta[:, None])


def _gpu_dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, mask_ref, dk_ref, dv_ref, *,
                    scale, sq, sk, d, bq, bk):
    start_k = pl.program_id(0) * bk
    k = _gpu_load(k_ref, start_k, bk, sk, d)
    v = _gpu_load(v_ref, start_k, bk, sk, d)

    def body(i, carry):
        dk, dv = carry
        start_q = i * bq
        q = _gpu_load(q_ref, start_q, bq, sq, d)
        do = _gpu_load(do_ref, start_q, bq, sq, d)
        lse = _gpu_vec(lse_ref, start_q, bq, sq, 0.0)
        delta = _gpu_vec(delta_ref, start_q, bq, sq, 0.0)
        p, ds = _gpu_bwd_terms(q, k, v, do, lse, delta, mask_ref, start_k, bk, sk, scale)
        dv = dv + dot(p.astype(do.dtype), do, TN)
        dk = dk + dot(ds.astype(q.dtype), q, TN)
        return dk, dv

    dp = k_ref.shape[-1]
    zeros = jnp.zeros((bk, dp), jnp.float32)
    dk, dv = lax.fori_loop(0, pl.cdiv(sq, bq), body, (zeros, zeros))
    _gpu_store(dk_ref, start_k, dk * scale, sk, d)
    _gpu_store(dv_ref, start_k, dv, sk, d)


def _gpu_dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, mask_ref, dq_ref, *,
                   scale, sq, sk, d, bq, bk):
    start_q = pl.program_id(0) * bq
    n_q = sq - start_q  # valid query rows in this block
    q = _gpu_load(q_ref, 0, bq, n_q, d)
    do = _gpu_load(do_ref, 0, bq, n_q, d)
    lse = _gpu_vec(lse_ref, 0, bq, n_q, 0.0)
    delta = _gpu_vec(delta_ref, 0, bq, n_q, 0.0)

    def body(j, dq):
        start_k = j * bk
        k = _gpu_load(k_ref, start_k, bk, sk, d)
        v = _gpu_load(v_ref, start_k, bk, sk, d)
        _, ds = _gpu_bwd_terms(q, k, v, do, lse, delta, mask_ref, start_k, bk, sk, scale)
        return dq + dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, pl.cdiv(sk, bk), body, jnp.zeros(q.shape, jnp.float32))
    _gpu_store(dq_ref, 0, dq * scale, n_q, d)


def _spatial_bwd_gpu(q, k, v, mask, o, lse, do, *, blocks: Blocks, interpret: bool):
    B, T, Sq, Sk, H, D, Dp, bq, bk = _gpu_geometry(q, k, blocks)
    delta = _row_dot(o, do)
    m = None if mask is None else mask.astype(jnp.int32)
    params = dict(scale=softmax_scale(D), sq=Sq, sk=Sk, d=D, bq=bq, bk=bk)
    bt = lambda g: (g // T, g % T)
    sq_blk, sk_blk = pl.cdiv(Sq, bq) * bq, pl.cdiv(Sk, bk) * bk
    q_full = pl.BlockSpec((None, None, sq_blk, None, Dp), lambda n, g, h: (*bt(g), 0, h, 0))
    k_full = pl.BlockSpec((None, None, sk_blk, None, Dp), lambda n, g, h: (*bt(g), 0, h, 0))
    row_full = pl.BlockSpec((None, None, None, sq_blk), lambda n, g, h: (*bt(g), h, 0))
    mask_spec = pl.BlockSpec((None, sk_blk), lambda n, g, h: (g // T, 0))
    mask_spec = None if m is None else mask_spec
    args = (q, k, v, do, lse, delta, m)

    # dK, dV: one program per key block; every query block is visited inside the kernel.
    dk, dv = pl.pallas_call(
        functools.partial(_gpu_dkv_kernel, **params),
        grid=(pl.cdiv(Sk, bk), B * T, H),
        in_specs=[q_full, k_full, k_full, q_full, row_full, row_full, mask_spec],
        out_specs=[k_full, k_full],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_gpu_params(D),
        interpret=interpret,
        name="vidjax_spatial_bwd_dkv",
    )(*args)

    # dQ: one program per query block.
    q_spec, _, row_spec, _ = _gpu_specs(T, Dp, bq, sk_blk)
    dq = pl.pallas_call(
        functools.partial(_gpu_dq_kernel, **params),
        grid=(pl.cdiv(Sq, bq), B * T, H),
        in_specs=[q_spec, k_full, k_full, q_spec, row_spec, row_spec, mask_spec],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_gpu_params(D),
        interpret=interpret,
        name="vidjax_spatial_bwd_dq",
    )(*args)
    return dq, dk, dv


# ======================================================================================
# Public entry point with a custom VJP
# ======================================================================================

_FWD = {"tpu": _spatial_fwd_tpu, "gpu": _spatial_fwd_gpu}
_BWD = {"tpu": _spatial_bwd_tpu, "gpu": _spatial_bwd_gpu}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _spatial(q, k, v, mask, backend, blocks):
    return _spatial_fwd(q, k, v, mask, backend, blocks)[0]


def _spatial_fwd(q, k, v, mask, backend, blocks):
    impls = {name: functools.partial(fn, blocks=blocks) for name, fn in _FWD.items()}
    o, lse = dispatch(backend, impls, q, k, v, mask)
    return o, (q, k, v, mask, o, lse)


def _spatial_bwd(backend, blocks, res, do):
    q, k, v, mask, o, lse = res
    impls = {name: functools.partial(fn, blocks=blocks) for name, fn in _BWD.items()}
    dq, dk, dv = dispatch(backend, impls, q, k, v, mask, o, lse, do)
    return dq, dk, dv, None


_spatial.defvjp(_spatial_fwd, _spatial_bwd)


def spatial_attention(q: Array, k: Array, v: Array, *, mask: Array | None = None, backend: str | None = None,
                      block_q: int | None = None, block_k: int | None = None) -> Array:
    """Attention over S for each (b, t, h). q: [B, T, Sq, H, D], k/v: [B, T, Sk, H, D], mask: [B, Sk].

    ``backend``: None (per lowering platform), "tpu", "gpu", "tpu_interpret" or "gpu_interpret".
    ``block_q`` / ``block_k``: optional tile caps (powers of two; TPU uses multiples of 128 when the
    sequence is longer than the cap). Softmax scale is D**-0.5 of the given (unpadded) head dim; q is passed unscaled.
    """
    if q.ndim != 5 or k.shape != v.shape or k.shape[:2] + k.shape[3:] != q.shape[:2] + q.shape[3:]:
        raise ValueError(f"expected q [B,T,Sq,H,D], k=v [B,T,Sk,H,D]; got {q.shape}, {k.shape}, {v.shape}")
    check_block("block_q", block_q)
    check_block("block_k", block_k)
    if mask is not None:
        if mask.shape != (q.shape[0], k.shape[2]):
            raise ValueError(f"mask must be [B, Sk] = {(q.shape[0], k.shape[2])}; got {mask.shape}")
        # A batch element whose keys are all masked averages its keys uniformly (the XLA
        # reference's answer): that is attention with q = 0 and every key live, so the kernels
        # only ever see rows with a live key and their saved lse stays exact.
        mask = mask.astype(bool)
        empty = ~mask.any(axis=1)
        q = jnp.where(empty[:, None, None, None, None], jnp.zeros((), q.dtype), q)
        mask = mask | empty[:, None]
    return _spatial(q, k, v, mask, backend, Blocks(q=block_q, k=block_k))
