"""Classifier-free guidance: caption dropout in training, guided model calls in sampling (plus ``normal``,
the Gaussian noise draw both objectives share).

A *model function* has the signature ``model_fn(x_t, t, cond, drop) -> out`` with
x_t: [B, T, H, W, C], t: [B] (0..1000 scale), ``cond`` a pytree of [B, ...] arrays,
``drop``: [B] bool (True = use the null caption) and out: [B, T, H, W, C_out].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

ModelFn = Callable[..., jax.Array]


def normal(rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal`` drawn flat and reshaped: same distribution, but XLA:CPU compiles the rank-5
    threefry draw ~2 s slower per call site than the flat one."""
    return jax.random.normal(rng, (math.prod(shape),), dtype).reshape(shape)


def caption_drop(rng: jax.Array, batch: int, p: float) -> jax.Array:
    """[B] bool: which samples train unconditionally (Open-Sora ``class_dropout_prob``)."""
    return jax.random.uniform(rng, (batch,)) < p


def guided(model_fn: ModelFn, cfg_scale: float, cfg_channels: int | None = None) -> ModelFn:
    """Wrap ``model_fn`` so one call runs the conditional and null-caption passes as one batch.

    Both halves see the same ``x_t``. ``out = uncond + s · (cond − uncond)`` on the first
    ``cfg_channels`` output channels (default: the first C_in, i.e. all prediction channels);
    the remaining channels (e.g. learned variance) come from the conditional pass.
    ``cfg_channels=3`` reproduces Open-Sora v1.0, which guides 3 of 4 eps channels.
    """
    if cfg_scale == 1.0:
        return lambda x, t, cond, drop=None: model_fn(x, t, cond, jnp.zeros(x.shape[0], bool))

    def fn(x, t, cond, drop=None):
        B = x.shape[0]
        both = jax.tree.map(lambda a: jnp.concatenate([a, a]), (x, t, cond))
        drop2 = jnp.concatenate([jnp.zeros(B, bool), jnp.ones(B, bool)])
        out = model_fn(*both, drop2)
        cond_out, uncond_out = out[:B], out[B:]
        n = x.shape[-1] if cfg_channels is None else cfg_channels
        mixed = uncond_out[..., :n] + cfg_scale * (cond_out[..., :n] - uncond_out[..., :n])
        return jnp.concatenate([mixed, cond_out[..., n:]], axis=-1)

    return fn
