"""Rectified flow as in Open-Sora v1.2: straight paths from data to noise, velocity target.

Noising ``x_t = (1 − s)·x0 + s·ε`` with ``s = t/1000 ∈ [0, 1]``; the model predicts
``v = x0 − ε``. Sampling integrates from s=1 (noise) to s=0 (data) with Euler steps.
Tensors: x0, ε: [B, T, H, W, C]; t: [B].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vidjax.diffusion.guidance import ModelFn, caption_drop, guided

NUM_TIMESTEPS = 1000


def timestep_transform(t: jax.Array, height: int, width: int, frames: int, *,
                       base_resolution: int = 512 * 512, scale: float = 1.0) -> jax.Array:
    """Open-Sora's resolution- and length-aware shift of t ∈ [0, 1000].

    ``r = sqrt(H·W / 512²) · sqrt(nf)``, ``nf = frames // 17 · 5`` (1 for images),
    ``t' = r·s / (1 + (r − 1)·s)`` with ``s = t / 1000``. Height/width are in pixels.
    """
    nf = 1 if frames == 1 else max(frames // 17 * 5, 1)
    ratio = (height * width / base_resolution) ** 0.5 * nf**0.5 * scale
    s = t / NUM_TIMESTEPS
    return ratio * s / (1 + (ratio - 1) * s) * NUM_TIMESTEPS


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """``loss`` and ``sample`` for rectified flow; see the module docstring."""

    sample_method: str = "logit-normal"  # or "uniform"
    use_timestep_transform: bool = False
    transform_hw: tuple[int, int] = (512, 512)  # pixel size fed to timestep_transform
    transform_scale: float = 1.0
    caption_dropout: float = 0.1

    def _shift(self, t: jax.Array, frames: int) -> jax.Array:
        if not self.use_timestep_transform:
            return t
        h, w = self.transform_hw
        return timestep_transform(t, h, w, frames, scale=self.transform_scale)

    def sample_t(self, rng: jax.Array, batch: int, frames: int) -> jax.Array:
        if self.sample_method == "logit-normal":
            s = jax.nn.sigmoid(jax.random.normal(rng, (batch,)))
        elif self.sample_method == "uniform":
            s = jax.random.uniform(rng, (batch,))
        else:
            raise ValueError(f"diffusion.sample_method={self.sample_method!r}; expected logit-normal or uniform")
        return self._shift(s * NUM_TIMESTEPS, frames)

    def add_noise(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        s = (t / NUM_TIMESTEPS).reshape((-1,) + (1,) * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise

    def loss(self, model_fn: ModelFn, x0: jax.Array, cond, rng: jax.Array,
             frame_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Mean-squared velocity error. ``frame_mask``: [B, T], True = noised (False frames stay clean
        and are left out of the loss). Returns (scalar loss, metrics)."""
        r_t, r_n, r_d = jax.random.split(rng, 3)
        B, T = x0.shape[:2]
        t = self.sample_t(r_t, B, T)
        noise = jax.random.normal(r_n, x0.shape, x0.dtype)
        x_t = self.add_noise(x0, noise, t)
        if frame_mask is not None:
            x_t = jnp.where(frame_mask[:, :, None, None, None], x_t, x0)
        out = model_fn(x_t, t, cond, caption_drop(r_d, B, self.caption_dropout))
        pred = out[..., : x0.shape[-1]]  # learned-sigma channels are not used by the flow loss
        err = jnp.square(pred - (x0 - noise))
        if frame_mask is None:
            per = err.mean(axis=tuple(range(1, err.ndim)))
        else:
            w = frame_mask[:, :, None, None, None].astype(err.dtype)
            per = (err * w).sum(axis=tuple(range(1, err.ndim))) / jnp.maximum(
                w.sum(axis=tuple(range(1, err.ndim))) * err[0, 0].size, 1)
        return per.mean(), {"loss": per.mean(), "t_mean": t.mean()}

    def timesteps(self, steps: int, frames: int) -> jax.Array:
        """The sampling grid ``t_i = (1 − i/steps)·1000``, shifted like training."""
        t = (1 - jnp.arange(steps) / steps) * NUM_TIMESTEPS
        return self._shift(t, frames)

    def sample(self, model_fn: ModelFn, noise: jax.Array, cond, rng: jax.Array | None = None, *, steps: int = 30,
               cfg_scale: float = 7.0, cfg_channels: int | None = None) -> jax.Array:
        """Euler integration from noise (s=1) to data (s=0), classifier-free guided."""
        fn = guided(model_fn, cfg_scale, cfg_channels)
        ts = self.timesteps(steps, noise.shape[1])
        dts = jnp.concatenate([ts[:-1] - ts[1:], ts[-1:]]) / NUM_TIMESTEPS  # last step goes to 0

        def step(z, t_dt):
            t, dt = t_dt
            v = fn(z, jnp.full((z.shape[0],), t), cond)[..., : z.shape[-1]]
            return z + v * dt, None

        z, _ = jax.lax.scan(step, noise, (ts, dts))
        return z
