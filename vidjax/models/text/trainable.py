"""A small trainable text encoder for closed-vocabulary captions (the ``shapes`` default).

``HashTokenizer`` maps lowercase words to ids by a stable hash (no vocabulary file to ship);
``TrainableTextEncoder`` is a learned word embedding plus a learned position embedding,
trained jointly with the denoiser. Real captions use T5 or CLIP instead.
"""

from __future__ import annotations

import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_WORD = re.compile(r"[a-z0-9]+")


class HashTokenizer:
    """texts -> (ids int32 [B, L], mask bool [B, L]); id 0 is padding, words hash into 1..vocab-1."""

    def __init__(self, vocab_size: int = 1024, max_length: int = 16):
        self.vocab_size, self.max_length = vocab_size, max_length

    def word_id(self, word: str) -> int:
        return 1 + zlib.crc32(word.encode()) % (self.vocab_size - 1)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(texts), self.max_length), np.int32)
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower())[: self.max_length]
            ids[i, : len(words)] = [self.word_id(w) for w in words]
        return ids, ids > 0


class TrainableTextEncoder(nnx.Module):
    """ids: [B, L] int, mask: [B, L] -> y: [B, L, C] (padding positions zeroed)."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, dim, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(rngs.params(), (max_length, dim)) * 0.1)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        y = self.embed(ids) + self.pos[...][None, : ids.shape[1]]
        return jnp.where(mask[..., None], y, 0.0)
