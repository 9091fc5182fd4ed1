"""Rectified flow as in Open-Sora v1.2: straight paths from data to noise, velocity target.

Noising ``x_t = (1 − s)·x0 + s·ε`` with ``s = t/1000 ∈ [0, 1]``; the model predicts ``v = x0 − ε``
(the negative of diffusers' flow-matching velocity ``ε − x0``). Sampling integrates from s=1 (noise) to
s=0 (data) with Euler steps ``z += v·(t_i − t_{i+1})/1000`` on ``t_i = (1 − i/N)·1000``, the last step to 0.
Training t: sigmoid(N(0,1))·1000 ("logit-normal") or U(0,1)·1000, then optionally Open-Sora's
``timestep_transform``; sampling uses the same transform.

Tensors: x0, ε: [B, T, H, W, C] latents, channels-last; t: [B]; model output [B, T, H, W, C or 2C].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vidjax.diffusion.guidance import ModelFn, caption_drop, guided, normal

NUM_TIMESTEPS = 1000


def shift_ratio(height: int, width: int, num_frames: int, *, base_resolution: int = 512 * 512,
                scale: float = 1.0) -> float:
    """Open-Sora's shift ``r = sqrt(H·W / 512²) · sqrt(nf) · scale``, H, W in pixels.

    ``num_frames`` is Open-Sora's ``nf``: 1 for images, else ``pixel_frames // 17 * 5``, which for the v1.2
    VAE (17 frames → 5 latents) equals the number of *latent* frames at Open-Sora's frame buckets.
    """
    return (height * width / base_resolution) ** 0.5 * num_frames**0.5 * scale


def timestep_transform(t: jax.Array, ratio: float) -> jax.Array:
    """``t' = r·s / (1 + (r − 1)·s)·1000`` with ``s = t/1000`` (diffusers' ``shift`` with shift = r)."""
    s = t / NUM_TIMESTEPS
    return ratio * s / (1 + (ratio - 1) * s) * NUM_TIMESTEPS


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """``loss`` and ``sample`` for rectified flow; see the module docstring.

    With ``use_timestep_transform`` the shift is computed from the latent shape [T, h, w]: pixel size
    ``(h, w)·vae_spatial`` (or ``transform_hw`` if set) and ``nf = T`` latent frames (see ``shift_ratio``).
    """

    sample_method: str = "logit-normal"  # or "uniform"
    use_timestep_transform: bool = True  # Open-Sora v1.2 train and inference configs
    transform_hw: tuple[int, int] | None = None  # pixel (H, W) for the shift; None: latent (h, w) · vae_spatial
    vae_spatial: int = 8
    transform_scale: float = 1.0
    caption_dropout: float = 0.1
    cfg_channels: int | None = None  # guided output channels; None = all C
    # What the network outputs: "v" (Open-Sora v1.2) or "x0" (clean data, turned into a velocity
    # v = (x0 − x_t)/s with s clamped at ``x0_min_s``). x0-prediction keeps the network's target on the
    # data manifold, which matters when patches are wide compared to the model (pixel-space video).
    prediction: str = "v"
    x0_min_s: float = 0.05
    # Per-example weight of the velocity MSE: "v" (none; Open-Sora) or "x0" (× s², with s clamped at
    # ``x0_min_s``: the MSE of the implied clean data, which no longer favours nearly clean inputs by 1/s²).
    loss_weight: str = "v"

    def velocity(self, out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The velocity implied by the model output ``out`` [B, ..., C] at ``x_t`` and t [B]."""
        if self.prediction == "v":
            return out
        s = jnp.maximum(t / NUM_TIMESTEPS, self.x0_min_s).reshape((-1,) + (1,) * (x_t.ndim - 1))
        return (out - x_t) / s

    def __post_init__(self):
        if self.prediction not in ("v", "x0"):
            raise ValueError(f"diffusion.prediction={self.prediction!r}; expected v or x0")
        if self.loss_weight not in ("v", "x0"):
            raise ValueError(f"diffusion.loss_weight={self.loss_weight!r}; expected v or x0")
        if self.sample_method not in ("logit-normal", "uniform"):
            raise ValueError(f"diffusion.sample_method={self.sample_method!r}; expected logit-normal or uniform")

    def ratio(self, latent_shape: tuple[int, ...]) -> float:
        """Shift ratio for a latent of shape [B, T, h, w, C] (static under jit)."""
        _, T, h, w = latent_shape[:4]
        H, W = self.transform_hw or (h * self.vae_spatial, w * self.vae_spatial)
        return shift_ratio(H, W, T, scale=self.transform_scale)

    def _shift(self, t: jax.Array, latent_shape: tuple[int, ...]) -> jax.Array:
        return timestep_transform(t, self.ratio(latent_shape)) if self.use_timestep_transform else t

    def sample_t(self, rng: jax.Array, latent_shape: tuple[int, ...]) -> jax.Array:
        """[B] training timesteps on the 0..1000 scale."""
        B = latent_shape[0]
        if self.sample_method == "logit-normal":
            s = jax.nn.sigmoid(jax.random.normal(rng, (B,)))
        else:
            s = jax.random.uniform(rng, (B,))
        return self._shift(s * NUM_TIMESTEPS, latent_shape)

    def add_noise(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        s = (t / NUM_TIMESTEPS).reshape((-1,) + (1,) * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise

    def loss_terms(self, model_fn: ModelFn, x0: jax.Array, t: jax.Array, noise: jax.Array, cond,
                   drop: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        """[B] velocity MSE at given t and noise; ``frame_mask`` [B, T] True = noised, False = held clean
        (those frames are x0 in the input and left out of the mean; a model that needs the mask, like
        Open-Sora's ``x_mask``, must get it through ``cond``)."""
        x0 = x0.astype(jnp.float32)
        x_t = self.add_noise(x0, noise, t)
        if frame_mask is not None:
            x_t = jnp.where(frame_mask[:, :, None, None, None], x_t, x0)
        out = model_fn(x_t, t, cond, drop).astype(jnp.float32)
        v_pred = self.velocity(out[..., : x0.shape[-1]], x_t, t)  # learned-sigma channels are unused
        err = jnp.square(v_pred - (x0 - noise))
        if self.loss_weight == "x0":
            s = jnp.maximum(t / NUM_TIMESTEPS, self.x0_min_s).reshape((-1,) + (1,) * (err.ndim - 1))
            err = err * jnp.square(s)
        if frame_mask is None:
            return err.mean(axis=tuple(range(1, err.ndim)))
        m = frame_mask.astype(err.dtype)
        per_frame = err.sum(axis=tuple(range(2, err.ndim)))  # [B, T]
        return (per_frame * m).sum(1) / jnp.maximum(m.sum(1) * err[0, 0].size, 1)

    def loss(self, model_fn: ModelFn, x0: jax.Array, cond, rng: jax.Array,
             frame_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Scalar loss (batch mean) and metrics; captions dropped with ``caption_dropout``."""
        r_t, r_n, r_d = jax.random.split(rng, 3)
        B = x0.shape[0]
        t = self.sample_t(r_t, x0.shape)
        noise = normal(r_n, x0.shape)
        per = self.loss_terms(model_fn, x0, t, noise, cond, caption_drop(r_d, B, self.caption_dropout), frame_mask)
        return per.mean(), {"loss": per.mean(), "t_mean": t.mean()}

    def timesteps(self, steps: int, latent_shape: tuple[int, ...]) -> jax.Array:
        """[steps] sampling grid ``t_i = (1 − i/steps)·1000``, shifted like training."""
        t = (1 - jnp.arange(steps) / steps) * NUM_TIMESTEPS
        return self._shift(t, latent_shape)

    def sample(self, model_fn: ModelFn, noise: jax.Array, cond, rng: jax.Array | None = None, *, steps: int = 30,
               cfg_scale: float = 7.0, cfg_channels: int | None = None) -> jax.Array:
        """Euler integration from ``noise`` (s=1) to data (s=0), classifier-free guided. ``rng`` is unused."""
        fn = guided(model_fn, cfg_scale, self.cfg_channels if cfg_channels is None else cfg_channels)
        ts = self.timesteps(steps, noise.shape)
        dts = jnp.concatenate([ts[:-1] - ts[1:], ts[-1:]]) / NUM_TIMESTEPS  # last step goes to 0

        def step(z, t_dt):
            t, dt = t_dt
            tt = jnp.full((z.shape[0],), t)
            v = self.velocity(fn(z, tt, cond).astype(jnp.float32)[..., : z.shape[-1]], z, tt)
            return z + v * dt, None

        z, _ = jax.lax.scan(step, noise.astype(jnp.float32), (ts, dts))
        return z.astype(noise.dtype)
