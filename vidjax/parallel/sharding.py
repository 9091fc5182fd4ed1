"""FSDP (ZeRO-3) placement of parameters, optimizer state and batches on a mesh.

Parameters carry logical axis names as nnx metadata (``nnx.with_partitioning``), read once with
``nnx.get_partition_spec`` and kept as pure dicts next to the parameters (``logical_axes``).
``param_shardings`` maps them through the logical table, then applies the ZeRO-3 rule: a
parameter whose logical axes do not reach the ``fsdp`` mesh axis (biases, norms, embeddings
without metadata) is split on ``fsdp`` along its largest divisible dimension, so that every
tensor is divided, not only the big matrices. Dimensions that a mesh axis does not divide
stay whole. Gradients share the parameters' shardings (they are the jit outputs of the same
tree) and optimizer moments follow them through ``optax.tree_map_params``.
The batch is split over the mesh axes of the logical ``batch`` axis (data × fsdp).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidjax.errors import ConfigError
from vidjax.parallel.rules import DATA, FSDP, mesh_spec

Tree = Any


def logical_axes(state: nnx.State) -> dict:
    """Pure dict of logical axis tuples (``None`` entries for unnamed dims) for an nnx ``State``."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    values = nnx.to_pure_dict(state)
    return jax.tree.map(lambda s, v: tuple(s) + (None,) * (len(np.shape(v)) - len(s)), specs, values,
                        is_leaf=lambda x: isinstance(x, P))


def _axis_sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))


def _entry_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def zero3_spec(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh) -> P:
    """The ``PartitionSpec`` of one parameter: logical table first, then the ZeRO-3 fallback on ``fsdp``."""
    sizes = _axis_sizes(mesh)
    spec = list(mesh_spec(axes, mesh)) if axes else [None] * len(shape)
    spec += [None] * (len(shape) - len(spec))
    for i, entry in enumerate(spec):  # a mesh axis that does not divide the dimension leaves it whole
        if entry is not None and shape[i] % math.prod(sizes[a] for a in _entry_axes(entry)):
            spec[i] = None
    n = sizes.get(FSDP, 1)
    if n > 1 and not any(FSDP in _entry_axes(e) for e in spec):
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n == 0 and shape[i] >= n
                and (i >= len(axes) or axes[i] != "layers")]
        if free:
            spec[max(free, key=lambda i: shape[i])] = FSDP
    return P(*spec)


def param_shardings(params: Tree, axes: Tree, mesh) -> Tree:
    """``NamedSharding`` per parameter (same tree as ``params``; leaves may be arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda p, a: NamedSharding(mesh, zero3_spec(tuple(p.shape), a, mesh)), params, axes,
                        is_leaf=lambda x: isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def opt_shardings(tx: optax.GradientTransformation, params: Tree, p_shardings: Tree, mesh) -> Tree:
    """Shardings of ``tx.init(params)``: moments follow their parameters, counters are replicated."""
    abstract = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(tx, lambda _, s: s, abstract, p_shardings,
                                 transform_non_params=lambda _: replicated)


def batch_sharding(mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension over the logical ``batch`` axis's mesh axes (data × fsdp), the rest whole."""
    return NamedSharding(mesh, P(mesh_spec(("batch",), mesh)[0], *([None] * (ndim - 1))))


def batch_shards(mesh) -> int:
    """How many ways the batch is split (``data × fsdp``)."""
    return math.prod(_axis_sizes(mesh)[a] for a in _entry_axes(mesh_spec(("batch",), mesh)[0]))


def check_batch(batch_size: int, mesh, what: str = "train.batch_size") -> None:
    """One-line error when the global batch does not split over the data axes."""
    n = batch_shards(mesh)
    if batch_size % n:
        sizes = _axis_sizes(mesh)
        raise ConfigError(f"{what}={batch_size} is not divisible by the data axes data × fsdp = "
                          f"{sizes[DATA]} × {sizes[FSDP]} = {n}")


def place(tree: Tree, shardings: Tree) -> Tree:
    """Put host (or single-device) values onto their shardings; each device receives only its slice.

    Works across processes (``make_array_from_callback``) when every process holds the same values.
    """
    def put(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, s)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def to_host(tree: Tree) -> Tree:
    """Numpy copies of (possibly multi-process) global arrays; every process must call it."""
    def get(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


def per_device_bytes(tree: Tree) -> dict[str, int]:
    """Bytes held by each device for the arrays of ``tree`` (counted from their addressable shards)."""
    out: dict[str, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.data.nbytes
    return out


def sharded_bytes(shapes: Tree, shardings: Tree) -> int:
    """Bytes per device of arrays with these shapes/dtypes and shardings (no allocation)."""
    total = 0
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding)),
                    strict=True):
        total += math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
    return total


def tree_bytes(shapes: Tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


def summarize(shardings: Mapping) -> str:
    """Short text listing of distinct parameter specs (for logs)."""
    specs = {str(s.spec) for s in jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))}
    return ", ".join(sorted(specs))


__all__ = ["batch_sharding", "batch_shards", "check_batch", "logical_axes", "opt_shardings", "param_shardings",
           "per_device_bytes", "place", "sharded_bytes", "summarize", "to_host", "tree_bytes", "zero3_spec"]
