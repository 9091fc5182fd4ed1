"""Train a video VAE (the ``task="vae"`` configs): ``python -m vidjax.train --config configs/vae_shapes.py``.

``python -m vidjax.train_vae --config ...`` runs the same thing directly. The model is any trainable
``vae`` entry of :func:`vidjax.models.vae.build_vae`: the causal 3D KL-VAE (``causal_vae``) or the
VQ-VAE (``vq_vae``). The loop reuses the diffusion run's pieces (data pipeline, AdamW schedule,
orbax checkpoints, metrics files) and the same workdir layout:

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
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from vidjax import train  # the diffusion run's building blocks (module import: train.run may import this one)
from vidjax.checkpoint import Checkpointer
from vidjax.data import shapes
from vidjax.data.captions import load_captions
from vidjax.data.loader import VideoSource, in_batches, make_dataset, make_transform, probe_records, window
from vidjax.data.video_io import frame_grid, save_png
from vidjax.evaluate import agreement
from vidjax.models.vae import VAE_CONFIG_FILE, VAE_WEIGHTS_DIR, build_vae, gaussian_kl, save_vae_weights
from vidjax.models.vae.kl import group_norm
from vidjax.models.vae.temporal import CausalConv3d

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
        raise ValueError(f"config.vae.type={kind!r}: the VAE task trains one of {TRAINABLE_VAES}")
    for key in ("from_pretrained", "checkpoint"):
        if config.vae.get(key):
            raise ValueError(f"config.vae.{key} is set: the VAE task trains from scratch (remove it)")
    lo = config.loss
    if min(lo.l1, lo.l2, lo.kl_weight, lo.ssim_weight, lo.adversarial_weight) < 0:
        raise ValueError("config.loss weights (l1, l2, kl_weight, ssim_weight, adversarial_weight) must be >= 0")
    if lo.l1 + lo.l2 + lo.ssim_weight == 0:
        raise ValueError("config.loss: l1, l2 and ssim_weight are all 0: nothing to reconstruct with")
    d = config.data
    for name, n in (("frames", d.frames), ("height", d.height), ("width", d.width)):
        if n < 1:
            raise ValueError(f"config.data.{name}={n} must be positive")


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


def ssim(a, b, data_range: float = 1.0, sigma: float = 1.5):
    """Mean SSIM of images ``[..., H, W, C]`` (jax or numpy), per image -> ``[...]``.

    Gaussian-weighted local statistics (σ = 1.5, 11-tap window), population covariances,
    K1 = 0.01, K2 = 0.03, symmetric borders cropped by the window radius, averaged over
    pixels and channels: scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``.
    Differentiable, so it also serves as the ``ssim_weight`` loss term.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    g = jnp.asarray(_gaussian_window(sigma), jnp.float32)
    r = (len(g) - 1) // 2
    H, W = a.shape[-3:-1]
    if H <= 2 * r or W <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {2 * r + 1}×{2 * r + 1}, got {H}×{W}")

    def blur(x):  # separable Gaussian filter over H and W, symmetric ('reflect' in scipy) borders
        pad = [(0, 0)] * (x.ndim - 3) + [(r, r), (r, r), (0, 0)]
        x = jnp.pad(x, pad, mode="symmetric")
        x = sum(g[i] * x[..., i : i + H, :, :] for i in range(len(g)))
        return sum(g[i] * x[..., :, i : i + W, :] for i in range(len(g)))

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


def make_train_step(parts: train.ModelParts, tx, kind: str, loss_cfg, ema_decay: float,
                    disc: train.ModelParts | None = None, disc_tx=None):
    """(state, video, rng) -> (state, metrics); pure, for jax.jit.

    ``state = {"params": {"vae": ..., ["disc": ...]}, "ema": ..., "opt": {"vae": ..., ["disc": ...]},
    "rest": {"vae": buffers, "step": int32}}``; the buffers are the VQ codebook's (an EMA step each
    call; none for the KL-VAE), ``step`` counts optimizer steps (the adversarial warm-up reads it).
    """
    lo = loss_cfg
    adversarial = disc is not None

    def step(state, x, rng):
        pixels = math.prod(x.shape[1:])
        adv_on = (state["rest"]["step"] >= lo.adversarial_start).astype(jnp.float32) if adversarial else 0.0

        def vae_loss(p):
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
            if adversarial:
                g_adv = -jnp.mean(disc.merge(state["params"]["disc"])(recon))
                loss = loss + adv_on * lo.adversarial_weight * g_adv
                aux["g_adv"] = g_adv
            return loss, (aux, recon, _rest(model))

        (loss, (aux, recon, rest)), grads = jax.value_and_grad(vae_loss, has_aux=True)(state["params"]["vae"])
        updates, opt_vae = tx.update(grads, state["opt"]["vae"], state["params"]["vae"])
        vae_params = optax.apply_updates(state["params"]["vae"], updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], vae_params)
        params, opt = {"vae": vae_params}, {"vae": opt_vae}
        metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads))
        if adversarial:  # hinge loss on real clips vs (detached) reconstructions
            fake = jax.lax.stop_gradient(recon)

            def d_loss(dp):
                d = disc.merge(dp)
                return adv_on * (jnp.mean(jax.nn.relu(1 - d(x))) + jnp.mean(jax.nn.relu(1 + d(fake))))

            dl, dg = jax.value_and_grad(d_loss)(state["params"]["disc"])
            d_updates, opt["disc"] = disc_tx.update(dg, state["opt"]["disc"], state["params"]["disc"])
            params["disc"] = optax.apply_updates(state["params"]["disc"], d_updates)
            metrics["d_loss"] = dl
        rest = {"vae": rest, "step": state["rest"]["step"] + 1}
        return {"params": params, "ema": ema, "opt": opt, "rest": rest}, metrics

    return step


def make_reconstruct(parts: train.ModelParts):
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
    return metrics, to_uint8(recon)


def save_recon_grid(path: Path, clips: np.ndarray, recon: np.ndarray, n: int) -> None:
    """Odd rows: held-out originals; even rows: their reconstructions."""
    pairs = np.stack([clips[:n], recon[:n]], axis=1).reshape(-1, *clips.shape[1:])
    save_png(path, frame_grid(pairs), scale=max(1, 128 // clips.shape[2]))


# --------------------------------------------------------------------------------------
# 5. The run
# --------------------------------------------------------------------------------------


def _no_text(texts):
    """The loader's tokenizer slot: the VAE ignores captions."""
    return np.zeros((len(texts), 1), np.int32), np.zeros((len(texts), 1), bool)


def run(config, workdir: str | Path) -> dict:
    """Train (or resume) a VAE in ``workdir``; returns the summary dict (also written to summary.json)."""
    workdir = Path(workdir)
    train._setup_logging(workdir)
    check_config(config)
    t_start = time.time()
    d, t, e, lo = config.data, config.train, config.eval, config.loss

    # data
    records = train.prepare_records(config, workdir)
    records, clips, skipped = probe_records(records, d.frames, d.frame_interval, report=workdir / "skipped_clips.txt",
                                            keep_decoded=d.cache_in_memory, progress=config.progress)
    if skipped:
        print(f"skipped {len(skipped)} unreadable clip(s); see {workdir / 'skipped_clips.txt'}", file=sys.stderr)
    transform = make_transform(d.frames, d.height, d.width, _no_text, d.frame_interval)
    dataset = make_dataset(VideoSource(records, clips), transform, batch_size=t.batch_size, seed=config.seed,
                           num_threads=d.num_threads)
    data_iter = iter(dataset)
    eval_clips, eval_split = heldout_clips(config, records, workdir)
    seen_clips = None  # shapes: also measure what the detector reads back from reconstructed training clips
    if not d.captions:
        seen_clips = decode_clips(records[: e.clips], d)

    # model, optimizer
    entry, kind = vae_entry(config), config.vae.type
    model = host_init(lambda: build_vae(entry), config.seed)
    latent = model.latent_shape(d.frames, d.height, d.width)  # also checks the resolution
    parts = train.ModelParts(model)
    tx = train.make_optimizer(t)
    params = {"vae": parts.params}
    opt = {"vae": tx.init(parts.params)}
    disc, disc_tx = None, None
    if lo.adversarial_weight > 0:
        disc = train.ModelParts(host_init(lambda: PatchDiscriminator(lo.disc_filters, nnx.Rngs(0)), config.seed + 1,
                                    kernel_std=0.02))  # the usual GAN init
        disc_tx = optax.adam(lo.disc_lr, b1=0.5, b2=0.9)
        params["disc"], opt["disc"] = disc.params, disc_tx.init(disc.params)
    state = {"params": params, "ema": jax.tree.map(jnp.copy, parts.params), "opt": opt,
             "rest": {"vae": parts.rest, "step": jnp.zeros((), jnp.int32)}}
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(parts.params))
    ft, fh, fw = model.downsample
    log.info("%s: %.2fM parameters, %d×%d×%d compression, latents %s×%d", kind, n_params / 1e6, ft, fh, fw,
             latent, model.latent_channels)

    # resume
    ckpt = Checkpointer(workdir, keep=t.keep_checkpoints)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        restored = ckpt.restore(latest, params=state["params"], ema=state["ema"], opt=state["opt"],
                                rest=state["rest"], data_iter=data_iter)
        state = {k: restored[k] for k in ("params", "ema", "opt", "rest")}
        start = int(restored["meta"]["step"])
        log.info("resumed from step %d", start)
        print(f"resuming from checkpoint at step {start}", file=sys.stderr)
    metrics_path, curve_path = workdir / "metrics.jsonl", workdir / "eval_curve.jsonl"
    train._truncate_metrics(metrics_path, start)
    train._truncate_metrics(curve_path, start)

    step_fn = make_train_step(parts, tx, kind, lo, t.ema_decay, disc, disc_tx)
    jit_step = jax.jit(step_fn, donate_argnums=(0,))
    reconstruct = jax.jit(make_reconstruct(parts))
    base_rng = jax.random.key(config.seed)
    writer = train._tb_writer(workdir)
    bar = tqdm(total=t.steps, initial=start, desc=f"train {kind}", unit="step", disable=not config.progress,
               dynamic_ncols=True)
    pending: list = []
    t_loop, eval_seconds = time.time(), 0.0
    with metrics_path.open("a") as mf:
        for step in range(start, t.steps):
            batch = next(data_iter)
            state, m = jit_step(state, batch["video"], jax.random.fold_in(base_rng, step))
            pending.append((step + 1, m))
            done = step + 1
            if done % t.log_every == 0 or done == t.steps or done % t.ckpt_every == 0:
                rec = train.write_metrics(jax.device_get(pending), mf, writer)[-1]
                rate = (done - start) / max(time.time() - t_loop - eval_seconds, 1e-9)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.1f}", steps_per_s=f"{rate:.2f}")
                bar.update(len(pending))
                pending = []
            if done % t.ckpt_every == 0 or done == t.steps:
                ckpt.save(done, params=state["params"], ema=state["ema"], opt=state["opt"], rest=state["rest"],
                          data_iter=data_iter, config=config)
            if e.every and done % e.every == 0 and done < t.steps:
                t_eval = time.time()
                em, _ = evaluate(reconstruct, state["ema"], state["rest"]["vae"], eval_clips, e.batch_size,
                                 seen_clips)
                _log_eval(curve_path, writer, done, (t_eval - t_loop - eval_seconds) / 60, em)
                eval_seconds += time.time() - t_eval
    bar.close()
    ckpt.close()
    train_minutes = (time.time() - t_loop - eval_seconds) / 60

    # final evaluation with the EMA weights; the weights build_vae loads
    em, recon = evaluate(reconstruct, state["ema"], state["rest"]["vae"], eval_clips, e.batch_size, seen_clips)
    if start < t.steps:
        _log_eval(curve_path, writer, t.steps, train_minutes, em)
    if writer is not None:
        writer.close()
    save_recon_grid(workdir / "recon.png", eval_clips, recon, e.show)
    final = parts.merge(state["ema"], state["rest"]["vae"])
    save_vae_weights(final, str(workdir / VAE_WEIGHTS_DIR), entry)
    (workdir / VAE_CONFIG_FILE).write_text(json.dumps(entry, indent=1))
    train._plot_loss(metrics_path, workdir / "loss.png")

    summary = {
        "task": "vae", "vae": kind, "steps": t.steps, "resumed_from": start,
        "train_minutes": round(train_minutes, 2), "params_M": round(n_params / 1e6, 3),
        "compression": f"{ft}x{fh}x{fw}", "input": [d.frames, d.height, d.width, 3],
        "latent": [*latent, model.latent_channels],
        "eval_split": eval_split, "eval_clips": len(eval_clips),
        "psnr": round(em["psnr"], 3), "ssim": round(em["ssim"], 4),
        "latent_mean": round(em["latent_mean"], 4), "latent_std": round(em["latent_std"], 4),
        **{k: round(v, 4) for k, v in em.items() if k.startswith("detect_")},
    }
    summary["total_minutes"] = round((time.time() - t_start) / 60, 2)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{kind} {summary['compression']}: PSNR {em['psnr']:.2f} dB, SSIM {em['ssim']:.4f} on "
          f"{len(eval_clips)} {eval_split} clips", file=sys.stderr)
    return summary


def _log_eval(path: Path, writer, step: int, minutes: float, metrics: dict) -> None:
    row = {"step": step, "train_minutes": round(minutes, 2), **{k: round(v, 4) for k, v in metrics.items()}}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"eval/{k}", v, step)
    log.info("eval at step %d: PSNR %.2f dB, SSIM %.4f, latent std %.3f", step, metrics["psnr"], metrics["ssim"],
             metrics["latent_std"])


# --------------------------------------------------------------------------------------
# Command line: the flags of vidjax.train
# --------------------------------------------------------------------------------------


def main(argv) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = train._CONFIG.value
    workdir = train._WORKDIR.value or f"runs/{config.get('name', 'vae')}"
    try:
        summary = run(config, workdir)
    except train.USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vidjax.train_vae: error: {msg}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))


if __name__ == "__main__":
    from absl import app

    from vidjax.train import parse_flags

    app.run(main, flags_parser=parse_flags)
