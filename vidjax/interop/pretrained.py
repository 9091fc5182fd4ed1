"""Open-Sora v1.2's published Hugging Face directories in and out: ``config.json`` + ``model.safetensors``.

=========================  ==========================================  =====================================
``config.json`` model_type  published as                                vidjax model
=========================  ==========================================  =====================================
``STDiT3``                  ``hpcai-tech/OpenSora-STDiT-v3``            ``vidjax.models.stdit3.STDiT3``
``VideoAutoencoderPipeline`` ``hpcai-tech/OpenSora-VAE-v1.2``           ``vidjax.models.vae.temporal.OpenSoraVAE``
=========================  ==========================================  =====================================

Loading is strict: every tensor of the model must be in the file with its shape, and the file may
hold nothing else; otherwise a ``CheckpointMismatchError`` lists the missing keys, unexpected keys
and shape mismatches (the v1.0 report). Names and layouts come from ``vidjax.interop.torch_names``
(STDiT3) and ``vidjax.models.vae.temporal`` (VAE). ``model.safetensors.index.json`` shards are read too.
``save_stdit3_pretrained`` writes the directory that v1.2's ``STDiT3.from_pretrained`` loads.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from vidjax.errors import InputError, MissingFileError
from vidjax.interop.files import read_checkpoint, save_safetensors
from vidjax.interop.torch_names import (
    CheckpointMismatchError,
    ImportReport,
    load_state_dict_into_stdit,
    mismatch_message,
    stdit3_to_state_dict,
)
from vidjax.models.stdit3 import STDiT3, STDiT3Config, config_from_opensora

STDIT3_TYPE = "STDiT3"
VAE_TYPE = "VideoAutoencoderPipeline"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


# --------------------------------------------------------------------------------------
# Reading a directory
# --------------------------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a published model directory."""
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"{path}: no such model directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise MissingFileError(f"{cfg_file}: missing; a published model directory holds config.json and "
                               f"{WEIGHTS}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{cfg_file}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def model_type(cfg: dict[str, Any], source: str) -> str:
    """``STDiT3`` or ``VideoAutoencoderPipeline`` from ``model_type`` (or ``architectures``)."""
    kind = cfg.get("model_type") or next(iter(cfg.get("architectures") or []), None)
    if kind not in (STDIT3_TYPE, VAE_TYPE):
        raise InputError(f"{source}: model_type {kind!r}; expected {STDIT3_TYPE!r} (OpenSora-STDiT-v3) or "
                         f"{VAE_TYPE!r} (OpenSora-VAE-v1.2)")
    return kind


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or the shards named by ``model.safetensors.index.json``)."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return read_checkpoint(path / WEIGHTS)
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise InputError(f"{index}: expected a JSON object with a 'weight_map'") from err
        sd: dict[str, np.ndarray] = {}
        for shard in shards:
            if not (path / shard).is_file():
                raise MissingFileError(f"{path / shard}: missing (named in {index.name})")
            sd.update(read_checkpoint(path / shard))
        return sd
    raise MissingFileError(f"{path / WEIGHTS}: missing")


# --------------------------------------------------------------------------------------
# STDiT3 (OpenSora-STDiT-v3)
# --------------------------------------------------------------------------------------


def stdit3_config_of(path: str | Path, **vidjax_fields) -> STDiT3Config:
    """The ``STDiT3Config`` of a directory (``vidjax_fields``: dtype, remat, attention_impl, ...)."""
    cfg = read_config(path)
    source = str(Path(path) / "config.json")
    if model_type(cfg, source) != STDIT3_TYPE:
        raise InputError(f"{source}: model_type {cfg.get('model_type')!r}; expected {STDIT3_TYPE!r}")
    try:
        return config_from_opensora(cfg, source=source, **vidjax_fields)
    except TypeError as err:
        raise InputError(f"{source}: {err}") from err


def load_stdit3_dir(model: STDiT3, path: str | Path) -> ImportReport:
    """Load a published ``STDiT3`` directory into ``model`` (concrete or ``nnx.eval_shape``) in place, strictly."""
    sd = read_weights(path)
    try:
        return load_state_dict_into_stdit(model, sd)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{Path(path) / WEIGHTS}: {err}") from None


def stdit3_from_pretrained(path: str | Path, **vidjax_fields) -> tuple[STDiT3, ImportReport]:
    """Build the ``STDiT3`` described by ``path/config.json`` and load its weights (no random init)."""
    cfg = stdit3_config_of(path, **vidjax_fields)
    model = nnx.eval_shape(lambda: STDiT3(cfg, rngs=nnx.Rngs(0)))
    report = load_stdit3_dir(model, path)
    return model, report


def save_stdit3_pretrained(model: STDiT3, path: str | Path, *, dtype=None) -> dict[str, Any]:
    """Write ``model`` as ``path/config.json`` + ``path/model.safetensors`` (v1.2 names and layouts).

    ``dtype`` casts every tensor (e.g. ``"bfloat16"`` needs ml_dtypes; default float32). Returns the config.
    """
    if dtype is not None and np.dtype(dtype).name == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    sd = stdit3_to_state_dict(model, dtype=dtype)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[next(iter(sd.values())).dtype
                                                                                        .name]
    config = {**model.cfg.opensora_dict(), "architectures": [STDIT3_TYPE], "model_type": STDIT3_TYPE,
              "torch_dtype": torch_dtype}
    save_safetensors(sd, path / WEIGHTS)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


# --------------------------------------------------------------------------------------
# The v1.2 VAE (OpenSora-VAE-v1.2)
# --------------------------------------------------------------------------------------


def _abstract_vae(spatial=None, temporal=None, *, micro_batch_size: int | None = 4,
                  micro_frame_size: int | None = 17, dtype: str = "float32"):
    from vidjax.models.vae.kl import SD_VAE
    from vidjax.models.vae.temporal import OpenSoraVAE, TemporalVAEConfig

    spatial = dataclasses.replace(spatial or SD_VAE, dtype=dtype)
    temporal = dataclasses.replace(temporal or TemporalVAEConfig(), dtype=dtype)
    return nnx.eval_shape(lambda: OpenSoraVAE(spatial, temporal, micro_batch_size=micro_batch_size,
                                              micro_frame_size=micro_frame_size, rngs=nnx.Rngs(0)))


def check_vae_state_dict(model, state_dict: dict[str, np.ndarray], *, source: str = "checkpoint") -> ImportReport:
    """Names and shapes of an Open-Sora v1.2 VAE state_dict against ``model``; the v1.0 report on failure."""
    from vidjax.models.vae.convert import named_variables, to_jax_layout
    from vidjax.models.vae.temporal import opensora_key, opensora_name

    variables = named_variables(model)
    filled, unexpected, mismatched = set(), [], []
    for name, value in state_dict.items():
        path = opensora_key(name)
        var = variables.get(path)
        if var is None:
            unexpected.append(name)
            continue
        shape = tuple(var.shape)
        try:
            ours = to_jax_layout(np.broadcast_to(np.zeros((), np.float32), value.shape), len(shape)).shape
        except ValueError:
            ours = None
        if ours != shape:
            mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs model {shape} (vidjax layout)")
        filled.add(path)
    missing = [opensora_name(p) for p in variables if p not in filled]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(f"{source}: " + mismatch_message("OpenSoraVAE_V1_2 (SDXL VAE + VAE_Temporal_SD)",
                                                                       missing, sorted(unexpected), mismatched))
    return ImportReport(loaded=list(state_dict), dropped=[], missing=[], conv2d_unsqueezed=False)


def load_vae_dir(model, path: str | Path) -> ImportReport:
    """Load a published ``OpenSora-VAE-v1.2`` directory (or its ``model.safetensors``) into ``model`` strictly."""
    from vidjax.models.vae.temporal import load_opensora_state_dict

    path = Path(path)
    sd = read_weights(path) if path.is_dir() else read_checkpoint(path)
    report = check_vae_state_dict(model, sd, source=str(path / WEIGHTS if path.is_dir() else path))
    load_opensora_state_dict(model, sd)
    return report


def vae_from_pretrained(path: str | Path, *, spatial=None, temporal=None, micro_batch_size: int | None = 4,
                        micro_frame_size: int | None = 17, dtype: str = "float32"):
    """Build the v1.2 VAE (``spatial`` / ``temporal`` configs default to the published sizes) and load ``path``."""
    cfg = read_config(path)
    source = str(Path(path) / "config.json")
    if model_type(cfg, source) != VAE_TYPE:
        raise InputError(f"{source}: model_type {cfg.get('model_type')!r}; expected {VAE_TYPE!r}")
    mfs = cfg.get("micro_frame_size") or micro_frame_size
    model = _abstract_vae(spatial, temporal, micro_batch_size=micro_batch_size, micro_frame_size=mfs, dtype=dtype)
    return model, load_vae_dir(model, path)


def save_vae_pretrained(model, path: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a v1.2 VAE as ``config.json`` (``config``, else a minimal VideoAutoencoderPipeline one) + weights."""
    from vidjax.models.vae.temporal import opensora_state_dict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = dict(config or {"architectures": [VAE_TYPE], "model_type": VAE_TYPE,
                             "micro_frame_size": model.micro_frame_size, "torch_dtype": "float32"})
    save_safetensors(opensora_state_dict(model), path / WEIGHTS)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


# --------------------------------------------------------------------------------------
# Dispatch on config.json
# --------------------------------------------------------------------------------------


def from_pretrained(path: str | Path, **kwargs):
    """(model, report) for a published v1.2 directory: an ``STDiT3`` or the v1.2 VAE, by ``model_type``.

    ``kwargs``: vidjax fields for STDiT3 (dtype, remat, attention_impl, sequence_parallel) or the
    ``vae_from_pretrained`` options.
    """
    kind = model_type(read_config(path), str(Path(path) / "config.json"))
    if kind == STDIT3_TYPE:
        return stdit3_from_pretrained(path, **kwargs)
    return vae_from_pretrained(path, **kwargs)


def load_pretrained_dir(model, path: str | Path) -> ImportReport:
    """Load a published directory into an existing ``model`` (STDiT3 or OpenSoraVAE) in place, strictly."""
    kind = model_type(read_config(path), str(Path(path) / "config.json"))
    if kind == STDIT3_TYPE:
        if not isinstance(model, STDiT3):
            raise InputError(f"{path}: an STDiT3 directory; the model is a {type(model).__name__}")
        return load_stdit3_dir(model, path)
    from vidjax.models.vae.temporal import OpenSoraVAE

    if not isinstance(model, OpenSoraVAE):
        raise InputError(f"{path}: an OpenSora-VAE-v1.2 directory; the model is a {type(model).__name__}")
    return load_vae_dir(model, path)


def load_pretrained(model, path: str | Path, *, select: str = "auto", allow_missing: bool = False,
                    unsafe_pickle: bool = False):
    """Read a checkpoint into ``model`` in place and return the ``ImportReport``.

    A file: PixArt-α / Open-Sora v1.0 / vidjax-exported weights into an STDiT, or v1.2 weights into an
    STDiT3. A directory: a published v1.2 model (``config.json`` + ``model.safetensors``, see
    ``vidjax.interop.pretrained``) into an STDiT3 or the v1.2 VAE, strictly.
    """
    if Path(path).is_dir():
        return load_pretrained_dir(model, path)

    sd = read_checkpoint(path, select, unsafe_pickle=unsafe_pickle)
    return load_state_dict_into_stdit(model, sd, allow_missing=allow_missing)


__all__ = ["read_config", "read_weights", "model_type", "stdit3_config_of", "load_stdit3_dir",
           "stdit3_from_pretrained", "save_stdit3_pretrained", "check_vae_state_dict", "load_vae_dir",
           "vae_from_pretrained", "save_vae_pretrained", "from_pretrained", "load_pretrained_dir", "load_pretrained"]
