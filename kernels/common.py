"""Helpers shared by the spatial and temporal kernels: backends, padding, block sizes, masks.

Backends. Every kernel exists in two flavours, selected by a ``backend`` string:

* ``"tpu"``  Pallas Mosaic (TPU). Blocks obey the (8, 128) rule: the last two block dims
  are multiples of (8, 128) or equal to the whole array dims, so the head dim is padded to
  a multiple of 128 in the wrapper and the model's [B, T, S, H, Dp] array is viewed as
  [B, T, S, H*Dp] (a free, row-major merge of the two minor axes), letting an index map
  pick head ``h`` as lane block ``h``.
* ``"gpu"``  Pallas Triton (CUDA / ROCm). Blocks index the 5-D array directly with the head
  axis squeezed; tensors must have power-of-two sizes, so tiles are padded *inside the
  kernel* with masked loads/stores (no HBM copy).

``backend=None`` defers the choice to lowering time with ``lax.platform_dependent``:
TPU lowers the Mosaic kernel, CUDA/ROCm the Triton kernel, anything else (CPU) runs the
TPU kernel in Pallas interpret mode. So one traced function can be exported for ``tpu``
and ``cuda`` from a CPU host. ``"tpu_interpret"`` / ``"gpu_interpret"`` force interpret
mode of one flavour (tests; ``VIDJAX_PALLAS_INTERPRET=gpu`` makes CPU use the Triton one).

Masks. A key mask (True = keep) becomes an additive f32 key bias: 0 keep, ``MASKED``
(-1e30) for masked keys, ``-inf`` for padding keys. Every row has a live key (the spatial
wrapper rewrites all-masked batch elements), so masked and padding keys get probability
exactly 0. ``MASKED`` is finite so that a key block whose keys are all masked still gives a
finite running max in the online softmax (no ``-inf - -inf``); padding can be ``-inf``
because it only fills the tail of the last block, after at least one real key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

MASKED = -1e30  # additive bias of a masked key (finite: see the module docstring)
BACKENDS = ("tpu", "gpu", "tpu_interpret", "gpu_interpret")

# dot_general dimension numbers for 2-D operands: "NT" = a @ b.T, "TN" = a.T @ b, "NN" = a @ b.
NN = (((1,), (0,)), ((), ()))
NT = (((1,), (1,)), ((), ()))
TN = (((0,), (0,)), ((), ()))


def dot(a: Array, b: Array, dims=NN) -> Array:
    """2-D matmul with float32 accumulation."""
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tpu_head_dim(d: int) -> int:
    """Head dim padded to a whole number of 128-lane vregs (72 -> 128, 160 -> 256)."""
    return round_up(d, 128)


def gpu_head_dim(d: int) -> int:
    """Head dim padded to a power of two >= 16 (Triton tensors and ``tl.dot``)."""
    return max(16, next_pow2(d))


def tpu_seq_block(n: int, cap: int, align: int) -> tuple[int, int]:
    """(block, padded length) for a TPU sequence axis that ends up on the lane dim somewhere.

    Short axes (<= cap) become one block spanning the whole (``align``-padded) axis, which the
    (8, 128) rule always allows. Longer axes use a multiple of 128 (<= cap) that minimises padding.
    """
    if n <= cap:
        return round_up(n, align), round_up(n, align)
    cap = max(cap, 128)
    best = min(range(128, cap + 1, 128), key=lambda b: (round_up(n, b), -b))
    return best, round_up(n, best)


def pad_axis(x: Array, axis: int, size: int) -> Array:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def tpu_view(x: Array, s_pad: int, d_pad: int) -> Array:
    """[B, T, S, H, D] -> zero-padded [B, T, s_pad, H * d_pad]: head h is lane block h."""
    b, t, _, h, _ = x.shape
    return pad_axis(pad_axis(x, 2, s_pad), 4, d_pad).reshape(b, t, s_pad, h * d_pad)


def key_bias(mask: Array | None, batch: int, n: int, n_pad: int) -> Array | None:
    """Additive key bias [B or 1, n_pad] (0 keep, MASKED, -inf padding), or None if not needed."""
    if mask is None and n == n_pad:
        return None
    if mask is None:
        keep = jnp.ones((1, n), bool)
    else:
        keep = jnp.broadcast_to(mask.astype(bool), (batch, n))
    bias = jnp.where(keep, 0.0, MASKED).astype(jnp.float32)
    return jnp.pad(bias, ((0, 0), (0, n_pad - n)), constant_values=-jnp.inf)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Optional block-size overrides (None = per-backend default)."""

    q: int | None = None
    k: int | None = None
    positions: int | None = None  # temporal: positions s per program


def check_block(name: str, value: int | None) -> None:
    """Block-size overrides must be powers of two >= 16 (Triton tiles; TPU lane blocks round up to 128)."""
    if value is not None and (value < 16 or value & (value - 1)):
        raise ValueError(f"{name}={value}: expected a power of two >= 16")


def interpret_flavour() -> str:
    """Which kernel flavour CPU runs in interpret mode (env ``VIDJAX_PALLAS_INTERPRET``)."""
    flavour = os.environ.get("VIDJAX_PALLAS_INTERPRET", "tpu").lower()
    if flavour not in ("tpu", "gpu"):
        raise ValueError(f"VIDJAX_PALLAS_INTERPRET={flavour!r}; expected 'tpu' or 'gpu'")
    return flavour


def dispatch(backend: str | None, impls: dict[str, Callable], *args):
    """Call ``impls["tpu"|"gpu"](*args, interpret=...)`` for ``backend``, or per platform if None."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; expected one of {BACKENDS} or None")
        flavour = backend.removesuffix("_interpret")
        return impls[flavour](*args, interpret=backend.endswith("_interpret"))
    fallback = interpret_flavour()
    return lax.platform_dependent(
        *args,
        tpu=lambda *a: impls["tpu"](*a, interpret=False),
        cuda=lambda *a: impls["gpu"](*a, interpret=False),
        rocm=lambda *a: impls["gpu"](*a, interpret=False),
        default=lambda *a: impls[fallback](*a, interpret=True),
    )


def softmax_scale(d: int) -> float:
    """Softmax scale from the true (unpadded) head dim."""
    return 1.0 / math.sqrt(d)
