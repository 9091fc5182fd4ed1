"""The trained network as one module, and how a config builds it.

``TextToVideo`` holds the denoiser (``.dit``: STDiT (v1.0), STDiT3 (v1.2) or a DiT baseline) and, when the text
encoder is trained jointly (``text.encoder = "trainable"``), the text encoder (``.text``).
Frozen encoders (T5, CLIP) and the VAE live outside it: they are not optimised.

Call: x_t [B, T, H, W, C], t [B], cond {"ids"|"y": ..., "mask": [B, L]}, drop [B] -> [B, T, H, W, C_out].
STDiT3 also reads ``cond["fps"]`` [B] (default ``data.fps``, else 24) and ``cond["x_mask"]`` [B, T'] (clean frames).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from vidjax.errors import ConfigError
from vidjax.models.dit import DiT, dit_config
from vidjax.models.latte import Latte, latte_config
from vidjax.models.stdit import STDiT, stdit_config
from vidjax.models.stdit3 import STDiT3, stdit3_config
from vidjax.models.text.trainable import HashTokenizer, TrainableTextEncoder


class TextToVideo(nnx.Module):
    def __init__(self, dit: nnx.Module, text: nnx.Module | None = None, fps: float = 24.0):
        self.dit, self.text, self.fps = dit, text, float(fps)

    def __call__(self, x: jax.Array, t: jax.Array, cond: dict, drop: jax.Array | None = None) -> jax.Array:
        y = self.text(cond["ids"], cond["mask"]) if self.text is not None else cond["y"]
        if isinstance(self.dit, STDiT3):  # v1.2 conditions every sample on its frame rate
            fps = cond.get("fps", jnp.full((x.shape[0],), self.fps, jnp.float32))
            return self.dit(x, t, y, cond["mask"], x_mask=cond.get("x_mask"), fps=fps, drop=drop)
        return self.dit(x, t, y, cond["mask"], drop)


#: ``model.name="stdit3"``: vidjax's model fields (the STDiT names every config uses) -> v1.2's STDiT3Config fields
STDIT3_FIELDS = {"depth": "depth", "hidden": "hidden_size", "heads": "num_heads", "mlp_ratio": "mlp_ratio",
                 "patch": "patch_size", "learn_sigma": "pred_sigma", "qk_norm": "qk_norm", "dtype": "dtype",
                 "remat": "remat", "scan_layers": "scan_layers", "attention_impl": "attention_impl",
                 "sequence_parallel": "sequence_parallel",
                 "freeze_y_embedder": "freeze_y_embedder", "only_train_temporal": "only_train_temporal"}
#: STDiT (v1.0) options that STDiT3 answers by design: its 2D position table is rebuilt from each size, time is
#: RoPE in temporal attention. Accepted at their defaults only.
STDIT_ONLY_DEFAULTS = {"space_scale": 1.0, "time_scale": 1.0, "temporal_rope": False, "temporal_pos": "block0",
                       "freeze": "", "skips": False}


def stdit3_kwargs(config) -> dict:
    """``config.model`` (vidjax's field names) as STDiT3Config keyword arguments; one-line errors otherwise."""
    kw = {}
    for key, value in config.model.items():
        if key in ("name", "size"):
            continue
        if key in STDIT3_FIELDS:
            kw[STDIT3_FIELDS[key]] = tuple(value) if key == "patch" else value
        elif key in STDIT_ONLY_DEFAULTS:
            if value != STDIT_ONLY_DEFAULTS[key]:
                raise ConfigError(f"config.model.{key}={value!r} is an STDiT (v1.0) option; model.name='stdit3' "
                                  f"takes only {STDIT_ONLY_DEFAULTS[key]!r}")
        else:
            raise ConfigError(f"config.model.{key}: not a field of model.name='stdit3'; expected some of "
                              f"{', '.join(STDIT3_FIELDS)}")
    return kw


def model_kwargs(config) -> dict:
    """``config.model`` minus the keys that are not STDiTConfig fields."""
    kw = {k: v for k, v in config.model.items() if k not in ("name", "size")}
    if "patch" in kw:
        kw["patch"] = tuple(kw["patch"])
    return kw


def build_model(config, rngs: nnx.Rngs, *, latent_channels: int) -> TextToVideo:
    """Build the trained module from ``config.model`` / ``config.text``."""
    text = None
    if config.text.encoder == "trainable":
        text = TrainableTextEncoder(config.text.vocab_size, config.text.max_length, config.text.dim, rngs=rngs)
        caption_channels, max_len = config.text.dim, config.text.max_length
    else:
        caption_channels, max_len = config.text.dim, config.text.max_length
    name = config.model.get("name", "stdit")
    kw = model_kwargs(config)
    kw.update(in_channels=latent_channels, caption_channels=caption_channels, model_max_length=max_len)
    size = config.model.get("size") or None
    if name == "stdit":
        dit = STDiT(stdit_config(size, **kw), rngs=rngs)
    elif name == "dit":
        dit = DiT(dit_config(size, **kw), rngs=rngs)
    elif name == "latte":
        dit = Latte(latte_config(**kw), rngs=rngs)
    elif name == "stdit3":
        kw3 = stdit3_kwargs(config)
        kw3.update(in_channels=latent_channels, caption_channels=caption_channels, model_max_length=max_len)
        dit = STDiT3(stdit3_config(size, **kw3), rngs=rngs)
    else:
        raise ConfigError(f"config.model.name={name!r}; expected 'stdit', 'stdit3', 'dit' or 'latte'")
    return TextToVideo(dit, text, fps=config.data.get("fps", 24))


def split_for_sampling(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """``nnx.split(model)`` with the denoiser's blocks in one scan whatever ``model.scan_layers`` says: unrolled
    blocks spare the *backward* pass the scan's stacked-residual copies, a forward pass gains nothing, and the
    sampling loop ran ~18% slower with them on CPU. The parameters are the same either way."""
    dit = getattr(model, "dit", model)
    cfg = getattr(dit, "cfg", None)
    if cfg is None or getattr(cfg, "scan_layers", True):
        return nnx.split(model)
    dit.cfg = dataclasses.replace(cfg, scan_layers=True)
    try:
        return nnx.split(model)
    finally:
        dit.cfg = cfg


def trainable(model: TextToVideo):
    """The nnx filter of optimised parameters, from the denoiser's ``freeze`` setting."""
    return model.dit.trainable()


class TextInputs:
    """Captions -> the model's text inputs, for training, the loader and sampling alike.

    * ``text.encoder = "trainable"``: ``{"ids": int32 [B, L], "mask": bool [B, L]}`` (the model embeds them);
    * ``"t5"`` / ``"clip"`` (frozen): ``{"y": float32 [B, L, C], "mask": bool [B, L]}`` from the encoder in the
      local Hugging Face directory ``text.path``, through the disk cache ``text.cache_dir`` when set (each
      distinct caption is embedded once; :meth:`precompute` fills it before training, :meth:`for_loader`
      reads it without touching JAX, so it is safe in the loader's threads).
    """

    def __init__(self, config):
        self.kind = config.text.encoder
        self.frozen = self.kind != "trainable"
        if self.frozen:
            from vidjax.models.text.conditioner import build_text_conditioner

            self.conditioner = build_text_conditioner(config)
            self.dim, self.max_length = self.conditioner.dim, self.conditioner.max_length
            self.keys = ("y", "mask")
        else:
            if self.kind is None or self.kind not in ("trainable",):
                raise ConfigError(f"config.text.encoder={self.kind!r}; expected 'trainable', 't5' or 'clip'")
            self.tokenizer = HashTokenizer(config.text.vocab_size, config.text.max_length)
            self.dim, self.max_length = config.text.dim, config.text.max_length
            self.keys = ("ids", "mask")

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if not self.frozen:
            ids, mask = self.tokenizer(list(texts))
            return {"ids": ids, "mask": mask}
        y, mask, _ = self.conditioner.encode(list(texts))
        return {"y": np.asarray(y), "mask": np.asarray(mask)}

    def precompute(self, texts: list[str], progress: bool = False, chunk: int = 256) -> None:
        """Embed every caption not in the disk cache yet (frozen encoders with ``text.cache_dir``)."""
        if not self.frozen or self.conditioner.cache_dir is None:
            return
        todo = [t for t in texts if not self.conditioner.cache_path(t).is_file()]
        for i in tqdm(range(0, len(todo), chunk), desc="embedding captions", disable=not progress or not todo,
                      unit="batch", leave=False):
            self.conditioner.encode(todo[i : i + chunk])

    def for_loader(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Like calling it, but a frozen encoder's embeddings come from the cache only (numpy, no JAX)."""
        if not self.frozen or self.conditioner.cache_dir is None:
            return self(texts)
        y, mask = self.conditioner.cached(texts)
        return {"y": y, "mask": mask}


def text_inputs(config) -> TextInputs:
    return TextInputs(config)

