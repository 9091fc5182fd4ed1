"""SiT's interpolants (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable
Interpolant Transformers"): one transformer, trained on other paths between noise and data, with other targets,
and sampled by ODE or SDE.

SiT's time ``τ`` runs from noise (0) to data (1)::

    x_τ = α(τ)·x0 + σ(τ)·ε        x0 the data, ε ~ N(0, I)

paths (``path``):
    linear  α = τ,                σ = 1 − τ                      (rectified flow)
    gvp     α = sin(πτ/2),        σ = cos(πτ/2)                  (generalised variance preserving)
    vp      α = exp(−¼(1−τ)²(β₁−β₀) − ½(1−τ)β₀),  σ = √(1 − α²)  (DDPM's continuous VP, β₀ 0.1, β₁ 20)

targets (``prediction``):
    velocity  u = α'·x0 + σ'·ε    (d x_τ / dτ)
    score     −ε / σ              (∇ log p_τ(x_τ))
    noise     ε

The model is called with vidjax's timestep convention, ``t = (1 − τ)·1000`` (1000 = pure noise), so a model trained
with ``RectifiedFlow`` and one trained here with ``path="linear", prediction="velocity"`` read time the same way:
linear / velocity / Euler ODE *is* vidjax's rectified-flow sampler without its timestep shift (tested to 1e-6).

Sampling integrates ``dx/dτ = v(x, τ)`` (the velocity, converted from a score or noise output with SiT's formulas)
from τ = t0 to t1 with Euler or Heun steps, or the reverse SDE ``dx = [v + w·s] dτ + √(2w) dW`` with
Euler–Maruyama, ``w`` SiT's "SBDM" diffusion coefficient and ``s`` the score; SDE runs end with one deterministic
step to t1. ``t0, t1`` follow SiT's ``check_interval``: the open interval ``[ε, 1 − ε]`` wherever an endpoint
divides by zero (VP always; linear and GVP with score or noise targets, and for the SDE).

Tensors: x0, ε: [B, T, H, W, C] latents, channels-last; model output [B, T, H, W, C or 2C] (extra channels unused).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from vidjax.diffusion.guidance import ModelFn, caption_drop, guided, normal

NUM_TIMESTEPS = 1000
PATHS = ("linear", "gvp", "vp")
PREDICTIONS = ("velocity", "score", "noise")
LOSS_WEIGHTS = ("none", "velocity", "likelihood")
SAMPLERS = ("euler", "heun", "sde")


def _bcast(a: jax.Array, like: jax.Array) -> jax.Array:
    """[B] -> [B, 1, ..., 1] with like's rank."""
    return jnp.asarray(a, jnp.float32).reshape((-1,) + (1,) * (like.ndim - 1))


@dataclasses.dataclass(frozen=True)
class SiT:
    """``loss`` and ``sample`` for SiT's interpolants; see the module docstring.

    ``train_eps`` / ``sample_eps``: the margin kept from singular endpoints; ``None`` takes SiT's defaults
    (VP: 1e-5 / 1e-3; linear and GVP with score or noise: 1e-3 / 1e-3; otherwise 0 / 0, and the SDE samples
    from ``sample_eps or 1e-3``).
    """

    path: str = "linear"
    prediction: str = "velocity"
    loss_weight: str = "none"  # score / noise targets only: SiT's "velocity" or "likelihood" weighting
    sampler: str = "euler"  # euler | heun (ODE) | sde (Euler–Maruyama)
    train_eps: float | None = None
    sample_eps: float | None = None
    vp_beta_min: float = 0.1
    vp_beta_max: float = 20.0
    caption_dropout: float = 0.1
    cfg_channels: int | None = None  # guided output channels; None = all C

    def __post_init__(self):
        for field, value, allowed in (("path", self.path, PATHS), ("prediction", self.prediction, PREDICTIONS),
                                      ("loss_weight", self.loss_weight, LOSS_WEIGHTS),
                                      ("sampler", self.sampler, SAMPLERS)):
            if value not in allowed:
                raise ValueError(f"diffusion.{field}={value!r}; expected one of {', '.join(allowed)}")

    # ----------------------------------------------------------------------------------
    # The path: α, σ and their τ-derivatives
    # ----------------------------------------------------------------------------------

    def _log_mean(self, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
        """VP: log α(τ) and its τ-derivative."""
        b0, b1 = self.vp_beta_min, self.vp_beta_max
        u = 1 - tau
        return -0.25 * u**2 * (b1 - b0) - 0.5 * u * b0, 0.5 * u * (b1 - b0) + 0.5 * b0

    def alpha(self, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(α, dα/dτ)."""
        if self.path == "linear":
            return tau, jnp.ones_like(tau)
        if self.path == "gvp":
            return jnp.sin(tau * math.pi / 2), math.pi / 2 * jnp.cos(tau * math.pi / 2)
        log_a, d_log_a = self._log_mean(tau)
        a = jnp.exp(log_a)
        return a, a * d_log_a

    def sigma(self, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(σ, dσ/dτ)."""
        if self.path == "linear":
            return 1 - tau, -jnp.ones_like(tau)
        if self.path == "gvp":
            return jnp.cos(tau * math.pi / 2), -math.pi / 2 * jnp.sin(tau * math.pi / 2)
        log_a, d_log_a = self._log_mean(tau)
        s = jnp.sqrt(1 - jnp.exp(2 * log_a))
        return s, jnp.exp(2 * log_a) * 2 * d_log_a / (-2 * s)

    def q_sample(self, x0: jax.Array, noise: jax.Array, tau: jax.Array) -> jax.Array:
        """x_τ = α·x0 + σ·ε; tau [B]."""
        a, _ = self.alpha(_bcast(tau, x0))
        s, _ = self.sigma(_bcast(tau, x0))
        return a * x0 + s * noise

    def target(self, x0: jax.Array, noise: jax.Array, tau: jax.Array) -> jax.Array:
        """What the network is trained to output at τ: the velocity, the score or the noise."""
        tt = _bcast(tau, x0)
        if self.prediction == "velocity":
            return self.alpha(tt)[1] * x0 + self.sigma(tt)[1] * noise
        if self.prediction == "score":
            return -noise / self.sigma(tt)[0]
        return noise

    def drift(self, x: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
        """SiT's ``compute_drift``: (−(α'/α)·x, (α'/α)·σ² − σ·σ'); velocity = first + second · score."""
        a, da = self.alpha(tau)
        s, ds = self.sigma(tau)
        ratio = da / a
        return -ratio * x, ratio * s**2 - s * ds

    def velocity(self, out: jax.Array, x: jax.Array, tau: jax.Array) -> jax.Array:
        """dx/dτ from the network output ``out`` at x, τ (tau broadcast to x)."""
        if self.prediction == "velocity":
            return out
        mean, var = self.drift(x, tau)
        score = out if self.prediction == "score" else out / -self.sigma(tau)[0]
        return -mean + var * score

    def score(self, out: jax.Array, x: jax.Array, tau: jax.Array) -> jax.Array:
        """∇ log p_τ(x) from the network output (SiT's ``get_score``)."""
        if self.prediction == "score":
            return out
        if self.prediction == "noise":
            return out / -self.sigma(tau)[0]
        a, da = self.alpha(tau)
        s, ds = self.sigma(tau)
        reverse = a / da
        return (reverse * out - x) / (s**2 - reverse * ds * s)

    # ----------------------------------------------------------------------------------
    # Time intervals (SiT's check_interval)
    # ----------------------------------------------------------------------------------

    def _eps(self, sample: bool) -> float:
        chosen = self.sample_eps if sample else self.train_eps
        if chosen is not None:
            return chosen
        if self.path == "vp":
            return 1e-3 if sample else 1e-5
        if self.prediction != "velocity":
            return 1e-3
        return 1e-3 if sample and self.sampler == "sde" else 0.0

    def interval(self, sample: bool) -> tuple[float, float]:
        """(t0, t1) in τ: where training draws τ (``sample=False``) or where sampling integrates."""
        eps = self._eps(sample)
        sde = sample and self.sampler == "sde"
        if self.path == "vp":
            return 0.0, 1 - eps
        if self.prediction != "velocity" or sde:
            return eps, 1 - eps
        return 0.0, 1.0

    # ----------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------

    def loss_terms(self, model_fn: ModelFn, x0: jax.Array, t: jax.Array, noise: jax.Array, cond,
                   drop: jax.Array) -> jax.Array:
        """[B] losses at model timesteps t [B] (0..1000, 1000 = noise, i.e. τ = 1 − t/1000) and noise."""
        x0 = x0.astype(jnp.float32)
        tau = 1 - t / NUM_TIMESTEPS
        x_t = self.q_sample(x0, noise, tau)
        out = model_fn(x_t, t, cond, drop).astype(jnp.float32)[..., : x0.shape[-1]]
        axes = tuple(range(1, x0.ndim))
        if self.prediction == "velocity":
            return jnp.square(out - self.target(x0, noise, tau)).mean(axes)
        tt = _bcast(tau, x0)
        s = self.sigma(tt)[0]
        _, var = self.drift(x_t, tt)
        weight = {"none": 1.0, "velocity": (var / s) ** 2, "likelihood": var / s**2}[self.loss_weight]
        if self.prediction == "noise":
            err = jnp.square(out - noise)
        else:  # score: SiT compares σ·s with −ε, which is bounded where s is not
            err = jnp.square(out * s + noise)
        return (weight * err).mean(axes)

    def loss(self, model_fn: ModelFn, x0: jax.Array, cond, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar loss (batch mean) and metrics; τ ~ U[t0, t1], captions dropped with ``caption_dropout``."""
        r_t, r_n, r_d = jax.random.split(rng, 3)
        B = x0.shape[0]
        t0, t1 = self.interval(sample=False)
        tau = jax.random.uniform(r_t, (B,), minval=t0, maxval=t1)
        t = (1 - tau) * NUM_TIMESTEPS
        per = self.loss_terms(model_fn, x0, t, normal(r_n, x0.shape), cond,
                              caption_drop(r_d, B, self.caption_dropout))
        return per.mean(), {"loss": per.mean(), "t_mean": t.mean()}

    # ----------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------

    def sample(self, model_fn: ModelFn, noise: jax.Array, cond, rng: jax.Array | None = None, *, steps: int = 30,
               cfg_scale: float = 7.0, cfg_channels: int | None = None, mask: jax.Array | None = None) -> jax.Array:
        """From ``noise`` (τ = t0) to data (τ = t1) in ``steps`` steps of ``sampler``, classifier-free guided.
        ``rng``: the SDE's Brownian increments (unused by the ODE samplers)."""
        if mask is not None:
            raise ValueError("diffusion.name='sit' takes no condition frames (--reference); they are rectified "
                             "flow's (diffusion.name='rflow' / 'rflow_v12')")
        fn = guided(model_fn, cfg_scale, self.cfg_channels if cfg_channels is None else cfg_channels)
        C = noise.shape[-1]
        t0, t1 = self.interval(sample=True)
        taus = jnp.linspace(t0, t1, steps + 1, dtype=jnp.float32)

        def out_at(z, tau):
            t = jnp.full((z.shape[0],), (1 - tau) * NUM_TIMESTEPS)
            return fn(z, t, cond).astype(jnp.float32)[..., :C]

        def vel(z, tau):
            return self.velocity(out_at(z, tau), z, jnp.full((z.shape[0],) + (1,) * (z.ndim - 1), tau))

        if self.sampler == "sde":
            return self._euler_maruyama(out_at, noise, taus, rng).astype(noise.dtype)

        def step(z, i):
            tau, nxt = taus[i], taus[i + 1]
            k1 = vel(z, tau)
            if self.sampler == "euler":
                return z + k1 * (nxt - tau), None
            k2 = vel(z + k1 * (nxt - tau), nxt)
            return z + (k1 + k2) * (nxt - tau) / 2, None

        z, _ = jax.lax.scan(step, noise.astype(jnp.float32), jnp.arange(steps))
        return z.astype(noise.dtype)

    def _euler_maruyama(self, out_at, z: jax.Array, taus: jax.Array, rng: jax.Array | None) -> jax.Array:
        """Reverse SDE with SiT's SBDM diffusion w = (α'/α)·σ² − σ·σ'; the last step is the mean (no noise)."""
        keys = jax.random.split(jax.random.key(0) if rng is None else rng, len(taus) - 1)
        n = len(taus) - 1

        def step(z, inp):
            i, key = inp
            tau, nxt = taus[i], taus[i + 1]
            tt = jnp.full((z.shape[0],) + (1,) * (z.ndim - 1), tau)
            out = out_at(z, tau)
            _, w = self.drift(z, tt)
            mean = z + (self.velocity(out, z, tt) + w * self.score(out, z, tt)) * (nxt - tau)
            dw = normal(key, z.shape) * jnp.sqrt(nxt - tau)
            return jnp.where(i < n - 1, mean + jnp.sqrt(2 * w) * dw, mean), None

        z, _ = jax.lax.scan(step, z.astype(jnp.float32), (jnp.arange(n), keys))
        return z


__all__ = ["SiT", "PATHS", "PREDICTIONS", "LOSS_WEIGHTS", "SAMPLERS"]
