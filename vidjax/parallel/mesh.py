"""The device mesh: axes ``data, fsdp, sequence, tensor``, sized from ``config.mesh``.

``config.mesh`` holds one size per axis inside a slice (ICI) and one across slices (DCN)::

    mesh = ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1,            # within a slice
                           dcn_data=1, dcn_fsdp=1, dcn_sequence=1, dcn_tensor=1))  # across slices

A size of ``-1`` is filled in so that the product matches the device count (at most one per
group). The mesh axis of size ``data × dcn_data`` etc. is laid out by
``mesh_utils.create_hybrid_device_mesh`` when any ``dcn_*`` size is above 1, so that only the
DCN axes cross slice boundaries (a "slice" is a TPU slice, or one process on CPU/GPU).

All axes are ``AxisType.Auto``: model code constrains activations by logical names and
``jax.jit`` propagates the rest. (``jax.make_mesh`` defaults to ``Explicit`` axes in jax 0.10,
under which ``with_sharding_constraint``-style code raises ``ShardingTypeError``.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from vidjax.errors import ConfigError
from vidjax.parallel.rules import DATA, MESH_AXES

DEFAULT_MESH: dict[str, int] = {**dict.fromkeys(MESH_AXES, 1), DATA: -1,  # every device on data by default
                                **{f"dcn_{a}": 1 for a in MESH_AXES}}


class MeshError(ConfigError):
    """A mesh that cannot be built on these devices (one line, naming the numbers)."""


def mesh_settings(config) -> dict[str, int]:
    """The ``mesh`` section of a config (or the section itself, or a dict) with defaults filled in."""
    if config is None:
        section = {}
    elif "mesh" in config:  # a full config
        section = config["mesh"] or {}
    elif set(config) <= set(DEFAULT_MESH):  # the section itself
        section = config
    else:  # a full config from before meshes existed
        section = {}
    out = dict(DEFAULT_MESH)
    for key, value in dict(section).items():
        if key not in DEFAULT_MESH:
            raise MeshError(f"config.mesh.{key}: unknown mesh setting; expected one of {sorted(DEFAULT_MESH)}")
        out[key] = int(value)
    return out


def parse_mesh(text: str) -> dict[str, int]:
    """``data=2,fsdp=2,sequence=2`` -> ``{data: 2, fsdp: 2, sequence: 2}`` (unnamed axes keep defaults)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise MeshError(f"--mesh {text!r}: expected name=size pairs such as data=2,fsdp=4")
        name, value = (s.strip() for s in part.split("=", 1))
        if name not in DEFAULT_MESH:
            raise MeshError(f"--mesh: unknown axis {name!r}; expected one of {sorted(DEFAULT_MESH)}")
        out[name] = int(value)
    return out


def _fill(sizes: list[int], total: int, names: Sequence[str], unit: str) -> list[int]:
    """Replace one -1 so that ``prod(sizes) == total``; a one-line error otherwise."""
    shown = ", ".join(f"{n}={s}" for n, s in zip(names, sizes, strict=True))
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh {shown}: sizes must be positive or -1")
    if sizes.count(-1) > 1:
        raise MeshError(f"mesh {shown}: at most one of these sizes may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise MeshError(f"mesh {shown}: {total} {unit} are not divisible by {known}")
        sizes = [total // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != total:
        product = " × ".join(str(s) for s in sizes)
        raise MeshError(f"mesh {shown}: product {product} = {math.prod(sizes)} ≠ {total} {unit}")
    return sizes


def _by_slice(devices: Sequence) -> bool:
    """TPU devices know their slice; elsewhere (CPU, GPU) each process counts as one slice."""
    return devices[0].platform == "tpu" and hasattr(devices[0], "slice_index")


def _num_slices(devices: Sequence) -> int:
    if _by_slice(devices):
        return len({d.slice_index for d in devices})
    return len({d.process_index for d in devices})


def mesh_shape(settings: Mapping[str, int], num_devices: int, num_slices: int = 1) -> tuple[list[int], list[int]]:
    """(ICI sizes, DCN sizes) in ``MESH_AXES`` order, with -1 filled in."""
    dcn = [settings[f"dcn_{a}"] for a in MESH_AXES]
    multi = any(s != 1 for s in dcn)
    if not multi:
        return _fill([settings[a] for a in MESH_AXES], num_devices, MESH_AXES, "total devices"), [1] * 4
    dcn = _fill(dcn, num_slices, [f"dcn_{a}" for a in MESH_AXES], "slices (TPU slices, or processes elsewhere)")
    if num_devices % num_slices:
        raise MeshError(f"{num_devices} devices do not split evenly into {num_slices} slices")
    ici = _fill([settings[a] for a in MESH_AXES], num_devices // num_slices, MESH_AXES, "devices per slice")
    return ici, dcn


def make_mesh(config=None, devices: Sequence | None = None, **overrides: int) -> Mesh:
    """A ``Mesh`` with axes ``MESH_AXES`` (data, fsdp, sequence, tensor) from ``config.mesh``.

    ``config`` may be a full config, its ``mesh`` section, a dict, or None (all defaults:
    every device on ``data``). ``overrides`` replace single sizes: ``make_mesh(c, sequence=4)``.
    """
    settings = mesh_settings(config if config is not None else {})
    for key, value in overrides.items():
        if key not in DEFAULT_MESH:
            raise MeshError(f"make_mesh: unknown mesh setting {key!r}; expected one of {sorted(DEFAULT_MESH)}")
        settings[key] = int(value)
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = mesh_shape(settings, len(devices), _num_slices(devices))
    if all(s == 1 for s in dcn):
        try:
            grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):  # e.g. a subset of a TPU topology
            grid = np.asarray(devices).reshape(ici)
    else:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    process_is_granule=not _by_slice(devices),
                                                    allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def describe(mesh: Mesh) -> str:
    """``data=2 fsdp=2 sequence=2 tensor=1 (8 devices)``."""
    sizes = " ".join(f"{n}={s}" for n, s in zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    return f"{sizes} ({mesh.size} devices)"


__all__ = ["DEFAULT_MESH", "MeshError", "describe", "make_mesh", "mesh_settings", "mesh_shape", "parse_mesh"]
