"""Building blocks shared by every transformer in vidjax: the one place for each idea.

Shapes: ``B`` batch, ``T`` frames, ``S`` tokens per frame, ``N`` any token axis,
``L`` caption tokens, ``C`` model width, ``H`` heads, ``D`` head dim.

Sections: (1) initialisers and linear layers, (2) attention, (3) MLP and
modulation, (4) embeddings, (5) fixed sin/cos tables.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vidjax.parallel.rules import axis_size, constrain
from vidjax.parallel.sequence import parallel_attention

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Initialisers and linear layers
# --------------------------------------------------------------------------------------

xavier = nnx.initializers.xavier_uniform()
normal02 = nnx.initializers.normal(0.02)
zeros = nnx.initializers.zeros_init()


class Buffer(nnx.Variable):
    """A fixed tensor that is saved with the model but never trained (e.g. ``y_embedding``)."""


LINEAR_PRODUCT = "linear_product"  # checkpoint name of a linear layer's x @ w (remat "dots" saves it)


def dot_general_f32_accumulate(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                               preferred_element_type=None, **kwargs) -> Array:
    """``lax.dot_general`` for the linear layers: float32 sums, one rounding at the end, 2-D weight gradients.

    A linear's product ``x @ w`` (x: [..., din], w: [din, dout]) goes through ``_linear``, whose backward pass
    is written out:

    - Mixed precision as accelerators do it: a bfloat16 layer multiplies bfloat16 inputs into float32 sums and
      rounds the result once, in the forward pass and in both backward products. On GPU and TPU that is what a
      bfloat16 dot does anyway. XLA's CPU backend takes its bfloat16 (AVX512-BF16) matmul kernels only for this
      form, about 1.5x its float32 rate on this machine; a plain bfloat16 dot, or the float32 cotangent
      products autodiff would otherwise make, run in float32.
    - A float32 layer's weight gradient is one 2-D product, x and the cotangent flattened to [tokens, din]
      and [tokens, dout], with autodiff's sums. Autodiff contracts all the leading axes at once, and XLA's CPU
      backend then copies the operands into a transposed layout first: the float32 mid step of
      ``benchmarks/step_vs_torch.py`` had 314 copies, 253 this way, and took about 0.85x the time. (Bfloat16
      layers showed no gain beyond the noise, so they contract in place.) Under sequence parallelism the token
      axes are split across devices and cannot merge without an all-gather; there the product contracts the
      leading axes in place too.

    Any other dot (batched, several contracted axes, or an ``out_sharding`` given) is a plain
    ``lax.dot_general``.
    """
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs, rhs))
    (contract_l, contract_r), batch = dimension_numbers
    plain_linear = (tuple(contract_l) == (lhs.ndim - 1,) and tuple(contract_r) == (0,) and rhs.ndim == 2
                    and not batch[0] and not batch[1] and lhs.dtype == rhs.dtype == out_dtype
                    and all(v is None for v in kwargs.values()))  # e.g. an out_sharding: left to lax
    if not plain_linear:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
    # merge the leading axes only if the batch axis alone may be split across devices: it leads
    flat = lhs.dtype == jnp.float32 and axis_size("frames") == 1 and axis_size("tokens") == 1
    return checkpoint_name(_linear(lhs, rhs, precision, flat), LINEAR_PRODUCT)  # remat "dots" keeps it as a dot


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _linear(x: Array, w: Array, precision, flat: bool) -> Array:
    """``x @ w`` (x: [..., din], w: [din, dout], same dtype) with float32 accumulation."""
    return jnp.matmul(x, w, precision=precision, preferred_element_type=jnp.float32).astype(x.dtype)


def _linear_fwd(x: Array, w: Array, precision, flat: bool):
    return _linear(x, w, precision, flat), (x, w)


def _linear_bwd(precision, flat: bool, res, g: Array):
    x, w = res
    g = g.astype(x.dtype)
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision,
                             preferred_element_type=jnp.float32)
    if flat:  # [tokens, din], [tokens, dout]
        x, g = rearrange(x, "... c -> (...) c"), rearrange(g, "... c -> (...) c")
    lead = tuple(range(x.ndim - 1))
    dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())), precision, preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_linear.defvjp(_linear_fwd, _linear_bwd)


def sum_f32(g: Array, axes: tuple[int, ...]) -> Array:
    """``g`` summed over ``axes`` in float32; g: [..., C] -> g's other axes. A dot with ones when C is kept.

    XLA's CPU backend (where YNNPACK does not take the reduce, as under the dot-only option) turns a large
    float reduce into a precision-keeping tree of strided reduce-windows, which are slow (a [16, 64, 512]
    bfloat16 sum: 0.94 ms as a reduce, 0.21 ms as this dot). A dot with ones accumulates in float32 like the
    matmuls around it; the kept axes other than C are the dot's batch axes, so no operand is transposed.
    Float32 inputs ask for full precision (TPUs would otherwise round them to bfloat16).
    """
    if not axes:
        return g.astype(jnp.float32)
    if g.ndim - 1 in axes:  # the last axis is summed too: a plain float32 reduce
        return jnp.sum(g.astype(jnp.float32), axis=axes)
    batch = tuple(i for i in range(g.ndim - 1) if i not in axes)
    ones = jnp.ones(g.shape[:-1], g.dtype)
    precision = jax.lax.Precision.HIGHEST if g.dtype == jnp.float32 else None
    return jax.lax.dot_general(ones, g, ((axes, axes), (batch, batch)), precision=precision,
                               preferred_element_type=jnp.float32)


def add_bias(y: Array, b: Array) -> Array:
    """``y + b`` over the last axis, in y's dtype; a low-precision y's bias gradient is summed by ``sum_f32``.

    Autodiff would sum a bfloat16 cotangent over every token with a reduce (slow on XLA's CPU backend, see
    ``sum_f32``; 8% of the bfloat16 mid step of ``benchmarks/step_vs_torch.py``), and round the sum to
    bfloat16 on its way to the float32 parameter. Float32 layers keep autodiff's reduce: with XLA's default
    CPU options it is a fast YNNPACK reduction, and a dot there let XLA fuse the GELU backward into the
    transposed copy feeding fc1's weight gradient (the float32 mid step's op time 1.54 -> 1.99 s).
    """
    return y + b if y.dtype == b.dtype == jnp.float32 else _add_bias_f32_grad(y, b)


@jax.custom_vjp
def _add_bias_f32_grad(y: Array, b: Array) -> Array:
    return y + b.astype(y.dtype)


def _add_bias_fwd(y: Array, b: Array):
    return _add_bias_f32_grad(y, b), b


def _add_bias_bwd(b: Array, g: Array):
    return g, sum_f32(g, tuple(range(g.ndim - 1))).astype(b.dtype)


_add_bias_f32_grad.defvjp(_add_bias_fwd, _add_bias_bwd)


class Linear(nnx.Linear):
    """``nnx.Linear`` (same parameters, same maths) whose bias goes through ``add_bias``."""

    def __call__(self, inputs: Array, out_sharding=None) -> Array:
        kernel = self.kernel[...]
        inputs, kernel = self.promote_dtype((inputs, kernel), dtype=self.dtype)
        y = self.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision,
                             out_sharding=out_sharding)
        return y if self.bias is None else add_bias(y, self.bias[...])


def linear(
    din: int,
    dout: int,
    axes: tuple[str | None, str | None],
    rngs: nnx.Rngs,
    *,
    init: Callable = xavier,
    bias: bool = True,
    dtype=None,
    param_dtype=jnp.float32,
) -> nnx.Linear:
    """``Linear`` whose kernel ``[din, dout]`` carries logical axis names ``axes``."""
    return Linear(
        din,
        dout,
        use_bias=bias,
        kernel_init=nnx.with_partitioning(init, axes),
        bias_init=nnx.with_partitioning(zeros, (axes[1],)),
        dtype=dtype,
        param_dtype=param_dtype,
        dot_general=dot_general_f32_accumulate,
        rngs=rngs,
    )


def layer_norm(x: Array, eps: float = 1e-6) -> Array:
    """LayerNorm without affine parameters, computed in float32 (Open-Sora's ``norm1/norm2``)."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale (used for STDiT3 qk-norm), fp32 inside."""

    def __init__(self, dim: int, eps: float = 1e-6, *, param_dtype=jnp.float32):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
        return xf.astype(x.dtype) * self.weight[...].astype(x.dtype)


# --------------------------------------------------------------------------------------
# 2. Attention
# --------------------------------------------------------------------------------------

ATTENTION_IMPLS: dict[str, Callable] = {}


def register_attention(name: str):
    """Register a factorized attention implementation.

    ``f(q, k, v, *, axis, mask) -> o`` with q, k, v: [B, T, S, H, D] and ``axis`` either
    ``"spatial"`` (attend over S within each frame) or ``"temporal"`` (over T at each position).
    ``mask``: [B, S_k] key mask (True = keep), spatial only.
    """

    def wrap(fn):
        ATTENTION_IMPLS[name] = fn
        return fn

    return wrap


# per attended axis: q/k/v [B, T, S, H, D] -> heads-major [batch..., H, N, D] with N the attended axis, and back
_TO_HEADS = {"spatial": (0, 1, 3, 2, 4), "temporal": (0, 2, 3, 1, 4)}


@register_attention("xla")
def xla_attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None,
                  bias: Array | None = None, scale: float | None = None) -> Array:
    """Exact softmax attention over one axis of [B, T, S, H, D]; scores and softmax in float32.

    This is the reference every other implementation is tested against. ``bias``: additive logits
    [B or 1, H, N_q, N_k] over the attended axis (T5's relative position bias, a causal mask);
    ``scale``: logit scale, default ``D ** -0.5`` (T5 uses 1.0).

    q, k and v are first copied heads-major, [B, T, H, S, D] (spatial) or [B, S, H, T, D] (temporal), so each
    product is a plain batched matmul over contiguous [N, D] tiles, and without ``bias`` the gradient is
    ``_softmax_attention``'s written-out backward. On XLA's CPU backend the float32 mid step of
    ``benchmarks/step_vs_torch.py`` took 0.95x the time with the layout alone and 0.92x with both, against
    contracting the native layout in place with autodiff's gradient (both forms alternating in one process).
    """
    if axis not in _TO_HEADS:
        raise ValueError(f"axis={axis!r}; expected 'spatial' or 'temporal'")
    if axis == "temporal" and mask is not None:
        raise ValueError("temporal attention takes no key mask")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    perm = _TO_HEADS[axis]
    qh, kh, vh = (jnp.transpose(a, perm) for a in (q * scale, k, v))
    if bias is None and q.dtype == k.dtype == v.dtype:
        out = _softmax_attention(qh, kh, vh, mask)
    else:
        out = _attention_forward(qh, kh, vh, mask, bias)[0]
    return jnp.transpose(out, [perm.index(i) for i in range(5)])


def _attention_forward(q: Array, k: Array, v: Array, mask: Array | None,
                       bias: Array | None = None) -> tuple[Array, Array]:
    """Heads-major q (scaled), k, v: [B, X, H, N, D] -> (output in v's dtype, float32 probabilities [..., N, N_k])."""
    logits = jnp.einsum("bxhqd,bxhkd->bxhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias[:, None].astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bxhqk,bxhkd->bxhqd", probs.astype(v.dtype), v), probs


@jax.custom_vjp
def _softmax_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    """``_attention_forward``'s output, with the gradient written as flash attention's backward computes it.

    dV = Pᵀ dO, dP = dO Vᵀ, dS = P (dP - rowsum(dO ∘ O)), dQ = dS K, dK = dSᵀ Q, with P and dS in float32.
    Against autodiff this saves a pass over the [N, N_k] scores (the softmax's own backward). For bfloat16
    q/k/v the four products take bfloat16 inputs into float32 sums, as on GPUs; autodiff would run them in
    float32 (or with bfloat16 sums), and XLA's CPU backend runs this form on its bfloat16 kernels (about 0.7x
    the gradient time of a 2×8×256-token, 4-head spatial attention, measured on the native layout before the
    heads-major copies).
    """
    return _attention_forward(q, k, v, mask)[0]


def _softmax_attention_fwd(q, k, v, mask):
    out, probs = _attention_forward(q, k, v, mask)
    return out, (q, k, v, mask, probs, out)


def _softmax_attention_bwd(res, d_out):
    q, k, v, mask, probs, out = res
    dt, f32 = v.dtype, jnp.float32
    dv = jnp.einsum("bxhqk,bxhqd->bxhkd", probs.astype(dt), d_out, preferred_element_type=f32)
    d_probs = jnp.einsum("bxhqd,bxhkd->bxhqk", d_out, v, preferred_element_type=f32)
    row = jnp.sum(d_out.astype(f32) * out.astype(f32), -1, keepdims=True)  # Σ_k P dP, per query
    d_logits = (probs * (d_probs - row)).astype(dt)
    dq = jnp.einsum("bxhqk,bxhkd->bxhqd", d_logits, k, preferred_element_type=f32)
    dk = jnp.einsum("bxhqk,bxhqd->bxhkd", d_logits, q, preferred_element_type=f32)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(dt), None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def attention(q: Array, k: Array, v: Array, *, axis: str = "spatial", mask: Array | None = None,
              impl: str = "xla", bias: Array | None = None, scale: float | None = None) -> Array:
    """Dispatch to a registered implementation. q, k, v: [B, T, S, H, D] (k, v may have another S).

    ``bias`` [B or 1, H, N_q, N_k] and ``scale`` are passed on only when set (see ``xla_attention``).
    """
    if impl not in ATTENTION_IMPLS:
        import vidjax.kernels  # noqa: F401  (registers the Pallas / cuDNN / auto implementations)
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={impl!r}; expected one of {sorted(ATTENTION_IMPLS)}")
    extra = {name: val for name, val in (("bias", bias), ("scale", scale)) if val is not None}
    return ATTENTION_IMPLS[impl](q, k, v, axis=axis, mask=mask, **extra)


def apply_rope(x: Array, positions: Array, axis: int, theta: float = 1e4) -> Array:
    """Rotary embedding with interleaved pairs (lucidrains / STDiT3), along ``axis`` of x: [..., D]."""
    d = x.shape[-1]
    freqs = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # [D/2]
    ang = jnp.repeat(positions.astype(jnp.float32)[:, None] * freqs[None], 2, axis=-1)  # [N, D], pairs (d r)
    shape = [1] * x.ndim
    shape[axis], shape[-1] = x.shape[axis], d
    ang = ang.reshape(shape)
    pairs = rearrange(x.astype(jnp.float32), "... (d r) -> ... d r", r=2)
    rotated = rearrange(jnp.stack([-pairs[..., 1], pairs[..., 0]], -1), "... d r -> ... (d r)")
    return (x.astype(jnp.float32) * jnp.cos(ang) + rotated * jnp.sin(ang)).astype(x.dtype)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (Open-Sora ``Attention``).

    x: [B, T, S, C] -> [B, T, S, C]; ``axis="spatial"`` attends within each frame,
    ``axis="temporal"`` across frames at each position (no transpose: the kernel reads the layout), and
    ``axis="factorized"`` (Latte's factorized heads) splits the heads: the first half attend within the frame,
    the second half over time, and the halves are concatenated before the output projection.
    Optional RMS qk-norm and RoPE along the attended axis (STDiT3 features; temporal only).

    ``seq_parallel``: ``None``, ``"ulysses"``, ``"allgather"`` or ``"ring"`` (``vidjax.parallel.sequence``), with
    ``layout`` the logical names of q/k/v ``[B, T, S, H, D]`` naming the split token axis; both
    are no-ops without a mesh whose ``sequence`` axis is larger than 1.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        rngs: nnx.Rngs,
        *,
        axis: str = "spatial",
        qk_norm: bool = False,
        rope: bool = False,
        impl: str = "xla",
        dtype=None,
        param_dtype=jnp.float32,
        seq_parallel: str | None = None,
        layout: tuple[str | None, ...] = ("batch", None, None, "heads", None),
    ):
        self.num_heads, self.axis, self.impl, self.rope = num_heads, axis, impl, rope
        self.seq_parallel, self.layout = seq_parallel, tuple(layout)
        self.qkv = linear(dim, 3 * dim, ("embed", "heads"), rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj = linear(dim, dim, ("heads", "embed"), rngs, dtype=dtype, param_dtype=param_dtype)
        head_dim = dim // num_heads
        self.q_norm = RMSNorm(head_dim, param_dtype=param_dtype) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, param_dtype=param_dtype) if qk_norm else None

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        q, k, v = (rearrange(a, "b t s (h d) -> b t s h d", h=self.num_heads) for a in jnp.split(self.qkv(x), 3, -1))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            ax = 1 if self.axis == "temporal" else 2
            pos = jnp.arange(x.shape[ax])
            q, k = apply_rope(q, pos, ax), apply_rope(k, pos, ax)

        def attend(q, k, v, mask, axis=self.axis):
            return attention(q, k, v, axis=axis, mask=mask, impl=self.impl)

        if self.axis == "factorized":  # spatial heads stay local (whole frames per chip), temporal heads go parallel
            h = self.num_heads // 2
            spatial = attend(q[:, :, :, :h], k[:, :, :, :h], v[:, :, :, :h], mask, axis="spatial")
            temporal = parallel_attention(self.seq_parallel, functools.partial(attend, axis="temporal"),
                                          q[:, :, :, h:], k[:, :, :, h:], v[:, :, :, h:], None, self.layout)
            o = jnp.concatenate([spatial, temporal], axis=3)
        else:
            o = parallel_attention(self.seq_parallel, attend, q, k, v, mask, self.layout)
        return self.proj(rearrange(o, "b t s h d -> b t s (h d)"))


class CrossAttention(nnx.Module):
    """Queries from the video, keys/values from the caption (Open-Sora ``MultiHeadCrossAttention``).

    x: [B, N, C] (all tokens of a clip), y: [B, L, C], mask: [B, L] (True = real token) -> [B, N, C].
    Runs as spatial attention with one "frame" holding all N queries.
    """

    def __init__(self, dim: int, num_heads: int, rngs: nnx.Rngs, *, impl: str = "xla", dtype=None,
                 param_dtype=jnp.float32, zero_out: bool = True):
        self.num_heads, self.impl = num_heads, impl
        self.q_linear = linear(dim, dim, ("embed", "heads"), rngs, dtype=dtype, param_dtype=param_dtype)
        self.kv_linear = linear(dim, 2 * dim, ("embed", "heads"), rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj = linear(dim, dim, ("heads", "embed"), rngs, init=zeros if zero_out else xavier, dtype=dtype,
                           param_dtype=param_dtype)

    def __call__(self, x: Array, y: Array, mask: Array | None) -> Array:
        q = rearrange(self.q_linear(x), "b n (h d) -> b 1 n h d", h=self.num_heads)
        k, v = (rearrange(a, "b l (h d) -> b 1 l h d", h=self.num_heads) for a in jnp.split(self.kv_linear(y), 2, -1))
        o = attention(q, k, v, axis="spatial", mask=mask, impl=self.impl)
        return self.proj(rearrange(o, "b 1 n h d -> b n (h d)"))


# --------------------------------------------------------------------------------------
# 3. MLP and modulation
# --------------------------------------------------------------------------------------


def gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


class Mlp(nnx.Module):
    """``fc2(act(fc1(x)))``; x: [..., C] -> [..., C_out]."""

    def __init__(self, din: int, hidden: int, dout: int, rngs: nnx.Rngs, *, act: Callable = gelu_tanh,
                 init: Callable = xavier, out_init: Callable | None = None, dtype=None, param_dtype=jnp.float32):
        self.act = act
        self.fc1 = linear(din, hidden, ("embed", "mlp"), rngs, init=init, dtype=dtype, param_dtype=param_dtype)
        self.fc2 = linear(hidden, dout, ("mlp", "embed"), rngs, init=out_init or init, dtype=dtype,
                          param_dtype=param_dtype)

    def __call__(self, x: Array) -> Array:
        return self.fc2(self.act(self.fc1(x)))


def expand(v: Array, shape: tuple[int, ...]) -> Array:
    """``broadcast_to(v, shape)`` (v has shape's rank, 1 on the broadcast axes); a low-precision v's gradient
    sums in float32.

    The adaLN vectors [B, 1, 1, C] are broadcast over every token; a bfloat16 v's cotangent is summed by
    ``sum_f32`` (a dot with ones), as ``add_bias`` explains; float32 vectors keep autodiff's reduce.
    """
    return jnp.broadcast_to(v, shape) if v.dtype == jnp.float32 else _expand_f32_grad(v, shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _expand_f32_grad(v: Array, shape: tuple[int, ...]) -> Array:
    return jnp.broadcast_to(v, shape)


def _expand_fwd(v: Array, shape: tuple[int, ...]):
    return _expand_f32_grad(v, shape), v


def _expand_bwd(shape: tuple[int, ...], v: Array, g: Array):
    axes = tuple(i for i, (n, m) in enumerate(zip(v.shape, shape, strict=True)) if n == 1 and m != 1)
    return (sum_f32(g, axes).reshape(v.shape).astype(v.dtype),)


_expand_f32_grad.defvjp(_expand_fwd, _expand_bwd)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation: ``x * (1 + scale) + shift`` (shift, scale broadcast over token axes)."""
    return x * (1 + expand(scale, x.shape)) + expand(shift, x.shape)


def gate(g: Array, h: Array) -> Array:
    """adaLN gating of a residual branch: ``g * h`` (g broadcast over token axes)."""
    return expand(g, h.shape) * h


# --------------------------------------------------------------------------------------
# 4. Embeddings
# --------------------------------------------------------------------------------------


def timestep_sinusoid(t: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
    """t: [B] (any real) -> [B, dim], **cos first** as in DiT / Open-Sora."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nnx.Module):
    """t: [B] -> [B, C] through sinusoid(256), Linear, SiLU, Linear (``t_embedder.mlp.{0,2}``)."""

    def __init__(self, dim: int, rngs: nnx.Rngs, *, freq_dim: int = 256, dtype=None, param_dtype=jnp.float32):
        self.freq_dim, self.dtype = freq_dim, dtype
        self.mlp = Mlp(freq_dim, dim, dim, rngs, act=jax.nn.silu, init=normal02, dtype=dtype,
                       param_dtype=param_dtype)

    def __call__(self, t: Array) -> Array:
        emb = timestep_sinusoid(t, self.freq_dim)
        return self.mlp(emb if self.dtype is None else emb.astype(self.dtype))


class CaptionEmbedder(nnx.Module):
    """Projects text-encoder states into the model width (``y_embedder``).

    y: [B, L, C_text] -> [B, L, C]. Rows with ``drop`` set are replaced by the fixed
    ``y_embedding`` buffer [L, C_text]: the classifier-free-guidance null caption.
    """

    def __init__(self, caption_channels: int, dim: int, token_num: int, rngs: nnx.Rngs, *, dtype=None,
                 param_dtype=jnp.float32):
        self.y_proj = Mlp(caption_channels, dim, dim, rngs, init=normal02, dtype=dtype, param_dtype=param_dtype)
        null = jax.random.normal(rngs.params(), (token_num, caption_channels)) / caption_channels**0.5
        self.y_embedding = Buffer(null.astype(param_dtype))

    def __call__(self, y: Array, drop: Array | None = None) -> Array:
        if drop is not None:
            null = self.y_embedding[...].astype(y.dtype)[None]
            y = jnp.where(drop[:, None, None], null, y)
        return self.y_proj(y)


class PatchEmbed3D(nnx.Module):
    """Non-overlapping 3D patches (Open-Sora ``x_embedder``, a Conv3d with stride = kernel).

    x: [B, T, H, W, C_in] -> [B, T', S, C] with S = H'·W' in row-major (h, w) order.
    The kernel is stored flattened as [(pt ph pw c_in), C].
    """

    def __init__(self, patch: tuple[int, int, int], in_channels: int, dim: int, rngs: nnx.Rngs, *, dtype=None,
                 param_dtype=jnp.float32):
        self.patch = tuple(patch)
        self.proj = linear(int(np.prod(patch)) * in_channels, dim, ("patch", "embed"), rngs, dtype=dtype,
                           param_dtype=param_dtype)

    def __call__(self, x: Array) -> Array:
        pt, ph, pw = self.patch
        x = rearrange(x, "b (t pt) (h ph) (w pw) c -> b t (h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
        return self.proj(x)


# --------------------------------------------------------------------------------------
# 5. Fixed sin/cos tables (MAE convention, computed in float64 numpy)
# --------------------------------------------------------------------------------------


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """pos: [M] -> [M, dim], **sin first**."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, scale: float = 1.0, base_size: int | None = None) -> np.ndarray:
    """[grid_h * grid_w, dim] spatial table; the **first half encodes w** (PixArt / Open-Sora v1.0)."""
    gh = np.arange(grid_h, dtype=np.float32) / scale
    gw = np.arange(grid_w, dtype=np.float32) / scale
    if base_size is not None:
        gh, gw = gh / (grid_h / base_size), gw / (grid_w / base_size)
    ww, hh = np.meshgrid(gw, gh)  # both [grid_h, grid_w]
    return np.concatenate([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], axis=1)


def sincos_temporal(dim: int, length: int, scale: float = 1.0) -> np.ndarray:
    """[length, dim] temporal table from positions ``arange(length) / scale``."""
    return sincos_1d(dim, np.arange(length) / scale)  # float64 positions, as Open-Sora's get_1d_sincos_pos_embed


__all__ = [
    "Buffer", "linear", "layer_norm", "RMSNorm", "attention", "register_attention", "xla_attention", "apply_rope",
    "SelfAttention", "CrossAttention", "Mlp", "gelu_tanh", "modulate", "timestep_sinusoid", "TimestepEmbedder",
    "CaptionEmbedder", "PatchEmbed3D", "sincos_1d", "sincos_2d", "sincos_temporal", "constrain",
]
