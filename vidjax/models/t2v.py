"""The trained network as one module, and how a config builds it.

``TextToVideo`` holds the denoiser (``.dit``: STDiT, or a DiT baseline) and, when the text
encoder is trained jointly (``text.encoder = "trainable"``), the text encoder (``.text``).
Frozen encoders (T5, CLIP) and the VAE live outside it: they are not optimised.

Call: x_t [B, T, H, W, C], t [B], cond {"ids"|"y": ..., "mask": [B, L]}, drop [B] -> [B, T, H, W, C_out].
"""

from __future__ import annotations

import jax
from flax import nnx

from vidjax.models.dit import DiT, dit_config
from vidjax.models.stdit import STDiT, stdit_config
from vidjax.models.text.trainable import HashTokenizer, TrainableTextEncoder


class TextToVideo(nnx.Module):
    def __init__(self, dit: nnx.Module, text: nnx.Module | None = None):
        self.dit, self.text = dit, text

    def __call__(self, x: jax.Array, t: jax.Array, cond: dict, drop: jax.Array | None = None) -> jax.Array:
        y = self.text(cond["ids"], cond["mask"]) if self.text is not None else cond["y"]
        return self.dit(x, t, y, cond["mask"], drop)


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
    else:
        raise ValueError(f"model.name={name!r}; expected 'stdit' or 'dit'")
    return TextToVideo(dit, text)


def trainable(model: TextToVideo):
    """The nnx filter of optimised parameters, from the denoiser's ``freeze`` setting."""
    return model.dit.trainable()


def build_tokenizer(config):
    if config.text.encoder == "trainable":
        return HashTokenizer(config.text.vocab_size, config.text.max_length)
    raise ValueError(f"text.encoder={config.text.encoder!r} has no built-in tokenizer here")
