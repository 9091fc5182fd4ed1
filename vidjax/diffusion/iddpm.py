"""IDDPM as in Open-Sora v1.0/v1.1 (from DiT / improved-diffusion): eps prediction, learned-range variance.

Schedule: ``T = 1000`` linear betas ``1e-4 .. 0.02``; tables in float64 numpy, used as float32.
Training: ``t ~ U{0..T-1}``, ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε``; loss = ``mean_flat((ε − ε̂)²)`` plus, when
sigma is learned, the VLB term (in bits) computed with a stop-gradient ``ε̂`` so it trains only the variance.
Sampling: the schedule is respaced to ``steps`` kept timesteps (``space_timesteps``); the model sees the original
timestep ``timestep_map[i]``; ancestral ``p_sample`` or DDIM(η).

Tensors: x0, ε, x_t: [B, T, H, W, C] channels-last; model output [B, T, H, W, 2C] = (ε̂, v) with v ∈ [-1, 1]
interpolating the log-variance between the posterior variance (v=-1) and β_t (v=+1); t: [B] int indices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vidjax.diffusion.guidance import ModelFn, caption_drop, guided, normal


def linear_betas(num_timesteps: int = 1000, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    """[T] float64, DiT's "linear" schedule (scaled by 1000/T so other T keep the same shape)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * start, scale * end, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> list[int]:
    """DiT's respacing: which of ``num_timesteps`` steps to keep, evenly strided per section (sorted).

    ``"100"`` keeps 100 steps over the whole range (``round(i·(T−1)/99)``, Python rounding like DiT);
    ``"ddim50"`` keeps ``range(0, T, stride)`` with an integer stride giving exactly 50 steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[4:])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {want} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


class Schedule:
    """float64 tables of a discrete Gaussian diffusion with N steps; index i runs the model at ``timestep_map[i]``.

    All tables are [N] numpy float64; ``f32(name)`` gives one as a float32 jax array for use under jit.
    """

    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None):
        b = np.asarray(betas, np.float64)
        n = len(b)
        a = np.cumprod(1.0 - b)
        a_prev = np.append(1.0, a[:-1])
        self.num_steps = n
        self.timestep_map = np.arange(n) if timestep_map is None else np.asarray(timestep_map)
        self.betas = b
        self.log_betas = np.log(b)
        self.alphas_cumprod = a
        self.alphas_cumprod_prev = a_prev
        self.sqrt_alphas_cumprod = np.sqrt(a)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - a)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / a)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / a - 1.0)
        pv = b * (1.0 - a_prev) / (1.0 - a)  # posterior q(x_{t-1} | x_t, x0) variance; 0 at t=0
        self.posterior_variance = pv
        # log clipped at t=0 (where the variance is 0) to the t=1 value, as in DiT
        self.posterior_log_variance_clipped = np.log(np.append(pv[1] if n > 1 else b[0], pv[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(a_prev) / (1.0 - a)
        self.posterior_mean_coef2 = (1.0 - a_prev) * np.sqrt(1.0 - b) / (1.0 - a)
        # FIXED_LARGE (used when sigma is not learned): beta_t, with the t=0 value replaced as in DiT
        self.fixed_large_log_variance = np.log(np.append(pv[1] if n > 1 else b[0], b[1:]))

    def respace(self, steps: int | str) -> Schedule:
        """The schedule restricted to ``space_timesteps(N, steps)``: ``β'_i = 1 − ᾱ_{k_i} / ᾱ_{k_{i−1}}``."""
        keep = space_timesteps(self.num_steps, str(steps))
        a = self.alphas_cumprod[keep]
        betas = 1.0 - a / np.append(1.0, a[:-1])
        return Schedule(betas, self.timestep_map[keep])

    def ddim_coefs(self, eta: float) -> tuple[np.ndarray, np.ndarray]:
        """DDIM eq. 12: σ_i = η·sqrt((1−ᾱ_prev)/(1−ᾱ))·sqrt(1 − ᾱ/ᾱ_prev) and the eps coefficient sqrt(1−ᾱ_prev−σ²)."""
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev)
        return sigma, np.sqrt(np.maximum(1 - a_prev - sigma**2, 0.0))

    def f32(self, name: str) -> jax.Array:
        return jnp.asarray(getattr(self, name), jnp.float32)


def _at(table: np.ndarray | jax.Array, i: jax.Array, ndim: int) -> jax.Array:
    """``table[i]`` as float32, broadcastable to an ``ndim``-d batch ([B] index → [B, 1, ...]; scalar → scalar)."""
    v = jnp.asarray(table, jnp.float32)[i]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim)) if v.ndim else v


def mean_flat(x: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
    """[B, T, H, W, C] → [B]: mean over non-batch dims; with ``frame_mask`` [B, T] only over the True frames."""
    if frame_mask is None:
        return x.mean(axis=tuple(range(1, x.ndim)))
    m = frame_mask.astype(x.dtype)
    per_frame = x.sum(axis=tuple(range(2, x.ndim)))  # [B, T]
    return (per_frame * m).sum(1) / jnp.maximum(m.sum(1) * np.prod(x.shape[2:]), 1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """log P(x) for data on 256 bins of [-1, 1] under N(means, e^{2·log_scales}) (DiT's decoder NLL), in nats."""
    inv_std = jnp.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (x - means + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (x - means - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


@dataclasses.dataclass(frozen=True)
class IDDPM:
    """``loss`` and ``sample`` for IDDPM; see the module docstring."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    learn_sigma: bool = True  # LEARNED_RANGE variance (model outputs 2C channels); else FIXED_LARGE
    sampler: str = "ancestral"  # or "ddim"
    ddim_eta: float = 0.0
    caption_dropout: float = 0.1
    cfg_channels: int | None = None  # guided output channels; None = all C (v1.0 used 3)

    def __post_init__(self):
        if self.sampler not in ("ancestral", "ddim"):
            raise ValueError(f"diffusion.sampler={self.sampler!r}; expected 'ancestral' or 'ddim'")

    @functools.cached_property
    def schedule(self) -> Schedule:
        return Schedule(linear_betas(self.num_timesteps, self.beta_start, self.beta_end))

    def spaced(self, steps: int) -> Schedule:
        return self.schedule if steps == self.num_timesteps else self.schedule.respace(steps)

    # ---- model output → p(x_{t-1} | x_t) ----
    def p_mean_variance(self, sched: Schedule, out: jax.Array, x: jax.Array, i: jax.Array):
        """Model output [B,...,2C] (or C) at step index ``i`` → (mean, log_variance, pred_x0, eps)."""
        C, nd = x.shape[-1], x.ndim
        eps = out[..., :C]
        if self.learn_sigma:
            frac = (out[..., C : 2 * C] + 1) / 2
            min_log = _at(sched.posterior_log_variance_clipped, i, nd)
            log_var = frac * _at(sched.log_betas, i, nd) + (1 - frac) * min_log
        else:
            log_var = jnp.broadcast_to(_at(sched.fixed_large_log_variance, i, nd), x.shape)
        x0 = _at(sched.sqrt_recip_alphas_cumprod, i, nd) * x - _at(sched.sqrt_recipm1_alphas_cumprod, i, nd) * eps
        mean = _at(sched.posterior_mean_coef1, i, nd) * x0 + _at(sched.posterior_mean_coef2, i, nd) * x
        return mean, log_var, x0, eps

    def ddpm_step(self, sched: Schedule, out: jax.Array, x: jax.Array, i: jax.Array, z: jax.Array) -> jax.Array:
        """Ancestral ``p_sample``: x_{i-1} = mean + [i > 0]·exp(½ log_var)·z."""
        mean, log_var, _, _ = self.p_mean_variance(sched, out, x, i)
        return mean + jnp.where(i > 0, 1.0, 0.0) * jnp.exp(0.5 * log_var) * z

    def ddim_step(self, sched: Schedule, out: jax.Array, x: jax.Array, i: jax.Array, z: jax.Array,
                  eta: float | None = None) -> jax.Array:
        """DDIM: x_{i-1} = sqrt(ᾱ_prev)·x̂0 + sqrt(1 − ᾱ_prev − σ²)·ε̂ + σ·z."""
        _, _, x0, eps = self.p_mean_variance(sched, out, x, i)
        sigma, dir_coef = sched.ddim_coefs(self.ddim_eta if eta is None else eta)
        nd = x.ndim
        return (_at(np.sqrt(sched.alphas_cumprod_prev), i, nd) * x0 + _at(dir_coef, i, nd) * eps
                + _at(sigma, i, nd) * z)

    # ---- training ----
    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        s = self.schedule
        return _at(s.sqrt_alphas_cumprod, t, x0.ndim) * x0 + _at(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise

    def vb_terms(self, out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
                 frame_mask: jax.Array | None = None) -> jax.Array:
        """[B] VLB term in bits: KL(q(x_{t-1}|x_t,x0) ‖ p(x_{t-1}|x_t)), or the decoder NLL at t = 0."""
        s, nd = self.schedule, x0.ndim
        true_mean = _at(s.posterior_mean_coef1, t, nd) * x0 + _at(s.posterior_mean_coef2, t, nd) * x_t
        true_log_var = _at(s.posterior_log_variance_clipped, t, nd)
        mean, log_var, _, _ = self.p_mean_variance(s, out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var), frame_mask) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        nll = mean_flat(nll, frame_mask) / np.log(2.0)
        return jnp.where(t == 0, nll, kl)

    def loss_terms(self, model_fn: ModelFn, x0: jax.Array, t: jax.Array, noise: jax.Array, cond,
                   drop: jax.Array, frame_mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """Per-sample [B] terms ``mse``, ``vb`` (when sigma is learned) and ``loss`` at given t [B] int and noise.

        ``frame_mask`` [B, T]: True = noised. A model that treats clean frames differently (Open-Sora's
        ``x_mask``) must get the mask through ``cond``."""
        x0 = x0.astype(jnp.float32)
        x_t = self.q_sample(x0, t, noise)
        if frame_mask is not None:  # frames held clean get t = 0 (as Open-Sora v1.1) and are left out of the loss
            x_t = jnp.where(frame_mask[:, :, None, None, None], x_t, self.q_sample(x0, jnp.zeros_like(t), noise))
        out = model_fn(x_t, t.astype(jnp.float32), cond, drop).astype(jnp.float32)
        C = x0.shape[-1]
        if out.shape[-1] != (2 * C if self.learn_sigma else C):
            raise ValueError(f"model output has {out.shape[-1]} channels; learn_sigma={self.learn_sigma} needs "
                             f"{2 * C if self.learn_sigma else C}")
        terms = {"mse": mean_flat(jnp.square(noise - out[..., :C]), frame_mask)}
        terms["loss"] = terms["mse"]
        if self.learn_sigma:
            frozen = jnp.concatenate([jax.lax.stop_gradient(out[..., :C]), out[..., C : 2 * C]], axis=-1)
            terms["vb"] = self.vb_terms(frozen, x0, x_t, t, frame_mask)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def loss(self, model_fn: ModelFn, x0: jax.Array, cond, rng: jax.Array,
             frame_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Scalar loss (batch mean) and metrics; t ~ U{0..T−1}, captions dropped with ``caption_dropout``."""
        r_t, r_n, r_d = jax.random.split(rng, 3)
        B = x0.shape[0]
        t = jax.random.randint(r_t, (B,), 0, self.num_timesteps)
        noise = normal(r_n, x0.shape)
        terms = self.loss_terms(model_fn, x0, t, noise, cond, caption_drop(r_d, B, self.caption_dropout), frame_mask)
        metrics = {k: v.mean() for k, v in terms.items()}
        return metrics["loss"], metrics

    # ---- sampling ----
    def sample(self, model_fn: ModelFn, noise: jax.Array, cond, rng: jax.Array | None = None, *, steps: int = 100,
               cfg_scale: float = 7.0, cfg_channels: int | None = None) -> jax.Array:
        """``noise`` [B, T, H, W, C] = x_T → x_0 in ``steps`` respaced steps (ancestral or DDIM), CFG-guided."""
        sched = self.spaced(steps)
        fn = guided(model_fn, cfg_scale, self.cfg_channels if cfg_channels is None else cfg_channels)
        tmap = jnp.asarray(sched.timestep_map, jnp.float32)
        rng = jax.random.key(0) if rng is None else rng
        step_fn = self.ddpm_step if self.sampler == "ancestral" else self.ddim_step
        stochastic = self.sampler == "ancestral" or self.ddim_eta > 0
        B = noise.shape[0]

        def body(x, i_key):
            i, key = i_key
            out = fn(x, jnp.full((B,), tmap[i]), cond).astype(jnp.float32)
            z = normal(key, x.shape) if stochastic else jnp.zeros_like(x)
            return step_fn(sched, out, x, i, z), None

        idx = jnp.arange(sched.num_steps - 1, -1, -1)
        x, _ = jax.lax.scan(body, noise.astype(jnp.float32), (idx, jax.random.split(rng, sched.num_steps)))
        return x.astype(noise.dtype)
