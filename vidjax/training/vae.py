"""The video VAE task (``task="vae"`` configs): ``python -m vidjax.train --config configs/vae_shapes.py``.

The model is any trainable ``vae`` entry of :func:`vidjax.models.vae.build_vae`: the causal 3D KL-VAE
(``causal_vae``) or the VQ-VAE (``vq_vae``). It runs in the one training loop (vidjax/training/loop.py),
under the mesh like the denoiser (data parallel, ZeRO-3 on ``fsdp``), with the same workdir layout:

    checkpoints/<step>/   params, ema, opt, rest (VQ codebook buffers), data_iter, meta; resumed on rerun
    metrics.jsonl         one row per step: loss and its terms, grad_norm
    eval_curve.jsonl      PSNR / SSIM on the held-out clips every ``eval.every`` steps
    loss.png, tb/         loss curve, TensorBoard scalars
    recon.png             held-out originals (odd rows) above their reconstructions (even rows)
    vae_weights/          the final (EMA) weights, and vae_config.json the architecture entry, so
                          ``build_vae({"type": "checkpoint", "path": workdir})`` loads the trained VAE
    summary.json          steps, minutes, compression, PSNR / SSIM, latent statistics

The loss, per pixel (videos in [-1, 1]):

    ``l1 · |x - x̂| + l2 · (x - x̂)² + ssim_weight · (1 - SSIM(x, x̂))``
    ``+ kl_weight · KL(q(z|x) || N(0, I)) / pixels``   (KL-VAE: LDM / Open-Sora's weighting, e.g. 1e-6;
                                                        decoded from a posterior sample unless
                                                        ``sample_posterior=False``)
    ``+ commitment``                                    (VQ-VAE: the model's weighted commitment loss)
    ``+ adversarial_weight · -D(x̂)``                    (from step ``adversarial_start``; hinge PatchGAN)
    ``+ image_weight · (image_l1 · |f - f̂| + image_l2 · (f - f̂)²)``   (one random frame f of each clip as a
                                                        still image; image_l1 / image_l2 default to l1 / l2)

Images pass through a causal VAE as 1-frame videos, front-padded with zeros to the temporal factor, which
clip windows never show it; Open-Sora v1.2 trains its VAE on images too (``mixed_strategy``). With
``image_weight > 0`` each step also reconstructs one random frame of each clip alone (one compiled shape, no
second data path), so the VAE serves the image buckets of a mixed schedule.

The SSIM term is the optional perceptual-style term (no pretrained LPIPS network is needed);
the adversarial term trains a small causal 3D PatchGAN discriminator alongside, with its own Adam.

Evaluation reconstructs held-out clips deterministically (posterior mean / nearest codes) and
reports the mean over clips of the per-clip PSNR (pixels in [0, 1]) and the mean per-frame SSIM
(Gaussian window σ = 1.5, Wang et al.; scikit-image's when it is installed, the identical
:func:`ssim` below otherwise). For ``shapes`` the held-out clips are the ``heldout`` split, whose
(shape, colour) pairs never occur in training.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vidjax.data import shapes
from vidjax.data.captions import load_captions
from vidjax.data.loader import VideoSource, in_batches, make_transform, prepare_records, probe_records, window
from vidjax.data.video_io import frame_grid, save_png
from vidjax.errors import ConfigError
from vidjax.evaluate import agreement
from vidjax.models.vae import VAE_CONFIG_FILE, VAE_WEIGHTS_DIR, build_vae, gaussian_kl, save_vae_weights
from vidjax.models.vae.kl import group_norm
from vidjax.models.vae.temporal import CausalConv3d
from vidjax.parallel import sharding as shd
from vidjax.training import loop
from vidjax.training import metrics as mx
from vidjax.training.state import ModelParts, ema_update, grads_of, guarded, make_optimizer

log = logging.getLogger("vidjax.train_vae")

Array = jax.Array
TRAINABLE_VAES = ("causal_vae", "vq_vae")


# --------------------------------------------------------------------------------------
# 1. Config checks and model construction
# --------------------------------------------------------------------------------------


def check_config(config) -> None:
    """Fail early, naming the field, on settings that cannot work."""
    kind = config.vae.get("type")
    if kind not in TRAINABLE_VAES:
        raise ConfigError(f"config.vae.type={kind!r}: the VAE task trains one of {TRAINABLE_VAES}")
    for key in ("from_pretrained", "checkpoint"):
        if config.vae.get(key):
            raise ConfigError(f"config.vae.{key} is set: the VAE task trains from scratch (remove it)")
    if config.train.get("latent_norm", False) and kind != "causal_vae":
        raise ConfigError(f"config.train.latent_norm is for vae.type='causal_vae', not {kind!r}")
    lo = config.loss
    if min(lo.l1, lo.l2, lo.kl_weight, lo.ssim_weight, lo.adversarial_weight) < 0:
        raise ConfigError("config.loss weights (l1, l2, kl_weight, ssim_weight, adversarial_weight) must be >= 0")
    image_weight = lo.get("image_weight", 0.0)
    if image_weight < 0:
        raise ConfigError(f"config.loss.image_weight={image_weight} must be >= 0")
    if image_weight and kind != "causal_vae":
        raise ConfigError(f"config.loss.image_weight={image_weight}: still images are trained with the causal_vae "
                          f"only, not config.vae.type={kind!r}")
    for key in ("image_l1", "image_l2"):
        if lo.get(key) is not None and lo[key] < 0:
            raise ConfigError(f"config.loss.{key}={lo[key]} must be >= 0 (or None: the same as loss.{key[6:]})")
    if lo.l1 + lo.l2 + lo.ssim_weight == 0:
        raise ConfigError("config.loss: l1, l2 and ssim_weight are all 0: nothing to reconstruct with")
    d = config.data
    for name, n in (("frames", d.frames), ("height", d.height), ("width", d.width)):
        if n < 1:
            raise ConfigError(f"config.data.{name}={n} must be positive")


def image_weights(lo) -> tuple[float, float]:
    """The still-image term's (L1, L2) weights: ``loss.image_l1`` / ``loss.image_l2``, or the clip's when unset."""
    l1, l2 = lo.get("image_l1"), lo.get("image_l2")
    return (lo.l1 if l1 is None else l1), (lo.l2 if l2 is None else l2)


def vae_entry(config) -> dict:
    """The ``build_vae`` entry of the architecture (written to ``vae_config.json``)."""
    entry = config.vae.to_dict()
    return json.loads(json.dumps(entry))  # tuples -> lists: the JSON that build_vae reads back


def host_init(ctor, seed: int, kernel_std: float | None = None) -> nnx.Module:
    """``ctor()`` built abstractly, its weights drawn in numpy: normal kernels (std ``kernel_std``, default
    LeCun's 1/√fan_in), unit norm scales, zero biases and buffers (the VQ codebook is initialised from
    the first batch). Random init in jax would compile one kernel per tensor shape: a minute on a shared CPU.
    """
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    rs = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = str(path[-1].key), leaf.shape
        if name == "kernel":
            std = kernel_std or 1 / math.sqrt(max(1, math.prod(shape[:-1])))
            value = rs.standard_normal(shape) * std
        else:
            value = np.ones(shape) if name == "scale" else np.zeros(shape)
        return jnp.asarray(value, leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


class PatchDiscriminator(nnx.Module):
    """A small 3D PatchGAN: x [B, T, H, W, 3] -> logits [B, T/2, H/4, W/4, 1] (causal convs, LeakyReLU)."""

    def __init__(self, filters: int, rngs: nnx.Rngs, channels: int = 3):
        self.conv1 = CausalConv3d(channels, filters, 3, rngs, stride=(1, 2, 2))
        self.conv2 = CausalConv3d(filters, 2 * filters, 3, rngs, stride=(2, 2, 2), bias=False)
        self.norm2 = group_norm(2 * filters, min(8, 2 * filters), rngs, eps=1e-5)
        self.conv3 = CausalConv3d(2 * filters, 1, 3, rngs)

    def __call__(self, x: Array) -> Array:
        h = jax.nn.leaky_relu(self.conv1(x), 0.2)
        h = jax.nn.leaky_relu(self.norm2(self.conv2(h)), 0.2)
        return self.conv3(h)


# --------------------------------------------------------------------------------------
# 2. Metrics: PSNR and SSIM
# --------------------------------------------------------------------------------------


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    r = int(truncate * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return g / g.sum()


def _blur_matrix(n: int, g: np.ndarray) -> np.ndarray:
    """[n, n] matrix of the 1-D filter ``g`` over n samples with symmetric borders (``np.pad(mode="symmetric")``,
    needs len(g) // 2 < n): ``blur(x) = M @ x``, one matmul instead of len(g) shifted slices."""
    r = (len(g) - 1) // 2
    m = np.zeros((n, n))
    for i in range(n):
        for k, w in enumerate(g):
            j = i + k - r
            j = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)
            m[i, j] += w
    return m


def ssim(a, b, data_range: float = 1.0, sigma: float = 1.5):
    """Mean SSIM of images ``[..., H, W, C]`` (jax or numpy), per image -> ``[...]``.

    Gaussian-weighted local statistics (σ = 1.5, 11-tap window), population covariances,
    K1 = 0.01, K2 = 0.03, symmetric borders cropped by the window radius, averaged over
    pixels and channels: scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``.
    Differentiable, so it also serves as the ``ssim_weight`` loss term.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    g = _gaussian_window(sigma)
    r = (len(g) - 1) // 2
    H, W = a.shape[-3:-1]
    if H <= 2 * r or W <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {2 * r + 1}×{2 * r + 1}, got {H}×{W}")

    mh, mw = (jnp.asarray(_blur_matrix(n, g), jnp.float32) for n in (H, W))

    def blur(x):  # separable Gaussian filter over H and W, symmetric ('reflect' in scipy) borders: two matmuls
        return jnp.einsum("jw,...iwc->...ijc", mw, jnp.einsum("ih,...hwc->...iwc", mh, x))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s[..., r : H - r, r : W - r, :].mean(axis=(-3, -2, -1))


def video_metrics(orig: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """Clips ``[N, T, H, W, 3]`` with values in [0, 1] -> mean per-clip PSNR (dB) and mean per-frame SSIM."""
    orig, recon = np.asarray(orig, np.float64), np.clip(np.asarray(recon, np.float64), 0.0, 1.0)
    mse = ((orig - recon) ** 2).reshape(len(orig), -1).mean(1)
    psnr = float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))
    try:
        from skimage.metrics import structural_similarity
    except ImportError:  # scikit-image is optional: the same formula in jax
        frame_ssim = float(np.mean(np.asarray(ssim(orig, recon))))
    else:
        frame_ssim = float(np.mean([
            structural_similarity(o, r, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False)
            for o, r in zip(orig.reshape(-1, *orig.shape[2:]), recon.reshape(-1, *recon.shape[2:]))]))
    return {"psnr": psnr, "ssim": frame_ssim}


# --------------------------------------------------------------------------------------
# 3. The train step
# --------------------------------------------------------------------------------------


def _rest(model: nnx.Module) -> dict:
    """The non-trained state (VQ codebook buffers) as a pure dict."""
    return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])


def make_train_step(parts: ModelParts, tx, kind: str, loss_cfg, ema_decay: float,
                    disc: ModelParts | None = None, disc_tx=None, micro_batches: int = 1):
    """(state, video, rng) -> (state, metrics); pure, for jax.jit.

    ``state = {"params": {"vae": ..., ["disc": ...]}, "ema": ..., "opt": {"vae": ..., ["disc": ...]},
    "rest": {"vae": buffers, "step": int32}}``; the buffers are the VQ codebook's (an EMA step each
    call; none for the KL-VAE), ``step`` counts optimizer steps (the adversarial warm-up reads it).
    With ``micro_batches > 1`` the VAE's gradient is accumulated over that many slices of the batch (not with
    the adversarial term). A step with a non-finite loss or gradient leaves the whole state unchanged.
    """
    lo = loss_cfg
    adversarial = disc is not None

    def step(state, x, rng):
        pixels = math.prod(x.shape[1:])
        adv_on = (state["rest"]["step"] >= lo.adversarial_start).astype(jnp.float32) if adversarial else 0.0

        def vae_loss(p, x, rng):
            model = parts.merge(p, state["rest"]["vae"])
            if kind == "vq_vae":
                out = model(x, update=True, rng=rng)
                recon, reg = out["recon"], out["commitment"]
                aux = {"commitment": out["commitment"], "perplexity": out["perplexity"]}
            else:
                recon, mean, logvar = model(x, rng=rng if lo.sample_posterior else None)
                kl = jnp.mean(gaussian_kl(mean, logvar))
                reg = lo.kl_weight * kl / pixels
                aux = {"kl": kl, "latent_std": jnp.std(mean)}
            err = recon - x
            l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
            loss = lo.l1 * l1 + lo.l2 * l2 + reg
            aux.update(l1=l1, l2=l2, psnr=10 * jnp.log10(4.0 / jnp.maximum(l2, 1e-10)))  # range 2 in [-1, 1]
            if lo.ssim_weight:
                s = jnp.mean(ssim((x + 1) / 2, (recon + 1) / 2))
                loss = loss + lo.ssim_weight * (1 - s)
                aux["ssim"] = s
            if lo.get("image_weight", 0.0):
                f_rng, d_rng = jax.random.split(jax.random.fold_in(rng, 1))
                t = jax.random.randint(f_rng, (), 0, x.shape[1])
                f = jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1)  # [B, 1, H, W, C]: a still image
                f_recon, f_mean, f_logvar = model(f, rng=d_rng if lo.sample_posterior else None)
                f_reg = lo.kl_weight * jnp.mean(gaussian_kl(f_mean, f_logvar)) / math.prod(f.shape[1:])
                f_err = f_recon - f
                image_l2 = jnp.mean(jnp.square(f_err))
                f_l1, f_l2 = image_weights(lo)
                loss = loss + lo.image_weight * (f_l1 * jnp.mean(jnp.abs(f_err)) + f_l2 * image_l2 + f_reg)
                aux["image_l2"] = image_l2
            if adversarial:
                g_adv = -jnp.mean(disc.merge(state["params"]["disc"])(recon))
                loss = loss + adv_on * lo.adversarial_weight * g_adv
                aux["g_adv"] = g_adv
            return loss, (aux, (recon, _rest(model)))

        loss, aux, (recon, rest), grads = grads_of(vae_loss, state["params"]["vae"], x, rng, micro_batches)
        updates, opt_vae = tx.update(grads, state["opt"]["vae"], state["params"]["vae"])
        vae_params = optax.apply_updates(state["params"]["vae"], updates)
        ema = ema_update(state["ema"], vae_params, ema_decay)
        params, opt = {"vae": vae_params}, {"vae": opt_vae}
        metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads))
        all_grads = grads
        if adversarial:  # hinge loss on real clips vs (detached) reconstructions
            fake = jax.lax.stop_gradient(recon)

            def d_loss(dp):
                d = disc.merge(dp)
                return adv_on * (jnp.mean(jax.nn.relu(1 - d(x))) + jnp.mean(jax.nn.relu(1 + d(fake))))

            dl, dg = jax.value_and_grad(d_loss)(state["params"]["disc"])
            d_updates, opt["disc"] = disc_tx.update(dg, state["opt"]["disc"], state["params"]["disc"])
            params["disc"] = optax.apply_updates(state["params"]["disc"], d_updates)
            metrics["d_loss"] = dl
            all_grads = (grads, dg)
        new = {"params": params, "ema": ema, "opt": opt, "rest": {"vae": rest, "step": state["rest"]["step"] + 1}}
        new, ok = guarded(new, state, loss, all_grads)
        metrics["nonfinite"] = 1.0 - ok.astype(jnp.float32)
        return new, metrics

    return step


def make_reconstruct(parts: ModelParts):
    """(params, rest, x) -> (deterministic reconstruction, latents): posterior mean / nearest codes; for jax.jit."""

    def reconstruct(params, rest, x):
        model = parts.merge(params, rest)
        z = model.encode(x)
        return model.decode(z, num_frames=x.shape[1]), z

    return reconstruct


# --------------------------------------------------------------------------------------
# 4. Held-out clips and evaluation
# --------------------------------------------------------------------------------------


def heldout_clips(config, train_records, workdir: Path) -> tuple[np.ndarray, str]:
    """(uint8 clips [N, T, H, W, 3], split name): ``config.eval.captions`` if set, else the ``shapes``
    held-out split (generated next to the training clips), else the first training clips."""
    d, e = config.data, config.eval
    if e.captions:
        records, split = load_captions(e.captions), "eval"
    elif not d.captions:
        cap = shapes.generate(d.root, num_clips=e.clips, frames=d.frames, height=d.height, width=d.width,
                              seed=d.seed, split="heldout", progress=config.progress)
        records, split = load_captions(cap), "heldout"
    else:
        log.warning("no held-out clips (config.eval.captions is empty): evaluating on training clips")
        records, split = train_records, "train"
    return decode_clips(records[: e.clips], d, report=workdir / "skipped_eval_clips.txt"), split


def decode_clips(records, d, report: Path | None = None) -> np.ndarray:
    """The first ``d.frames`` frames (every ``d.frame_interval``-th) of each readable clip, at the
    training resolution: uint8 [N, T, H, W, 3]."""
    _, clips, _ = probe_records(records, d.frames, d.frame_interval, report=report, keep_decoded=True,
                                progress=False)
    return np.stack([window(c, 0, d.frames, d.height, d.width, d.frame_interval) for c in clips])


def reconstruct_clips(reconstruct, params, rest, clips: np.ndarray, batch_size: int):
    """uint8 clips [N, T, H, W, 3] -> (reconstructions in [0, 1] (float, unclipped), latents), in batches."""
    recon, z = in_batches(lambda b: reconstruct(params, rest, jnp.asarray(b.astype(np.float32) / 127.5 - 1.0)),
                          clips, batch_size)
    return (recon + 1) / 2, z


def latent_stats(reconstruct, params, rest, clips: np.ndarray, batch_size: int) -> dict[str, list[float]]:
    """``{"shift": per-channel mean, "scale": per-channel std}`` of the (raw) latents of uint8 clips: the
    normalisation ``(z - shift) / scale`` that gives the diffusion model unit-variance inputs."""
    z = reconstruct_clips(reconstruct, params, rest, clips, batch_size)[1]
    z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    return {"shift": [round(float(v), 5) for v in z.mean(0)], "scale": [round(float(v), 5) for v in z.std(0) + 1e-6]}


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def evaluate(reconstruct, params, rest, clips: np.ndarray, batch_size: int,
             seen_clips: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Reconstruct held-out uint8 clips -> (PSNR / SSIM / latent mean and std, reconstructions uint8).

    ``seen_clips`` (training clips of ``shapes``) adds ``detect_{colour,shape,motion,all}``: how often
    vidjax.evaluate's detector reads the same attributes from their reconstructions as from the originals.
    That is the ceiling of the diffusion model's score on seen prompts when it samples in this latent space.
    """
    recon, z = reconstruct_clips(reconstruct, params, rest, clips, batch_size)
    metrics = video_metrics(clips.astype(np.float64) / 255.0, recon)
    metrics.update(latent_mean=float(z.mean()), latent_std=float(z.std()))
    if seen_clips is not None:
        seen = to_uint8(reconstruct_clips(reconstruct, params, rest, seen_clips, batch_size)[0])
        metrics.update({f"detect_{k}": v for k, v in agreement(seen_clips, seen).items()})
        stills = seen_clips[:, :1]  # the first frames alone, as images: the ceiling for an image bucket
        seen = to_uint8(reconstruct_clips(reconstruct, params, rest, stills, batch_size)[0])
        agree = agreement(stills, seen)
        metrics.update(detect_image_colour=agree["colour"], detect_image_shape=agree["shape"])
    return metrics, to_uint8(recon)


def save_recon_grid(path: Path, clips: np.ndarray, recon: np.ndarray, n: int) -> None:
    """Odd rows: held-out originals; even rows: their reconstructions."""
    pairs = np.stack([clips[:n], recon[:n]], axis=1).reshape(-1, *clips.shape[1:])
    save_png(path, frame_grid(pairs), scale=max(1, 128 // clips.shape[2]))


# --------------------------------------------------------------------------------------
# 5. The task
# --------------------------------------------------------------------------------------


def _no_text(texts):
    """The loader's text slot: the VAE ignores captions."""
    return {}


class VAETask:
    kind = "vae"
    state_sections = ("vae", "loss.adversarial_weight", "loss.disc_filters")

    def __init__(self, config):
        self.config = config

    def prepare(self, run: loop.Run) -> dict:
        check_config(self.config)
        return {}

    def setup(self, run: loop.Run) -> loop.Setup:
        config, workdir, mesh = self.config, run.workdir, run.mesh
        d, t, e, lo = config.data, config.train, config.eval, config.loss
        micro = int(t.get("grad_accum", 1))
        if micro > 1 and lo.adversarial_weight > 0:
            raise ConfigError("config.train.grad_accum > 1 is not supported with config.loss.adversarial_weight > 0 "
                              "(the discriminator steps on the whole batch)")

        # data
        records = prepare_records(config, run.progress)
        records, clips, skipped = probe_records(records, d.frames, d.frame_interval,
                                                report=workdir / "skipped_clips.txt" if run.primary else None,
                                                keep_decoded=d.cache_in_memory, progress=run.progress)
        if skipped and run.primary:
            print(f"skipped {len(skipped)} unreadable or too short clip(s); see {workdir / 'skipped_clips.txt'}",
                  file=sys.stderr)
        crop_prob = float(t.get("crop_prob", 0.0))
        if not 0.0 <= crop_prob <= 1.0:
            raise ConfigError(f"config.train.crop_prob={crop_prob}: expected a probability in [0, 1]")
        transform = make_transform(d.frames, d.height, d.width, _no_text, d.frame_interval, crop_prob=crop_prob)
        self.eval_clips, self.eval_split = heldout_clips(config, records, workdir)
        self.records = records
        self.seen_clips = None  # shapes: also measure what the judge reads back from reconstructed training clips
        if not d.captions:
            self.seen_clips = decode_clips(records[: e.clips], d)

        # model, optimizer, state
        self.entry, kind = vae_entry(config), config.vae.type
        model = host_init(lambda: build_vae(self.entry), config.seed)
        self.latent = model.latent_shape(d.frames, d.height, d.width)  # also checks the resolution
        self.downsample, self.latent_channels = model.downsample, model.latent_channels
        self.parts = parts = ModelParts(model)
        tx = make_optimizer(t)
        p_sh, r_sh = parts.shardings(mesh)
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params, opt = {"vae": parts.params}, {"vae": tx.init(parts.params)}
        params_sh, opt_sh = {"vae": p_sh}, {"vae": shd.opt_shardings(tx, parts.params, p_sh, mesh)}
        disc, disc_tx = None, None
        if lo.adversarial_weight > 0:
            disc = ModelParts(host_init(lambda: PatchDiscriminator(lo.disc_filters, nnx.Rngs(0)), config.seed + 1,
                                        kernel_std=0.02))  # the usual GAN init
            disc_tx = optax.adam(lo.disc_lr, b1=0.5, b2=0.9)
            params["disc"], opt["disc"] = disc.params, disc_tx.init(disc.params)
            d_sh = disc.shardings(mesh)[0]
            params_sh["disc"], opt_sh["disc"] = d_sh, shd.opt_shardings(disc_tx, disc.params, d_sh, mesh)
        state = {"params": params, "ema": jax.tree.map(jnp.copy, parts.params), "opt": opt,
                 "rest": {"vae": parts.rest, "step": jnp.zeros((), jnp.int32)}}
        shardings = {"params": params_sh, "ema": p_sh, "opt": opt_sh, "rest": {"vae": r_sh, "step": rep}}
        self.n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(parts.params))
        ft, fh, fw = model.downsample
        log.info("%s: %.2fM parameters, %d×%d×%d compression, latents %s×%d", kind, self.n_params / 1e6, ft, fh, fw,
                 self.latent, model.latent_channels)
        step_fn = make_train_step(parts, tx, kind, lo, t.ema_decay, disc, disc_tx, micro)
        self.reconstruct = run.jit(make_reconstruct(parts))
        return loop.Setup(state=state, shardings=shardings, step=lambda s, b, r: step_fn(s, b["video"], r),
                          source=VideoSource(records, clips), transform=transform, batch_ndims={"video": 5},
                          eval_every=e.every, params=self.n_params,
                          tokens_per_sample=int(np.prod(self.latent)))

    def _evaluate(self, state: dict) -> tuple[dict, np.ndarray]:
        host = shd.to_host({"ema": state["ema"], "rest": state["rest"]["vae"]})
        return evaluate(self.reconstruct, host["ema"], host["rest"], self.eval_clips, self.config.eval.batch_size,
                        self.seen_clips)

    def evaluate(self, run: loop.Run, state: dict, step: int, train_minutes: float) -> None:
        em, _ = self._evaluate(state)
        if run.primary:
            _log_eval(run.workdir, run.writer, step, train_minutes, em)

    def finish(self, run: loop.Run, state: dict, trained_now: bool, train_minutes: float) -> dict:
        """The final evaluation with the EMA weights, and the weights build_vae loads."""
        config, workdir = self.config, run.workdir
        em, recon = self._evaluate(state)
        if not run.primary:
            return {}
        if trained_now:
            _log_eval(workdir, run.writer, config.train.steps, train_minutes, em)
        save_recon_grid(workdir / "recon.png", self.eval_clips, recon, config.eval.show)
        host = shd.to_host({"ema": state["ema"], "rest": state["rest"]["vae"]})
        norm = {}
        if config.train.get("latent_norm", False):  # per-channel (mean, std) of the training clips' latents
            clips = decode_clips(self.records[: int(config.train.get("latent_norm_clips", 256))], config.data)
            norm = latent_stats(self.reconstruct, host["ema"], host["rest"], clips, config.eval.batch_size)
            self.entry = {**self.entry, "model": {**self.entry.get("model", {}), **norm}}
            log.info("latent normalisation from %d training clips: shift %s, scale %s", len(clips),
                     norm["shift"], norm["scale"])
        save_vae_weights(self.parts.merge(host["ema"], host["rest"]), str(workdir / VAE_WEIGHTS_DIR), self.entry)
        (workdir / VAE_CONFIG_FILE).write_text(json.dumps(self.entry, indent=1))
        d = config.data
        ft, fh, fw = self.downsample
        print(f"{config.vae.type} {ft}x{fh}x{fw}: PSNR {em['psnr']:.2f} dB, SSIM {em['ssim']:.4f} on "
              f"{len(self.eval_clips)} {self.eval_split} clips", file=sys.stderr)
        return {
            "vae": config.vae.type, "compression": f"{ft}x{fh}x{fw}", "input": [d.frames, d.height, d.width, 3],
            "latent": [*self.latent, self.latent_channels], "eval_split": self.eval_split,
            "eval_clips": len(self.eval_clips), "psnr": round(em["psnr"], 3), "ssim": round(em["ssim"], 4),
            "latent_mean": round(em["latent_mean"], 4), "latent_std": round(em["latent_std"], 4), **norm,
            **{k: round(v, 4) for k, v in em.items() if k.startswith("detect_")},
        }


def _log_eval(workdir: Path, writer, step: int, minutes: float, metrics: dict) -> None:
    curve = workdir / "eval_curve.jsonl"
    mx.append_row(curve, {"step": step, "train_minutes": round(minutes, 2),
                          **{k: round(v, 4) for k, v in metrics.items()}})
    mx.plot_curve(curve, workdir / "eval_curve.png", ("psnr",), ylabel="held-out PSNR (dB)")
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"eval/{k}", v, step)
    log.info("eval at step %d: PSNR %.2f dB, SSIM %.4f, latent std %.3f", step, metrics["psnr"], metrics["ssim"],
             metrics["latent_std"])
