"""Video compressors: the ``vae`` config entry used by training, latent precompute and sampling alike.

Every compressor exposes the same interface (channels-last, videos in [-1, 1]):

- ``encode(x: [B, T, H, W, 3], *, sample=False, rng=None) -> z: [B, T', H', W', latent_channels]``
  (the deterministic posterior mean by default; ``sample=True, rng=key`` draws from it);
- ``decode(z, *, num_frames=None) -> x: [B, T, H, W, 3]`` (``num_frames`` crops the temporal padding;
  frame-wise compressors ignore it);
- ``latent_shape(T, H, W) -> (T', H', W')``, ``latent_channels``, ``downsample = (ft, fh, fw)``.

``vae`` config entries (a name or a dict; ``build_vae`` reads ``type`` and the keys below):

=================  =======================================================================================
``raw``            identity (3 channels, no compression)
``sd_vae``         per-frame SD ``AutoencoderKL``: ``from_pretrained`` (diffusers folder), ``micro_batch_size``
``opensora_vae``   v1.2 pipeline: ``from_pretrained`` (``model.safetensors`` or its folder),
                   ``micro_batch_size``, ``micro_frame_size``; ``spatial=`` / ``temporal=`` for other sizes
``causal_vae``     the standalone causal 3D KL-VAE (:class:`TemporalVAE`), the trainable one
``vq_vae``         VideoGPT-style VQ-VAE
``checkpoint``     a VAE trained by ``vidjax.train``: ``path`` (its workdir, whose ``vae_weights/`` holds the
                   weights, or a folder written by :func:`save_vae_weights`); the architecture is ``arch``
                   (an entry like the ones above) or read from ``<path>/vae_config.json``;
                   with ``train_config`` (a VAE config file, e.g. ``"configs/vae_shapes.py"``), ``vidjax.train``
                   first trains that VAE into ``path`` when it holds no finished weights (stage 0)
=================  =======================================================================================

Without ``from_pretrained`` a model is randomly initialised (``seed``) from ``model=dict(...)`` config
overrides (``spatial=`` / ``temporal=`` for ``opensora_vae``); any entry may add ``checkpoint=path``
(and ``checkpoint_item``, e.g. ``"ema"``) to restore trained weights. ``dtype`` sets the compute dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidjax.errors import ConfigError, InputError, MissingFileError
from vidjax.models.vae.kl import (
    SD_VAE,
    AutoencoderKL,
    AutoencoderKLConfig,
    VideoAutoencoderKL,
    gaussian_kl,
    gaussian_sample,
    load_diffusers_vae,
)
from vidjax.models.vae.temporal import (
    OpenSoraVAE,
    TemporalVAE,
    TemporalVAEConfig,
    load_opensora_state_dict,
    load_opensora_vae,
)
from vidjax.models.vae.vq import VQVAE, VQVAEConfig

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. The common interface and the identity
# --------------------------------------------------------------------------------------


@runtime_checkable
class VideoVAE(Protocol):
    latent_channels: int
    downsample: tuple[int, int, int]

    def encode(self, x: Array, *, sample: bool = False, rng: Array | None = None) -> Array: ...

    def decode(self, z: Array, *, num_frames: int | None = None) -> Array: ...

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int]: ...


class RawVAE(nnx.Module):
    """No compression: pixels are the latents. x: [B, T, H, W, C] -> the same array."""

    def __init__(self, channels: int = 3):
        self.latent_channels = channels
        self.downsample = (1, 1, 1)

    def encode(self, x: Array, *, sample: bool = False, rng: Array | None = None) -> Array:
        return x

    def decode(self, z: Array, *, num_frames: int | None = None) -> Array:
        return z

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        return T, H, W


# --------------------------------------------------------------------------------------
# 2. build_vae: the one reader of the ``vae`` config entry
# --------------------------------------------------------------------------------------

VAE_TYPES = ("raw", "sd_vae", "opensora_vae", "causal_vae", "vq_vae", "checkpoint")
VAE_CONFIG_FILE = "vae_config.json"
VAE_WEIGHTS_DIR = "vae_weights"  # inside a VAE training workdir


def _entry(config: Any) -> dict[str, Any]:
    if isinstance(config, str):
        return {"type": config}
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        config = config.to_dict()
    if not isinstance(config, Mapping) or "type" not in config:
        raise ConfigError(f"vae config must be a name or a dict with 'type' (one of {VAE_TYPES}), got {config!r}")
    return dict(config)


def _dataclass(cls, overrides: Mapping[str, Any] | None, base=None, **extra):
    """``cls`` from ``overrides`` (lists become tuples), on top of ``base``."""
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(overrides or {}).items()}
    kw.update({k: v for k, v in extra.items() if v is not None})
    unknown = set(kw) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return dataclasses.replace(base, **kw) if base is not None else cls(**kw)


def _checkpoint_arch(c: Mapping[str, Any], before_stage0: bool = False) -> dict[str, Any]:
    """The architecture entry of a ``checkpoint`` entry: its ``arch``, else ``<path>/vae_config.json``, else
    (``before_stage0``: nothing trained yet) the ``vae`` entry of its ``train_config``."""
    if c.get("arch") is not None:
        return _entry(c["arch"])
    saved = os.path.join(c.get("path", ""), VAE_CONFIG_FILE)
    if os.path.isfile(saved):
        with open(saved) as f:
            return _entry(json.load(f))
    if before_stage0 and c.get("train_config"):
        from vidjax.config import load_config

        return _entry(load_config(c["train_config"]).vae)
    raise MissingFileError(f"{saved}: not found, so the architecture of the VAE in vae.path is unknown "
                            "(train that VAE first, or give vae.arch)")


def vae_architecture(config: Any) -> VideoVAE:
    """The compressor of a ``vae`` entry built abstractly (``nnx.eval_shape``: no weights read, no init), for
    its ``latent_shape``, ``latent_channels`` and ``downsample`` (planning tools such as vidjax.estimate).

    A ``checkpoint`` entry is resolved from its ``arch``, ``<path>/vae_config.json``, or, before stage 0 has
    written that, the ``vae`` entry of its ``train_config``.
    """
    c = _entry(config)
    if c["type"] == "checkpoint":
        c = _checkpoint_arch(c, before_stage0=True)
    for k in ("from_pretrained", "checkpoint", "checkpoint_item"):
        c.pop(k, None)
    return nnx.eval_shape(lambda: build_vae(c))


def build_vae(config: Any) -> VideoVAE:
    """Build (and load) the compressor described by a ``vae`` config entry; see the module docstring.

    When weights are loaded the model is built abstractly (``nnx.eval_shape``): no random init.
    """
    c = _entry(config)
    kind, seed, dtype = c.pop("type"), c.pop("seed", 0), c.pop("dtype", None)
    pretrained, checkpoint = c.pop("from_pretrained", None), c.pop("checkpoint", None)
    item = c.pop("checkpoint_item", None)
    mbs, mfs = c.pop("micro_batch_size", 4), c.pop("micro_frame_size", 17)
    if kind == "checkpoint":
        path, arch = c.pop("path"), c.pop("arch", None)
        c.pop("train_config", None)  # how vidjax.train makes the VAE when ``path`` has none (``prepare_vae``)
        if c:
            raise ConfigError(f"unused keys in the 'checkpoint' vae config: {sorted(c)}")
        arch = _checkpoint_arch({"path": path, "arch": arch})
        weights = os.path.join(path, VAE_WEIGHTS_DIR)
        arch.update(checkpoint=weights if os.path.isdir(weights) else path,
                    checkpoint_item=item or arch.get("checkpoint_item"))
        return build_vae(arch)
    if kind not in VAE_TYPES:
        raise ConfigError(f"vae.type={kind!r}; expected one of {VAE_TYPES}")

    model_kw = c.pop("model", None)
    if kind == "sd_vae" and pretrained:
        model = VideoAutoencoderKL.from_pretrained(pretrained, micro_batch_size=mbs, dtype=dtype or "float32",
                                                   **(model_kw or {}))
    elif kind == "opensora_vae" and pretrained:  # spatial / temporal: sizes other than the published ones
        spatial, temporal = c.pop("spatial", None), c.pop("temporal", None)
        model = load_opensora_vae(pretrained, micro_batch_size=mbs, micro_frame_size=mfs, dtype=dtype or "float32",
                                  spatial=spatial and _dataclass(AutoencoderKLConfig, spatial, SD_VAE),
                                  temporal=temporal and _dataclass(TemporalVAEConfig, temporal))
    else:
        spatial, temporal = c.pop("spatial", None), c.pop("temporal", None)

        def make() -> nnx.Module:
            rngs = nnx.Rngs(seed)
            if kind == "raw":
                return RawVAE(**(model_kw or {}))
            if kind == "sd_vae":
                cfg = _dataclass(AutoencoderKLConfig, model_kw, SD_VAE, dtype=dtype)
                return VideoAutoencoderKL(cfg, micro_batch_size=mbs, rngs=rngs)
            if kind == "opensora_vae":
                return OpenSoraVAE(_dataclass(AutoencoderKLConfig, spatial, SD_VAE, dtype=dtype),
                                   _dataclass(TemporalVAEConfig, temporal, dtype=dtype),
                                   micro_batch_size=mbs, micro_frame_size=mfs, rngs=rngs)
            if kind == "causal_vae":
                return TemporalVAE(_dataclass(TemporalVAEConfig, model_kw, dtype=dtype), rngs=rngs)
            return VQVAE(_dataclass(VQVAEConfig, model_kw, dtype=dtype), rngs=rngs)

        if c:
            raise ConfigError(f"unused keys in the {kind!r} vae config: {sorted(c)}")
        model = nnx.eval_shape(make) if pretrained or checkpoint else make()
        if pretrained:
            if kind != "causal_vae":
                raise ConfigError(f"vae.from_pretrained is for sd_vae, opensora_vae and causal_vae, not {kind!r}")
            from vidjax.models.vae.convert import read_safetensors, resolve_file

            load_opensora_state_dict(model, read_safetensors(resolve_file(pretrained, ("model.safetensors",))))
    if c:
        raise ConfigError(f"unused keys in the {kind!r} vae config: {sorted(c)}")
    if checkpoint:
        restore_vae_weights(model, checkpoint, item=item)
    return model


# --------------------------------------------------------------------------------------
# 3. Trained weights (the contract with the VAE training task)
# --------------------------------------------------------------------------------------


def save_vae_weights(model: nnx.Module, path: str, config: Any | None = None) -> None:
    """Write ``nnx.state(model)`` as an orbax PyTree at ``path``, plus ``vae_config.json`` if given."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    ocp.PyTreeCheckpointer().save(path, nnx.state(model).to_pure_dict(), force=True)
    if config is not None:
        with open(os.path.join(path, VAE_CONFIG_FILE), "w") as f:
            json.dump(_entry(config), f, indent=1)


def restore_vae_weights(model: nnx.Module, path: str, *, item: str | None = None) -> None:
    """Load an orbax PyTree of ``nnx.state(model).to_pure_dict()`` (at ``item``, e.g. ``"ema"``) into model."""
    import orbax.checkpoint as ocp

    ckptr, path = ocp.PyTreeCheckpointer(), os.path.abspath(path)
    meta = ckptr.metadata(path)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    # restored as host numpy arrays: no device layout is implied by the checkpoint
    tree = ckptr.restore(path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))
    for key in (item or "").split("/"):
        tree = tree[key] if key else tree
    tree = jax.tree.map(jnp.asarray, tree)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, tree)
    missing = [k for k, v in nnx.to_flat_state(state) if isinstance(v.value, jax.ShapeDtypeStruct)]
    if missing:
        raise InputError(f"{path} lacks {len(missing)} of the model's tensors, e.g. {missing[:4]}")
    nnx.update(model, state)


__all__ = [
    "VideoVAE", "RawVAE", "build_vae", "VAE_TYPES", "VAE_CONFIG_FILE", "VAE_WEIGHTS_DIR", "save_vae_weights",
    "restore_vae_weights",
    "AutoencoderKL", "AutoencoderKLConfig", "VideoAutoencoderKL", "SD_VAE", "load_diffusers_vae",
    "TemporalVAE", "TemporalVAEConfig", "OpenSoraVAE", "load_opensora_vae",
    "VQVAE", "VQVAEConfig", "gaussian_kl", "gaussian_sample",
]
