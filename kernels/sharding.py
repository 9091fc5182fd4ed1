"""Mesh-aware dispatch: run a Pallas attention kernel per shard with ``jax.shard_map``.

XLA's SPMD partitioner cannot split a ``pallas_call`` (a Mosaic or Triton custom call) across
devices, so under a multi-device mesh it would all-gather q, k and v and run the whole attention
on every chip. ``per_shard`` wraps the kernel in ``jax.shard_map`` over the active mesh instead,
so each chip runs the kernel on its own slice and no activation moves.

The in/out specs come from the logical-axis table (``vidjax.parallel.rules.LOGICAL_AXIS_RULES``);
no mesh axis is named here. For q, k, v [B, T, S, H, D] and the key mask [B, Sk]:

  ==========  ==========================================  =================
  dim         spatial (attends over S)                    temporal (over T)
  ==========  ==========================================  =================
  B           "batch"                                     "batch"
  T           "frames"                                    whole (attended)
  S of q      "tokens" (queries are independent), unless  "tokens"
              "frames" already took that mesh axis
  S of k, v   whole (attended)                            "tokens"
  H           "heads"                                     "heads"
  D           whole                                       whole
  mask        ("batch", whole)                            (no mask)
  ==========  ==========================================  =================

Each dim keeps, in table order, the mesh axes of its logical name that have more than one device,
are not used by an earlier dim, and (with those kept before them) divide the dim; the others are
dropped and that dim is replicated over them. So T = 5 on a ``sequence`` axis of 2 gives whole
frames everywhere, and for cross-attention (T = 1, Sq = all T·S tokens) the query tokens stay split.

No wrapping (the kernel is called directly) without a mesh, on a one-device mesh, when nothing
can be split, or inside a ``shard_map`` that already made mesh axes manual (Ulysses in
``vidjax.parallel.sequence``): there the arrays are already per-shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

from vidjax.parallel.rules import active_mesh, mesh_spec

Array = jax.Array

# logical names of q [B, T, S, H, D] per attention axis; "frames" and "tokens" share a mesh axis in the
# default table, so in spatial attention the query tokens split only when the frames could not
Q_AXES: dict[str, tuple[str | None, ...]] = {
    "spatial": ("batch", "frames", "tokens", "heads", None),
    "temporal": ("batch", None, "tokens", "heads", None),
}


def _split(size: int, name: str | None, mesh, used: set[str]) -> str | tuple[str, ...] | None:
    """Mesh axes of logical ``name`` that can split a dim of ``size`` (see the module docstring)."""
    entry = None if name is None else mesh_spec((name,), mesh)[0]  # size-1 mesh axes already dropped
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    kept: list[str] = []
    for axis in () if entry is None else (entry,) if isinstance(entry, str) else entry:
        if axis not in used and size % (math.prod(sizes[a] for a in kept) * sizes[axis]) == 0:
            kept.append(axis)
    used.update(kept)
    return None if not kept else kept[0] if len(kept) == 1 else tuple(kept)


def attention_specs(axis: str, q_shape: tuple[int, ...], mesh) -> tuple[P, P, P]:
    """(q and output spec, k/v spec, mask spec) of attention over ``axis`` with q of ``q_shape`` on ``mesh``."""
    used: set[str] = set()
    q_spec = P(*(_split(size, name, mesh, used) for size, name in zip(q_shape, Q_AXES[axis], strict=True)))
    kv_spec = P(*q_spec[:2], None, *q_spec[3:]) if axis == "spatial" else q_spec  # spatial: keys whole
    return q_spec, kv_spec, P(q_spec[0], None)


Attend = Callable[..., Array]  # fn(q, k, v, *, axis, mask) -> o, on [B, T, S, H, D]


def per_shard(fn: Attend, q: Array, k: Array, v: Array, *, axis: str, mask: Array | None = None) -> Array:
    """``fn(q, k, v, axis=axis, mask=mask)`` run per shard of the active mesh (``jax.shard_map``).

    q: [B, T, Sq, H, D], k/v: [B, T, Sk, H, D], mask: [B, Sk] or None -> [B, T, Sq, H, D].
    """
    mesh = active_mesh()
    if mesh is None or math.prod(mesh.axis_sizes) == 1 or mesh.manual_axes:
        return fn(q, k, v, axis=axis, mask=mask)
    q_spec, kv_spec, mask_spec = attention_specs(axis, q.shape, mesh)
    if all(entry is None for entry in q_spec):
        return fn(q, k, v, axis=axis, mask=mask)

    def local(q, k, v, *mask):
        return fn(q, k, v, axis=axis, mask=mask[0] if mask else None)

    args, specs = (q, k, v), (q_spec, kv_spec, kv_spec)
    if mask is not None:
        args, specs = (*args, mask), (*specs, mask_spec)
    # check_vma=False: pallas_call outputs carry no varying-manual-axes type
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


__all__ = ["Q_AXES", "attention_specs", "per_shard"]
