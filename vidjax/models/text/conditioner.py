"""One text interface for train, precompute and sample.

``TextConditioner.encode(texts) -> (y [B, L, C] float32, mask [B, L] bool, pooled [B, C'] | None)``
whatever the encoder:
  * ``t5``:        T5 encoder states (Open-Sora), pooled None; captions cleaned by default;
  * ``clip``:      CLIP text states and the pooled EOS state (the earliest Open-Sora, SD-style adaLN);
  * ``trainable``: the small hashed-word embedding trained with the model (``shapes``), pooled None.
With ``cache_dir`` (t5 / clip only), each caption's embedding is stored once on disk under
``cache_dir/<encoder id>/<sha256(text)[:2]>/<sha256(text)>.npz`` and reused (precompute, repeated prompts).

``build_text_conditioner(config)`` reads the ``text`` section of a config (``ConfigDict`` or dict):
``encoder`` (t5 | clip | trainable); for t5 / clip ``path`` (HF checkpoint directory), ``tokenizer_path``
(default: ``path``), ``max_length`` (default 120 / 77), ``clean_caption`` (default on for T5),
``dtype`` / ``param_dtype``, ``cache_dir``, ``batch_size``, ``encoder_id``; for trainable ``vocab_size``,
``max_length``, ``dim``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidjax.errors import ConfigError, InputError
from vidjax.models.text.hf_weights import checkpoint_files, read_config

Array = jax.Array
KINDS = ("t5", "clip", "trainable")
DEFAULT_MAX_LENGTH = {"t5": 120, "clip": 77}


@partial(jax.jit, static_argnums=0)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, ids: Array, mask: Array) -> tuple[Array, Array | None]:
    out = nnx.merge(graphdef, state)(ids, mask)
    y, pooled = out if isinstance(out, tuple) else (out, None)
    return y.astype(jnp.float32), None if pooled is None else pooled.astype(jnp.float32)


class TextConditioner:
    """texts -> (y [B, L, C], mask [B, L], pooled [B, C'] | None), optionally through a disk cache.

    ``tokenizer``: texts -> (ids [B, L], mask [B, L]) numpy, with a ``max_length`` attribute;
    ``encoder``: an NNX module ``(ids, mask) -> y`` or ``-> (y, pooled)``.
    ``batch_size``: encode in fixed-size chunks (the last one padded) so that one compile serves all.
    """

    def __init__(self, kind: str, tokenizer: Callable, encoder: nnx.Module, *, encoder_id: str, dim: int,
                 pooled_dim: int | None = None, cache_dir: str | Path | None = None, batch_size: int | None = None,
                 cache_dtype: str = "float32"):
        if kind not in KINDS:
            raise ConfigError(f"text.encoder={kind!r}; expected one of {KINDS}")
        if cache_dir and kind == "trainable":
            raise ValueError("text.cache_dir: a trainable text encoder changes during training; its outputs "
                             "cannot be cached")
        self.kind, self.tokenizer, self.encoder = kind, tokenizer, encoder
        self.encoder_id, self.dim, self.pooled_dim = encoder_id, dim, pooled_dim
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size, self.cache_dtype = batch_size, np.dtype(cache_dtype)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids [B, L] int32, mask [B, L] bool), numpy."""
        return self.tokenizer(list(texts))

    def _encode_now(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        graphdef, state = nnx.split(self.encoder)
        step = self.batch_size or len(texts)
        ys, masks, pooled = [], [], []
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            ids, mask = self.tokenize(chunk + [""] * (step - len(chunk)))
            y, p = _apply(graphdef, state, jnp.asarray(ids), jnp.asarray(mask))
            ys.append(np.asarray(y)[: len(chunk)])
            masks.append(mask[: len(chunk)])
            pooled.append(None if p is None else np.asarray(p)[: len(chunk)])
        return (np.concatenate(ys), np.concatenate(masks),
                None if pooled[0] is None else np.concatenate(pooled))

    # ---- disk cache ----
    def cache_path(self, text: str) -> Path:
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.cache_dir / _safe_name(self.encoder_id) / h[:2] / f"{h}.npz"

    def _load(self, text: str) -> dict[str, np.ndarray] | None:
        path = self.cache_path(text)
        if not path.is_file():
            return None
        with np.load(path) as f:
            return {k: f[k] for k in f.files}

    def _store(self, text: str, y: np.ndarray, mask: np.ndarray, pooled: np.ndarray | None) -> None:
        path = self.cache_path(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(y=y.astype(self.cache_dtype), mask=mask)
        if pooled is not None:
            arrays["pooled"] = pooled.astype(self.cache_dtype)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")  # atomic: parallel precompute jobs
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    def cached(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(y [B, L, C] float32, mask [B, L] bool) from the disk cache only: numpy, no JAX (loader threads)."""
        rows = []
        for t in texts:
            row = self._load(t)
            if row is None:
                raise KeyError(f"caption not in the text cache {self.cache_dir} (precompute it first): {t[:80]!r}")
            rows.append(row)
        return np.stack([r["y"] for r in rows]).astype(np.float32), np.stack([r["mask"] for r in rows])

    def encode(self, texts: list[str]) -> tuple[Array, Array, Array | None]:
        """texts -> (y [B, L, C] float32, mask [B, L] bool, pooled [B, C'] float32 | None)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("encode() needs at least one text")
        if self.cache_dir is None:
            y, mask, pooled = self._encode_now(texts)
            return jnp.asarray(y), jnp.asarray(mask), None if pooled is None else jnp.asarray(pooled)
        found = {t: self._load(t) for t in dict.fromkeys(texts)}
        missing = [t for t, v in found.items() if v is None]
        if missing:
            y, mask, pooled = self._encode_now(missing)
            for i, t in enumerate(missing):
                self._store(t, y[i], mask[i], None if pooled is None else pooled[i])
                found[t] = dict(y=y[i], mask=mask[i], **({} if pooled is None else {"pooled": pooled[i]}))
        rows = [found[t] for t in texts]
        y = jnp.asarray(np.stack([r["y"] for r in rows]).astype(np.float32))
        mask = jnp.asarray(np.stack([r["mask"] for r in rows]))
        pooled = jnp.asarray(np.stack([r["pooled"] for r in rows]).astype(np.float32)) if "pooled" in rows[0] else None
        return y, mask, pooled


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    value = getattr(cfg, key, default)
    return default if value is None else value


def checkpoint_fingerprint(directory: str | Path) -> str:
    """Short hash of ``config.json`` plus the size and a 64 KiB middle slice of each weight file."""
    d = Path(directory)
    h = hashlib.sha256((d / "config.json").read_bytes())
    for f in checkpoint_files(d)[1]:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            fh.seek(size // 2)
            h.update(f"{f.name}:{size}".encode() + fh.read(1 << 16))
    return h.hexdigest()[:12]


def model_kind(directory: str | Path) -> str:
    """"t5" or "clip" from the ``model_type`` in ``config.json``."""
    model_type = read_config(directory).get("model_type")
    kinds = {"t5": "t5", "mt5": "t5", "clip": "clip", "clip_text_model": "clip"}
    if model_type not in kinds:
        raise InputError(f"{Path(directory) / 'config.json'}: model_type {model_type!r} is neither T5 nor CLIP")
    return kinds[model_type]


def build_text_conditioner(config: Any, *, mesh: jax.sharding.Mesh | None = None,
                           text_module: nnx.Module | None = None) -> TextConditioner:
    """A ``TextConditioner`` from ``config.text`` (or a text section / dict itself); see the module docstring.

    ``mesh``: load T5 / CLIP weights sharded onto it. ``text_module``: for ``trainable``, the encoder being
    trained (otherwise a fresh one is created).
    """
    text = _get(config, "text", config)
    kind = _get(text, "encoder")
    if kind not in KINDS:
        raise ConfigError(f"text.encoder={kind!r}; expected one of {KINDS}")
    if kind == "trainable":
        from vidjax.models.text.trainable import HashTokenizer, TrainableTextEncoder

        vocab_size, max_length, dim = _get(text, "vocab_size"), _get(text, "max_length"), _get(text, "dim")
        encoder = text_module or TrainableTextEncoder(vocab_size, max_length, dim, rngs=nnx.Rngs(_get(text, "seed", 0)))
        return TextConditioner(kind, HashTokenizer(vocab_size, max_length), encoder, encoder_id="trainable", dim=dim,
                               batch_size=_get(text, "batch_size"), cache_dir=_get(text, "cache_dir"))

    from vidjax.models.text.clip import load_clip_text_encoder
    from vidjax.models.text.t5 import load_t5_encoder
    from vidjax.models.text.tokenize import load_text_tokenizer

    path = _get(text, "path")
    if not path:
        raise ConfigError(f"config.text.path: a Hugging Face checkpoint directory is required for "
                          f"text.encoder={kind!r}")
    max_length = _get(text, "max_length") or DEFAULT_MAX_LENGTH[kind]
    clean = _get(text, "clean_caption", kind == "t5")
    tokenizer = load_text_tokenizer(_get(text, "tokenizer_path") or path, kind, max_length, clean=clean)
    dtype, param_dtype = _get(text, "dtype", "float32"), _get(text, "param_dtype", "float32")
    load = load_t5_encoder if kind == "t5" else load_clip_text_encoder
    encoder = load(path, mesh=mesh, dtype=dtype, param_dtype=param_dtype)
    dim = encoder.cfg.d_model if kind == "t5" else encoder.cfg.hidden_size
    encoder_id = _get(text, "encoder_id") or (
        f"{kind}-{Path(path).resolve().name}-{checkpoint_fingerprint(path)}-L{max_length}"
        f"-{'clean' if clean else 'raw'}-{dtype}")
    return TextConditioner(kind, tokenizer, encoder, encoder_id=encoder_id, dim=dim,
                           pooled_dim=dim if kind == "clip" else None, cache_dir=_get(text, "cache_dir"),
                           batch_size=_get(text, "batch_size"), cache_dtype=_get(text, "cache_dtype", "float32"))


__all__ = ["TextConditioner", "build_text_conditioner", "checkpoint_fingerprint", "model_kind", "KINDS"]
