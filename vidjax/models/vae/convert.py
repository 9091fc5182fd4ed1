"""Moving torch ``state_dict`` weights in and out of the VAE modules.

Each checkpoint format supplies one explicit name-mapping function ``torch name -> our path``
(and its inverse for export); this file only does the generic part: reading safetensors
without torch, converting layouts, checking that every tensor found a home.

Layouts (channels-last): Conv2d ``[O, I, kh, kw] -> [kh, kw, I, O]``,
Conv3d ``[O, I, kt, kh, kw] -> [kt, kh, kw, I, O]``, Linear ``[O, I] -> [I, O]``,
norms and biases unchanged. A 1×1 Conv2d stored where we keep a Linear (diffusers' deprecated
attention blocks) is squeezed; a buffer stored broadcast-shaped (``[1, C, 1, 1, 1]``) is flattened.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[str | int, ...]


def named_variables(model: nnx.Module) -> dict[Path, nnx.Variable]:
    """Every variable (parameters and buffers) of ``model`` by its attribute path."""
    return {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}


def split_key(name: str) -> Path:
    """``"a.0.b"`` -> ``("a", 0, "b")``."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def join_path(path: Path) -> str:
    return ".".join(str(p) for p in path)


def to_jax_layout(value: np.ndarray, target_ndim: int) -> np.ndarray:
    """A torch tensor as stored -> our layout for a variable with ``target_ndim`` dims."""
    if target_ndim == 1:
        return value.reshape(-1)
    if target_ndim == 2 and value.ndim == 4:  # 1x1 conv used as a linear layer
        return value[:, :, 0, 0].T
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 5:
        return value.transpose(2, 3, 4, 1, 0)
    raise ValueError(f"cannot convert a tensor of shape {value.shape} to {target_ndim} dims")


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_jax_layout` for conv, linear, norm and bias tensors."""
    if value.ndim <= 1:
        return value
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 5:
        return value.transpose(4, 3, 0, 1, 2)
    raise ValueError(f"cannot convert a tensor of shape {value.shape}")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy (bf16 as ``ml_dtypes.bfloat16``), no torch needed."""
    from safetensors.numpy import load_file

    return load_file(path)


def load_state_dict(
    model: nnx.Module,
    state_dict: Mapping[str, np.ndarray],
    key_fn: Callable[[str], Path | None],
    *,
    what: str = "checkpoint",
) -> None:
    """Copy ``state_dict`` into ``model`` in place.

    ``key_fn(torch_name)`` returns our variable path, or None for a tensor to ignore.
    Raises if a tensor has no home, a shape disagrees, or a model variable was not filled.
    """
    variables = named_variables(model)
    filled, unexpected = set(), []
    for name, value in state_dict.items():
        path = key_fn(name)
        if path is None:
            continue
        if path not in variables:
            unexpected.append(name)
            continue
        var = variables[path]
        value = to_jax_layout(np.asarray(value), len(var.shape))
        if value.shape != tuple(var.shape):
            raise ValueError(f"{what}: {name} has shape {value.shape} after conversion; "
                             f"{join_path(path)} expects {tuple(var.shape)}")
        var.value = jnp.asarray(value, dtype=var.value.dtype)
        filled.add(path)
    missing = [join_path(p) for p in variables if p not in filled]
    if unexpected or missing:
        raise ValueError(f"{what} does not match the model: unexpected {unexpected[:8]} "
                         f"({len(unexpected)}), missing {missing[:8]} ({len(missing)})")


def export_state_dict(model: nnx.Module, name_fn: Callable[[Path], str]) -> dict[str, np.ndarray]:
    """The model's variables as a torch-layout ``{name: array}`` dict, named by ``name_fn(path)``."""
    return {name_fn(path): to_torch_layout(np.asarray(var.value)) for path, var in named_variables(model).items()}


def resolve_file(path: str, names: tuple[str, ...]) -> str:
    """``path`` itself if it is a file, else the first of ``names`` inside the directory ``path``."""
    if os.path.isfile(path):
        return path
    for name in names:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"no {' or '.join(names)} in {path}")


__all__ = ["named_variables", "split_key", "join_path", "to_jax_layout", "to_torch_layout", "read_safetensors",
           "load_state_dict", "export_state_dict", "resolve_file"]
