"""Reading Hugging Face checkpoints without torch, one tensor at a time.

A checkpoint directory holds ``config.json`` plus either ``model.safetensors`` or shards
``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``.

Loading fills an abstract model (``nnx.eval_shape``) from an explicit name map
``{hf_name: NameMap(nnx_path, transpose)}``:
  1. every shard *header* is checked first (unknown keys, shapes, missing keys), so a config that
     does not match the weights fails in a second, before any data is read, with one line naming the
     file and the first offending key;
  2. then each tensor is read from its shard, cast, and placed, either on the default device or, given
     a ``mesh``, straight onto its ``NamedSharding`` from the parameter's logical axes. The host never
     holds more than one tensor, so T5-XXL loads shard by shard onto a mesh.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from vidjax.errors import InputError
from vidjax.parallel.rules import named_sharding

Array = jax.Array

SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}

# Hugging Face ``ACT2FN`` names -> jax functions (the ones T5 and CLIP configs use)
HF_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class CheckpointError(InputError):
    """A checkpoint directory that cannot be loaded; the message is one line naming the file."""


def hf_activation(name: str, source: str) -> Callable[[Array], Array]:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"{source}: activation {name!r} is not supported (expected one of "
                              f"{sorted(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


# --------------------------------------------------------------------------------------
# 1. Files
# --------------------------------------------------------------------------------------


class SafetensorsFile:
    """Header of one ``.safetensors`` file; ``read(name)`` loads a single tensor as numpy."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        self._data_start = 8 + n
        header.pop("__metadata__", None)
        self.entries: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {
            k: (v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"])) for k, v in header.items()
        }

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read(self, name: str) -> np.ndarray:
        dtype_name, shape, (start, end) = self.entries[name]
        if dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: {name} has unsupported dtype {dtype_name}")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            buf = f.read(end - start)
        return np.frombuffer(buf, dtype=SAFETENSORS_DTYPES[dtype_name]).reshape(shape)


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, with a one-line error if absent or invalid."""
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a Hugging Face checkpoint directory needs config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def checkpoint_files(directory: str | Path) -> tuple[Path, list[Path]]:
    """``(name to report, [safetensors files])`` for a directory: single file, or shards via the index."""
    d = Path(directory)
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        return single, [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        files = [d / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: lists shard {f.name}, which is missing")
        return index, files
    shards = sorted(d.glob("*.safetensors"))
    if shards:
        return shards[0] if len(shards) == 1 else d, shards
    found = ", ".join(sorted(p.name for p in d.iterdir())) if d.is_dir() else "directory missing"
    raise CheckpointError(f"{d}: no model.safetensors, model.safetensors.index.json or *.safetensors "
                          f"(found: {found or 'nothing'}); convert .bin checkpoints to safetensors first")


# --------------------------------------------------------------------------------------
# 2. Filling an abstract model
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NameMap:
    """Where one HF tensor goes: the NNX state path, and whether to transpose (torch Linear ``[out, in]``)."""

    path: tuple[str | int, ...]
    transpose: bool = False


def logical_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
    """Logical axis names a parameter was created with (``nnx.with_partitioning``), or None."""
    meta = var.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):
        if meta.get(key) is not None:
            return tuple(meta[key])
    return None


def _fmt(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def load_hf_weights(
    abstract: nnx.Module,
    directory: str | Path,
    name_map: Mapping[str, NameMap],
    *,
    ignore: Callable[[str], bool] = lambda name: False,
    rename: Callable[[str], str] = lambda name: name,
    mesh: jax.sharding.Mesh | None = None,
) -> nnx.Module:
    """Fill ``abstract`` (from ``nnx.eval_shape``) from the safetensors in ``directory``.

    ``rename`` normalises checkpoint names (e.g. drops a ``text_model.`` prefix) before the lookup in
    ``name_map``; ``ignore`` says which unmapped names are expected (a decoder, a vision tower).
    Several HF names may map to one path (tied embeddings); any one of them fills it.
    Tensors are cast to the dtype of the abstract parameter (build the model with the wanted ``param_dtype``).
    Returns the concrete module; raises ``CheckpointError`` (one line) on any mismatch.
    """
    report, files = checkpoint_files(directory)
    graphdef, state = nnx.split(abstract)
    targets = dict(nnx.to_flat_state(state))

    by_path: dict[tuple, list[str]] = {}
    for hf_name, nm in name_map.items():
        if nm.path not in targets:
            raise KeyError(f"name map sends {hf_name} to {_fmt(nm.path)}, which the model does not have")
        by_path.setdefault(nm.path, []).append(hf_name)
    unmapped = [p for p in targets if p not in by_path]
    if unmapped:
        raise KeyError(f"model variable {_fmt(unmapped[0])} has no checkpoint name in the name map")

    # pass 1: headers only
    headers = [SafetensorsFile(f) for f in files]
    plan: list[tuple[SafetensorsFile, str, NameMap]] = []
    filled: set[tuple] = set()
    for st in headers:
        for raw in st.keys():
            name = rename(raw)
            if name not in name_map:
                if ignore(name):
                    continue
                raise CheckpointError(f"{st.path}: unexpected key {raw} (the config describes no such weight)")
            nm = name_map[name]
            want = tuple(targets[nm.path].get_value().shape)
            if nm.transpose:
                want = want[::-1]
            if st.shape(raw) != want:
                raise CheckpointError(f"{st.path}: {raw} has shape {list(st.shape(raw))} but the config implies "
                                      f"{list(want)}")
            plan.append((st, raw, nm))
            filled.add(nm.path)
    for path, names in by_path.items():
        if path not in filled:
            want = tuple(targets[path].get_value().shape)
            want = want[::-1] if name_map[names[0]].transpose else want
            raise CheckpointError(f"{report}: missing key {names[0]} (shape {list(want)})")

    # pass 2: one tensor at a time onto its device(s)
    for st, raw, nm in plan:
        var = targets[nm.path]
        target = var.get_value()
        arr = st.read(raw)
        if nm.transpose:
            arr = arr.T
        arr = np.ascontiguousarray(arr, dtype=target.dtype)
        if mesh is not None:  # each device receives only its slice (works across hosts too)
            sharding = named_sharding(mesh, logical_axes(var))
            var.set_value(jax.make_array_from_callback(arr.shape, sharding, lambda index, a=arr: a[index]))
        else:
            var.set_value(jnp.asarray(arr))
    return nnx.merge(graphdef, state)


__all__ = [
    "CheckpointError", "HF_ACTIVATIONS", "NameMap", "SafetensorsFile", "checkpoint_files",
    "hf_activation", "load_hf_weights", "logical_axes", "read_config",
]
