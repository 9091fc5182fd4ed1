"""The one table that maps logical axis names to mesh axes.

Model code names logical axes only (``("embed", "mlp")`` on a kernel,
``("batch", "frames", "tokens", "act_embed")`` on an activation). This module
turns those names into ``PartitionSpec`` s for whichever mesh is active.
Mesh axes: ``data``, ``fsdp``, ``sequence``, ``tensor``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# logical name -> mesh axis (or tuple of mesh axes, or None for replicated)
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "embed": "fsdp",  # model width: ZeRO-3 style sharding of every weight
    "mlp": "tensor",  # MLP hidden width
    "heads": "tensor",  # attention heads (q/k/v/out projections)
    "qkv": None,  # the fused [q|k|v] axis
    "vocab": None,
    "layers": None,  # the stacked-blocks axis created by nnx.vmap
    "patch": None,  # flattened patch values of the patch embedding
    "caption": None,  # text-encoder channels
    "freq": None,  # sinusoid frequencies
    "norm": None,
    # activations
    "batch": ("data", "fsdp"),
    "frames": "sequence",  # T: sharded in spatial attention, MLP and cross-attention
    "tokens": None,  # S: tokens of one frame
    "tokens_sp": "sequence",  # S when temporal attention runs sequence-parallel
    "act_embed": None,
    "act_heads": "tensor",
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


def _active_mesh():
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


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op when no mesh is active."""
    mesh = _active_mesh()
    if mesh is None:
        return x
    spec = _restrict_to_mesh(logical_to_spec(axes), mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def named_sharding(mesh, axes: Sequence[str | None] | None) -> NamedSharding:
    """Concrete ``NamedSharding`` for logical ``axes`` on ``mesh``."""
    return NamedSharding(mesh, _restrict_to_mesh(logical_to_spec(axes), mesh))
