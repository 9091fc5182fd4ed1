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
import ml_dtypes
import numpy as np

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
    # v1.2's condition frames in training (``mask_ratios`` of its train configs, ``v12_frame_masks``): frames drawn
    # clean stay x0 in the input, leave the loss, and reach the model as ``cond["x_mask"]`` (STDiT3). None: off.
    mask_ratios: dict | None = None

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
        if self.mask_ratios:
            v12_frame_masks(jax.random.key(0), 1, 4, dict(self.mask_ratios))  # validate early

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
        if self.mask_ratios and frame_mask is None:
            frame_mask = v12_frame_masks(jax.random.fold_in(rng, 3), B, x0.shape[1], dict(self.mask_ratios))
            cond = {**cond, "x_mask": frame_mask}
        per = self.loss_terms(model_fn, x0, t, noise, cond, caption_drop(r_d, B, self.caption_dropout), frame_mask)
        return per.mean(), {"loss": per.mean(), "t_mean": t.mean()}

    def timesteps(self, steps: int, latent_shape: tuple[int, ...]) -> jax.Array:
        """[steps] sampling grid ``t_i = (1 − i/steps)·1000``, shifted like training."""
        t = (1 - jnp.arange(steps) / steps) * NUM_TIMESTEPS
        return self._shift(t, latent_shape)

    def sample(self, model_fn: ModelFn, noise: jax.Array, cond, rng: jax.Array | None = None, *, steps: int = 30,
               cfg_scale: float = 7.0, cfg_channels: int | None = None, mask: jax.Array | None = None) -> jax.Array:
        """Euler integration from ``noise`` (s=1) to data (s=0), classifier-free guided. ``mask`` [B, T]: v1.2's
        condition frames (see :func:`euler_frames`; 0 = keep the reference latent already in ``noise``), and
        ``rng`` the noise of frames entering generation; without it ``rng`` is unused."""
        fn = guided(model_fn, cfg_scale, self.cfg_channels if cfg_channels is None else cfg_channels)
        ts = self.timesteps(steps, noise.shape)
        z = euler_frames(fn, noise, ts, NUM_TIMESTEPS, rng, mask, self.velocity, cond)
        return z.astype(noise.dtype)


def euler_frames(fn, z: jax.Array, ts: jax.Array, num_timesteps: int, rng: jax.Array | None, mask: jax.Array | None,
                 velocity, cond: dict) -> jax.Array:
    """The rectified-flow Euler sampler over timesteps ``ts`` (descending, 0..num_timesteps) with v1.2's frame
    conditioning. ``fn(z, t, cond)`` is the guided model, ``velocity(out, z, t)`` turns its output into a velocity.
    ``mask`` [B, T] in [0, 1] (v1.2's ``apply_mask_strategy``): 1 = generate, 0 = keep the reference latent already
    in ``z``, between = edit from that noise level. At each step frames with ``mask·T >= t`` are generated and the
    others held, frames crossing the threshold get fresh noise at t, and the model gets ``cond["x_mask"]``."""
    dts = jnp.concatenate([ts[:-1] - ts[1:], ts[-1:]]) / jnp.float32(num_timesteps)  # the last step goes to 0
    B, C = z.shape[0], z.shape[-1]
    keys = jax.random.split(jax.random.key(0) if rng is None else rng, len(ts))
    if mask is not None:
        mask_t = jnp.asarray(mask, jnp.float32) * num_timesteps  # [B, T]

    def step(carry, inp):
        z, noise_added = carry
        t, dt, key = inp
        tt = jnp.full((B,), t)
        c = cond
        if mask is not None:
            x0 = z
            upper = mask_t >= t  # frames generated at this step
            tp = (1 - tt / num_timesteps).reshape((-1,) + (1,) * (z.ndim - 1))  # v1.2's add_noise, as written
            x_noise = tp * x0 + (1 - tp) * normal(key, z.shape)
            z = jnp.where((upper & ~noise_added)[:, :, None, None, None], x_noise, x0)
            noise_added = upper
            c = {**cond, "x_mask": upper}
        v = velocity(fn(z, tt, c).astype(jnp.float32)[..., :C], z, tt)
        z = z + v * dt
        if mask is not None:
            z = jnp.where(upper[:, :, None, None, None], z, x0)
        return (z, noise_added), None

    added = jnp.ones(z.shape[:2], bool) if mask is None else (jnp.asarray(mask) == 1)
    (z, _), _ = jax.lax.scan(step, (z.astype(jnp.float32), added), (ts, dts, keys))
    return z


# --------------------------------------------------------------------------------------
# Open-Sora v1.2 exactly (opensora/schedulers/rf, scripts/train.py, scripts/inference.py)
# --------------------------------------------------------------------------------------
#
# v1.2 passes ``height``, ``width`` and ``num_frames`` (pixels and pixel frames) to the timestep
# transform as tensors of the model dtype, bf16 in its released training and inference configs, so
# the shift ratio is computed in bf16: 240×426 at 51 frames gives 2.421875, not the exact 2.41872.
# ``shift_dtype="bfloat16"`` (the default here) reproduces that; ``"float32"`` gives the exact shift.
# The ratio (and ratio − 1) carry that rounding; the rest of the transform runs in float32.

MASK_TYPES = ("identity", "quarter_random", "quarter_head", "quarter_tail", "quarter_head_tail", "image_random",
              "image_head", "image_tail", "image_head_tail", "random", "intepolate")  # v1.2's spelling
SHIFT_DTYPES = ("bfloat16", "float16", "float32")


def _rounder(dtype: str):
    if dtype not in SHIFT_DTYPES:
        raise ValueError(f"shift_dtype={dtype!r}; expected one of {SHIFT_DTYPES}")
    target = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[dtype]
    return lambda v: float(np.float32(np.asarray(np.float32(v)).astype(target)))


def v12_shift(height: float, width: float, num_frames: int, *, scale: float = 1.0,
              dtype: str = "bfloat16") -> tuple[float, float]:
    """v1.2's shift ``ratio`` and ``ratio − 1`` from the pixel size and pixel frame count, each op rounded to ``dtype``.

    ``ratio = sqrt(H·W / 512²) · sqrt(nf) · scale`` with ``nf = 1`` for images, else ``num_frames // 17 · 5``.
    """
    if 1 < num_frames < 17:
        raise ValueError(f"num_frames={num_frames}: v1.2's shift uses num_frames // 17 * 5, which is 0 here (the "
                         "sampler would divide by zero); use 1 (an image) or at least 17 frames")
    r = _rounder(dtype)
    h, w = r(height), r(width)
    ratio_space = r(r(r(h * w) / (512 * 512)) ** 0.5)
    nf = r(num_frames)
    nf = 1.0 if nf == 1 else r(r(nf // 17) * 5)
    ratio = r(r(ratio_space * r(r(nf / 1) ** 0.5)) * scale)
    return ratio, r(ratio - 1)


def v12_timestep_transform(t, height: float, width: float, num_frames: int, *, scale: float = 1.0,
                           dtype: str = "bfloat16", num_timesteps: int = NUM_TIMESTEPS):
    """v1.2 ``timestep_transform`` of t [B] (0..1000): ``r·s / (1 + (r − 1)·s)·1000`` in float32 (``v12_shift``)."""
    xp = np if isinstance(t, np.ndarray) else jnp
    ratio, ratio_m1 = v12_shift(height, width, num_frames, scale=scale, dtype=dtype)
    s = xp.asarray(t, xp.float32) / xp.float32(num_timesteps)
    return xp.float32(ratio) * s / (xp.float32(1) + xp.float32(ratio_m1) * s) * xp.float32(num_timesteps)


def v12_frame_masks(rng: jax.Array, batch: int, num_frames: int, mask_ratios: dict[str, float]) -> jax.Array:
    """[B, T] bool training frame masks with v1.2's ``MaskGenerator`` semantics (True = noised, False = clean).

    ``mask_ratios``: probability of each type (``MASK_TYPES``); ``identity`` (no clean frame) takes the rest.
    quarter_*: 1..T//4 frames at a random place / the head / the tail / both; image_*: one frame likewise;
    intepolate: every other frame from 0 or 1; random: each frame clean with a U(0.1, 0.9) rate, at least one noised.
    T <= 1: no clean frame. (For 2 <= T < 4, where v1.2's ``randint(1, T // 4)`` fails, quarter_* use 1 frame.)
    """
    unknown = sorted(set(mask_ratios) - set(MASK_TYPES))
    if unknown:
        raise ValueError(f"mask_ratios: unknown mask types {unknown}; expected some of {list(MASK_TYPES)}")
    if any(not 0 <= p <= 1 for p in mask_ratios.values()):
        raise ValueError(f"mask_ratios: every ratio must be in [0, 1], got {mask_ratios}")
    probs = {**mask_ratios}
    probs.setdefault("identity", 1.0 - sum(mask_ratios.values()))
    if abs(sum(probs.values()) - 1.0) > 1e-6 or probs["identity"] < -1e-6:
        raise ValueError(f"mask_ratios: the ratios sum to {sum(mask_ratios.values())}; expected at most 1 "
                         "(identity takes the rest) or exactly 1 with identity")
    p = jnp.asarray([max(probs.get(k, 0.0), 0.0) for k in MASK_TYPES], jnp.float32)
    T = num_frames
    if T <= 1:
        return jnp.ones((batch, T), bool)
    pos = jnp.arange(T)
    cmax = max(T // 4, 1)

    def one(key):
        k_type, k_size, k_pos, k_img, k_start, k_rate, k_rand = jax.random.split(key, 7)
        size = jax.random.randint(k_size, (), 1, cmax + 1)
        start = jax.random.randint(k_pos, (), 0, T - size + 1)
        img = jax.random.randint(k_img, (), 0, T)
        rand = jax.random.uniform(k_rand, (T,)) > jax.random.uniform(k_rate, (), minval=0.1, maxval=0.9)
        rand = rand.at[-1].set(rand[-1] | ~rand.any())
        head, tail = pos < size, pos >= T - size
        candidates = jnp.stack([
            jnp.zeros(T, bool),  # identity: nothing clean
            (pos >= start) & (pos < start + size), head, tail, head | tail,  # quarter_*
            pos == img, pos == 0, pos == T - 1, (pos == 0) | (pos == T - 1),  # image_*
            ~rand,  # random
            (pos % 2) == jax.random.randint(k_start, (), 0, 2),  # intepolate
        ])  # True = clean
        return ~candidates[jax.random.choice(k_type, len(MASK_TYPES), p=p)]

    return jax.vmap(one)(jax.random.split(rng, batch))


@dataclasses.dataclass(frozen=True)
class RFlowV12:
    """Open-Sora v1.2's ``rflow`` scheduler: training loss with condition frames, and its sampler.

    The shift uses the *pixel* ``height``, ``width`` and ``num_frames`` of the video (v1.2's model
    kwargs), rounded to ``shift_dtype`` as v1.2's bf16 runs do (see ``v12_shift``). Sampling:
    ``t_i = (1 − i/N)·1000`` (``num_sampling_steps`` N), transformed, Euler steps to 0, classifier-free
    guidance against the null caption (``guidance.guided``: the conditional and null passes in one batch,
    ``drop`` True on the null half). Frame conditioning (``mask`` [B, T] in [0, 1], v1.2's
    ``apply_mask_strategy``: 1 = generate, 0 = keep the reference latent already in ``z``, between =
    edit from that noise level): at each step frames with ``mask·1000 >= t`` are generated and the others
    held at their current value, frames crossing the threshold get fresh noise at t, and the model gets
    ``cond["x_mask"]`` = the generated frames ([2B, T] through guidance, as v1.2's ``repeat(2, 1)``).
    """

    num_sampling_steps: int = 30
    num_timesteps: int = NUM_TIMESTEPS
    cfg_scale: float = 7.0
    use_timestep_transform: bool = True
    use_discrete_timesteps: bool = False
    sample_method: str = "logit-normal"  # training t: "logit-normal" (v1.2 train configs) or "uniform"
    transform_scale: float = 1.0
    shift_dtype: str = "bfloat16"  # v1.2's released runs; "float32" for the exact shift
    caption_dropout: float = 0.1
    mask_ratios: dict | None = None  # v1.2 train configs' mask_ratios (None: no condition frames)

    def __post_init__(self):
        if self.sample_method not in ("logit-normal", "uniform"):
            raise ValueError(f"diffusion.sample_method={self.sample_method!r}; expected logit-normal or uniform")
        if self.use_discrete_timesteps and self.sample_method != "uniform":
            raise ValueError("diffusion.use_discrete_timesteps needs sample_method='uniform' (as in v1.2)")
        _rounder(self.shift_dtype)
        if self.mask_ratios is not None:
            v12_frame_masks(jax.random.key(0), 1, 4, dict(self.mask_ratios))  # validate early

    def transform(self, t, height: float, width: float, num_frames: int):
        return v12_timestep_transform(t, height, width, num_frames, scale=self.transform_scale,
                                      dtype=self.shift_dtype, num_timesteps=self.num_timesteps)

    def timesteps(self, height: float, width: float, num_frames: int):
        """[N] float32 sampling timesteps, as v1.2's ``RFLOW.sample`` builds them."""
        n = self.num_sampling_steps
        ts = [(1.0 - i / n) * self.num_timesteps for i in range(n)]
        if self.use_discrete_timesteps:
            ts = [int(round(t)) for t in ts]
        ts = np.asarray(ts, np.float32)
        return self.transform(ts, height, width, num_frames) if self.use_timestep_transform else ts

    @staticmethod
    def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array, num_timesteps: int = NUM_TIMESTEPS) -> jax.Array:
        """v1.2 ``add_noise``: ``tp·x0 + (1 − tp)·noise`` with ``tp = 1 − t/1000`` (t: [B])."""
        tp = (1 - t.astype(jnp.float32) / num_timesteps).reshape((-1,) + (1,) * (x0.ndim - 1))
        return tp * x0 + (1 - tp) * noise

    def sample(self, model_fn: ModelFn, z: jax.Array, cond: dict, rng: jax.Array | None = None, *,
               height: float, width: float, num_frames: int, mask: jax.Array | None = None,
               cfg_scale: float | None = None) -> jax.Array:
        """z: [B, T, H, W, C] noise (with reference latents written where ``mask`` < 1) -> latents.

        ``model_fn(x_t, t, cond, drop)``; ``rng`` draws the noise of frames entering generation (mask only).
        """
        fn = guided(model_fn, self.cfg_scale if cfg_scale is None else cfg_scale)
        ts = jnp.asarray(self.timesteps(height, width, num_frames))
        return euler_frames(fn, z, ts, self.num_timesteps, rng, mask, lambda out, z, t: out, cond)

    def sample_t(self, rng: jax.Array, batch: int, height: float, width: float, num_frames: int) -> jax.Array:
        """[B] training timesteps (v1.2 ``training_losses``)."""
        if self.use_discrete_timesteps:
            t = jax.random.randint(rng, (batch,), 0, self.num_timesteps).astype(jnp.float32)
        elif self.sample_method == "uniform":
            t = jax.random.uniform(rng, (batch,)) * self.num_timesteps
        else:
            t = jax.nn.sigmoid(jax.random.normal(rng, (batch,))) * self.num_timesteps
        return self.transform(t, height, width, num_frames) if self.use_timestep_transform else t

    def loss(self, model_fn: ModelFn, x0: jax.Array, cond: dict, rng: jax.Array, *, height: float, width: float,
             num_frames: int) -> tuple[jax.Array, dict]:
        """Batch-mean velocity MSE with v1.2's condition frames: with ``mask_ratios``, frames drawn clean by
        ``v12_frame_masks`` stay x0 in the input, are left out of the mean, and the model gets ``cond["x_mask"]``."""
        r_t, r_n, r_d, r_m = jax.random.split(rng, 4)
        B = x0.shape[0]
        t = self.sample_t(r_t, B, height, width, num_frames)
        noise = normal(r_n, x0.shape)
        frame_mask = None
        if self.mask_ratios is not None:
            frame_mask = v12_frame_masks(r_m, B, x0.shape[1], dict(self.mask_ratios))
            cond = {**cond, "x_mask": frame_mask}
        x0 = x0.astype(jnp.float32)
        x_t = self.add_noise(x0, noise, t, self.num_timesteps)
        if frame_mask is not None:
            x_t = jnp.where(frame_mask[:, :, None, None, None], x_t, x0)
        out = model_fn(x_t, t, cond, caption_drop(r_d, B, self.caption_dropout)).astype(jnp.float32)
        err = jnp.square(out[..., : x0.shape[-1]] - (x0 - noise))
        if frame_mask is None:
            per = err.mean(axis=tuple(range(1, err.ndim)))
        else:
            m = frame_mask.astype(err.dtype)
            per = (err.sum(axis=tuple(range(2, err.ndim))) * m).sum(1) / (m.sum(1) * err[0, 0].size)
        return per.mean(), {"loss": per.mean(), "t_mean": t.mean()}
