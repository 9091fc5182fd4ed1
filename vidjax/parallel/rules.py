"""The one table that maps logical axis names to mesh axes.

Model code names logical axes only (``("embed", "mlp")`` on a kernel,
``("batch", "frames", None, "act_embed")`` on an activation). This module turns
those names into ``PartitionSpec`` s for whichever mesh is active.
Mesh axes (``vidjax.parallel.mesh``): ``data``, ``fsdp``, ``sequence``, ``tensor``.

Activation layouts of a video ``[B, T, S, C]`` under sequence parallelism name *either*
``frames`` (T split: whole frames per chip, for spatial attention, MLP and cross-attention)
*or* ``tokens`` (S split: all frames of a position per chip, for temporal attention), never
both: they share the ``sequence`` mesh axis. ``vidjax.parallel.sequence`` switches between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
DATA, FSDP, SEQUENCE, TENSOR = MESH_AXES  # the only place mesh axis names are spelled out

# logical name -> mesh axis (or tuple of mesh axes, or None for replicated)
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "embed": "fsdp",  # model width: ZeRO-3 style sharding of every weight
    "mlp": "tensor",  # MLP hidden width
    "heads": "tensor",  # attention heads (q/k/v/out projections; also the heads axis of q/k/v activations)
    "layers": None,  # the stacked-blocks axis created by nnx.vmap
    "qkv": None,  # the fused [q|k|v] axis
    "vocab": None,
    "patch": None,  # flattened patch values of the patch embedding
    "caption": None,  # text-encoder channels
    "freq": None,  # sinusoid frequencies
    "norm": None,
    # activations
    "batch": ("data", "fsdp"),
    "frames": "sequence",  # T: split in spatial attention, MLP and cross-attention (DSP, Ulysses)
    "tokens": "sequence",  # S (or DiT's flat token axis): split in temporal attention (DSP) and ring attention
    "act_embed": None,
    "act_heads": "tensor",  # alias of "heads" for activations
    "text_len": None,
}


def logical_to_spec(axes: Sequence[str | None] | None, rules=None) -> PartitionSpec:
    """``("embed", "mlp") -> P("fsdp", "tensor")`` using the table above."""
    rules = LOGICAL_AXIS_RULES if rules is None else rules
    if axes is None:
        return PartitionSpec()
    out = []
    for name in axes:
        if name is None:
            out.append(None)
        elif name not in rules:
            raise KeyError(f"logical axis {name!r} is not in vidjax.parallel.rules.LOGICAL_AXIS_RULES")
        else:
            out.append(rules[name])
    return PartitionSpec(*out)


def active_mesh():
    """The mesh set by ``jax.set_mesh`` (abstract inside a trace), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def _restrict_to_mesh(spec: PartitionSpec, mesh) -> PartitionSpec:
    """Drop mesh axes of size 1 or absent from ``mesh`` (keeps specs valid on small meshes)."""
    names = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))

    def keep(entry):
        if entry is None:
            return None
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        axes = tuple(a for a in axes if names.get(a, 1) > 1)
        if not axes:
            return None
        return axes[0] if len(axes) == 1 else axes

    return PartitionSpec(*(keep(e) for e in spec))


def mesh_spec(axes: Sequence[str | None] | None, mesh) -> PartitionSpec:
    """``PartitionSpec`` of logical ``axes`` on ``mesh``, without its size-1 axes."""
    return _restrict_to_mesh(logical_to_spec(axes), mesh)


def axis_size(name: str, mesh=None) -> int:
    """Number of shards of logical axis ``name`` on ``mesh`` (default: the active mesh; 1 without one)."""
    mesh = active_mesh() if mesh is None else mesh
    if mesh is None:
        return 1
    entry = mesh_spec((name,), mesh)[0]
    if entry is None:
        return 1
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    axes = (entry,) if isinstance(entry, str) else entry
    n = 1
    for a in axes:
        n *= sizes[a]
    return n


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op when no mesh is active."""
    mesh = active_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, mesh_spec(axes, mesh)))


def named_sharding(mesh, axes: Sequence[str | None] | None) -> NamedSharding:
    """Concrete ``NamedSharding`` for logical ``axes`` on ``mesh``."""
    return NamedSharding(mesh, mesh_spec(axes, mesh))


__all__ = ["MESH_AXES", "LOGICAL_AXIS_RULES", "logical_to_spec", "mesh_spec", "axis_size", "active_mesh",
           "constrain", "named_sharding"]
