"""Checkpoint files: read PyTorch ``.pth`` (torch needed) or ``.safetensors`` (no torch), write safetensors.

``read_checkpoint(path, select)`` returns a flat ``{name: np.ndarray}`` state_dict. Training
checkpoints hold several dicts; ``select`` picks one (Open-Sora ``find_model``: ``"ema"`` when
present; PixArt ``reparameter``: ``"state_dict"``).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vidjax.errors import ConfigError, InputError, MissingFileError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
SELECT_CHOICES = ("auto", "ema", "state_dict", "none")


class CheckpointFormatError(InputError):
    """The file is not a checkpoint this module can read."""


def read_checkpoint(path: str | Path, select: str = "auto", *, unsafe_pickle: bool = False) -> dict[str, np.ndarray]:
    """Flat state_dict of a ``.pth``/``.pt``/``.bin``/``.ckpt`` (via torch) or ``.safetensors`` file.

    ``select``: ``auto`` (``ema`` if present, else ``state_dict`` if present, else the top level),
    ``ema``, ``state_dict`` or ``none`` (the top level). bf16 tensors become float32 (exact).
    ``unsafe_pickle``: let ``torch.load`` run arbitrary pickled code (trusted files only).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return select_state_dict(_read_torch(path, unsafe_pickle), select, source=str(path))
    raise CheckpointFormatError(f"{path}: unknown checkpoint format {suffix!r}; expected "
                                f"{', '.join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        sd = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({err})") from err
    return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in sd.items()}


def _read_torch(path: Path, unsafe_pickle: bool):
    try:
        import torch
    except ImportError as err:
        raise CheckpointFormatError(f"{path}: reading {path.suffix} files needs torch (pip install torch); "
                                    "or convert it to .safetensors where torch is installed") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if text.strip() else ""
        if "unsupported global" not in text.lower():  # not a checkpoint pickle at all: no flag will help
            raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({detail})") from err
        raise CheckpointFormatError(
            f"{path}: the file holds Python objects that a safe torch.load refuses ({detail}). If it comes from a "
            f"source you trust, convert it once with python -m vidjax.convert {path} --unsafe-pickle --out "
            "model.safetensors (plus its --model options) and use that file") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({err})") from err


def select_state_dict(obj, select: str = "auto", *, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Pick the state_dict out of a loaded training checkpoint and turn tensors into numpy."""
    if select not in SELECT_CHOICES:
        raise ConfigError(f"select={select!r}; expected one of {SELECT_CHOICES}")
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source}: holds a {type(obj).__name__}, not a state_dict")
    keys = [k for k in obj if isinstance(obj[k], Mapping)]
    if select == "auto":
        select = "ema" if "ema" in keys else "state_dict" if "state_dict" in keys else "none"
    if select != "none":
        if select not in keys:
            raise CheckpointFormatError(f"{source}: has no {select!r} entry; top-level keys: {sorted(map(str, obj))}")
        obj = obj[select]
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "shape"):
            raise CheckpointFormatError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor; this looks like "
                                        f"a training state: choose the weights with select/--select "
                                        f"(dict entries: {sorted(map(str, keys))})")
        out[str(k)] = _to_numpy(v)
    return out


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if type(v).__module__.startswith("torch"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()  # exact
        return v.numpy()
    return np.asarray(v)


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str | Path, metadata: dict | None = None) -> None:
    """Write a torch-loadable safetensors file (``format: pt`` metadata) without torch."""
    from safetensors.numpy import save_file

    meta = {"format": "pt", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path), metadata=meta)


# --------------------------------------------------------------------------------------
# Whole-model helpers shared by ``vidjax.export`` and ``vidjax.convert``
# --------------------------------------------------------------------------------------


def opensora_kwargs(cfg, input_size: tuple[int, int, int]) -> dict:
    """Keyword arguments of Open-Sora v1.0 ``STDiT(...)`` that rebuild this model in PyTorch."""
    return dict(input_size=list(input_size), in_channels=cfg.in_channels, patch_size=list(cfg.patch),
                hidden_size=cfg.hidden, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                pred_sigma=cfg.learn_sigma, caption_channels=cfg.caption_channels,
                model_max_length=cfg.model_max_length, space_scale=cfg.space_scale, time_scale=cfg.time_scale)


def write_opensora(model, out: str | Path, input_size: tuple[int, int, int], *, dtype=None,
                   info: dict | None = None) -> dict:
    """Write ``model`` as an Open-Sora v1.0 state_dict (safetensors) and a JSON of its config next to it.

    Returns the JSON written (also at ``out`` with the suffix ``.json``).
    """
    import dataclasses

    from vidjax.interop.torch_names import stdit_to_state_dict

    sd = stdit_to_state_dict(model, *input_size, dtype=dtype)
    cfg = model.cfg
    meta = {"opensora_model": "STDiT", "opensora_kwargs": opensora_kwargs(cfg, input_size),
            "vidjax_config": dataclasses.asdict(cfg), "num_tensors": len(sd),
            "num_elements": int(sum(v.size for v in sd.values())),
            "dtype": str(next(iter(sd.values())).dtype), **(info or {})}
    if cfg.qk_norm or cfg.temporal_rope or cfg.fps_conditioning:
        meta["note"] = ("STDiT3 options are on: q_norm/k_norm/fps_embedder keys and RoPE have no counterpart in "
                        "Open-Sora v1.0's STDiT, which will not load this file strictly")
    if getattr(cfg, "temporal_pos", "block0") != "block0":
        meta["warning"] = (f"temporal_pos={cfg.temporal_pos!r}: this model adds the temporal position embedding to "
                           "every token after the patch embedding, Open-Sora v1.0's STDiT only in its first block's "
                           "temporal attention. The file loads strictly into Open-Sora v1.0 but computes something "
                           "else there")
    out = Path(out)
    save_safetensors(sd, out, {"vidjax": meta})
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
