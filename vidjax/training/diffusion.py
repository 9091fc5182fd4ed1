"""The diffusion task: a text-conditioned denoiser (STDiT or a DiT baseline) on VAE latents.

    records (captions + clips; ``shapes`` generated when no caption file is given)
    -> [stage 0: train the VAE when ``vae.train_config`` names one and ``vae.path`` holds none]
    -> latent precompute (``data.cache_latents``: the frozen VAE encodes each clip once)
    -> text: a trainable word embedding trained with the model, or a frozen T5 / CLIP encoder that embeds each
       distinct caption once into a disk cache (``text.cache_dir``, default ``<workdir>/cache/text``) the loader reads
    -> loss of ``config.diffusion`` (rectified flow or IDDPM) on the model of ``config.model``
    -> evaluation: sample the ``shapes`` prompts and score them with vidjax.evaluate's judge

The state: ``params`` / ``ema`` (the trained parameters, by ``model.freeze``), ``opt``, ``rest`` (frozen
parameters and buffers such as the null caption ``y_embedding`` that classifier-free guidance uses).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax.config import load_config
from vidjax.data.loader import VideoSource, encode_clips, make_transform, prepare_records, probe_records
from vidjax.diffusion import build_diffusion
from vidjax.errors import ConfigError
from vidjax.models.t2v import build_model, text_inputs, trainable
from vidjax.models.vae import VAE_WEIGHTS_DIR, build_vae
from vidjax.parallel import distributed
from vidjax.parallel import sharding as shd
from vidjax.parallel.sequence import check_parallel
from vidjax.training import loop
from vidjax.training import metrics as mx
from vidjax.training.state import ModelParts, make_optimizer, update
from vidjax.training.warmstart import init_from

log = logging.getLogger("vidjax.train")


def check_config(config) -> None:
    """Fail early, with the field names, on settings that cannot work."""
    d, m = config.data, config.model
    pt, ph, pw = m.patch
    if d.get("bucket_config"):
        pass  # every bucket's size is checked against the VAE and the patch in setup (vidjax.data.bucketed)
    elif d.height % ph or d.width % pw or d.frames % pt:
        raise ConfigError(f"data size {d.frames}×{d.height}×{d.width} (config.data.frames/height/width) is not "
                          f"divisible by the patch size config.model.patch={tuple(m.patch)}")
    dif = config.diffusion
    if dif.name == "iddpm" and dif.get("learn_sigma", True) != m.learn_sigma:
        raise ConfigError(f"config.diffusion.learn_sigma={dif.get('learn_sigma', True)} but "
                          f"config.model.learn_sigma={m.learn_sigma}: they must agree")
    if m.hidden % m.heads:
        raise ConfigError(f"config.model.hidden={m.hidden} is not divisible by config.model.heads={m.heads}")
    if dif.name == "rflow_v12":
        raise ConfigError("config.diffusion.name='rflow_v12' is v1.2's sampler (vidjax.sample); train with 'rflow' "
                          "(use_timestep_transform=True is v1.2's training shift) and its mask_ratios")
    if dif.get("mask_ratios") and (dif.name != "rflow" or m.get("name", "stdit") != "stdit3"):
        raise ConfigError(f"config.diffusion.mask_ratios (condition frames) needs diffusion.name='rflow' and "
                          f"model.name='stdit3' (its x_mask input), not {dif.name!r} / {m.get('name', 'stdit')!r}")
    if dif.get("mask_ratios") and pt != 1:
        raise ConfigError(f"config.diffusion.mask_ratios marks latent frames clean, so config.model.patch="
                          f"{tuple(m.patch)} must have time patch 1 (as v1.2's (1, 2, 2))")


def stage0_config(config) -> ml_collections.ConfigDict | None:
    """The VAE run that must come first (``vae.type == "checkpoint"`` with a ``vae.train_config`` and no
    trained weights in ``vae.path`` yet), on the same clips; None when there is nothing to do."""
    v = config.vae
    if v.get("type") != "checkpoint" or not v.get("train_config"):
        return None
    if (Path(v.path) / VAE_WEIGHTS_DIR).is_dir():
        return None
    vae_config = load_config(v.train_config)
    vae_config.data = ml_collections.ConfigDict(config.data.to_dict())  # the same clips
    vae_config.progress = config.progress
    if "mesh" in config:
        vae_config.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    return vae_config


def make_loss_fn(parts: ModelParts, diffusion, vae):
    """(params, batch, rng, rest=None) -> (loss, metrics): the objective of one batch; ``batch`` holds ``latent``
    (precomputed) or ``video`` (encoded here by the frozen VAE), and ``ids`` or ``y`` with ``mask``."""

    def loss_fn(params, batch, rng, rest=None):
        net = parts.merge(params, rest)
        x0 = batch["latent"] if "latent" in batch else vae.encode(batch["video"])
        cond = {k: batch[k] for k in ("ids", "y", "mask") if k in batch}
        return diffusion.loss(lambda x, t, c, drop: net(x, t, c, drop), x0, cond, rng)

    return loss_fn


def make_train_step(parts: ModelParts, tx, diffusion, vae, train_config):
    """(state, batch, rng) -> (state, metrics): the denoiser's optimizer step (``state.update``: accumulation
    over ``train.grad_accum`` micro-batches, clipped AdamW, EMA, the non-finite guard); pure, for jax.jit."""
    loss_fn = make_loss_fn(parts, diffusion, vae)
    micro = int(train_config.get("grad_accum", 1))

    def step(state, batch, rng):
        def objective(params, b, r):
            loss, metrics = loss_fn(params, b, r, state["rest"])
            return loss, (metrics, None)

        new, metrics, _ = update(state, objective, batch, rng, tx, ema_decay=train_config.ema_decay,
                                 micro_batches=micro)
        return new, metrics

    return step


def initial_state(parts: ModelParts, tx, mesh) -> tuple[dict, dict]:
    """(state, shardings): parameters, a copy as the EMA, fresh optimizer state, and the frozen rest, with their
    placements on ``mesh``. Abstract parameters (``nnx.eval_shape``) give an abstract state (shardcheck)."""
    p_sh, r_sh = parts.shardings(mesh)
    abstract = isinstance(jax.tree.leaves(parts.params)[0], jax.ShapeDtypeStruct)
    if abstract:
        ema, opt = parts.params, jax.eval_shape(tx.init, parts.params)
    else:
        ema, opt = jax.tree.map(jnp.copy, parts.params), tx.init(parts.params)
    state = {"params": parts.params, "ema": ema, "opt": opt, "rest": parts.rest}
    shardings = {"params": p_sh, "ema": p_sh, "opt": shd.opt_shardings(tx, parts.params, p_sh, mesh), "rest": r_sh}
    return state, shardings


def _absolute_paths(config) -> None:
    """Store the paths a checkpoint refers to as absolute, so that sample / export work from any folder."""
    with config.unlocked():
        if config.vae.get("type") == "checkpoint" and config.vae.get("path"):
            config.vae.path = str(Path(config.vae.path).absolute())
        for key in ("path", "tokenizer_path", "cache_dir"):
            if config.text.get(key):
                config.text[key] = str(Path(config.text[key]).absolute())


class DiffusionTask:
    kind = "diffusion"
    state_sections = ("model", "text.encoder", "text.vocab_size", "text.max_length", "text.dim", "vae.type",
                      "diffusion.name", "diffusion.learn_sigma")

    def __init__(self, config):
        self.config = config

    # ---- before training: stage 0 ----
    def prepare(self, run: loop.Run) -> dict:
        config = self.config
        _absolute_paths(config)
        check_config(config)
        vae_config = stage0_config(config)
        if vae_config is None:
            return self._previous_vae_stage()
        if jax.process_count() > 1:
            raise ConfigError(f"vae.path={config.vae.path!r} holds no trained VAE; train it first with "
                              f"python -m vidjax.train --config {config.vae.train_config} --workdir {config.vae.path}")
        from vidjax.training.vae import VAETask

        log.info("stage 0: training the VAE %s into %s", config.vae.train_config, config.vae.path)
        vae_summary = loop.fit(VAETask(vae_config), vae_config, config.vae.path)
        loop.setup_logging(run.workdir)  # back to this run's log
        if vae_summary.get("preempted"):
            run.stop.requested = run.stop.requested or "stage 0 interrupted"
            return {}
        return {"vae_stage": _vae_stage(vae_summary)}

    def _previous_vae_stage(self) -> dict:
        v = self.config.vae
        path = Path(v.get("path") or "") / "summary.json"
        if v.get("type") == "checkpoint" and path.is_file():
            return {"vae_stage": _vae_stage(json.loads(path.read_text()))}
        return {}

    # ---- data, model, step ----
    def setup(self, run: loop.Run) -> loop.Setup:
        config, workdir, mesh = self.config, run.workdir, run.mesh
        d, t = config.data, config.train
        text = self._text(workdir)  # a missing encoder directory stops here, before any data work
        self.vae = vae = build_vae(config.vae)
        self.text_fn = text
        cost = None
        if d.get("bucket_config"):
            source, transform = None, None
            dataset, key, cost = self._bucketed(run, text, vae)
        elif d.get("packed"):
            source, transform = None, None
            dataset, key = self._packed(d, text, run.progress)
            check_parallel(config, mesh, vae)
        else:
            source, transform, key = self._clips(run, text, vae)
            dataset = None
            check_parallel(config, mesh, vae)
        model = build_model(config, nnx.Rngs(config.seed), latent_channels=vae.latent_channels)
        if t.init_from:  # an earlier stage's workdir, or PixArt-α / Open-Sora / exported weights; a resume overwrites
            self.init_report = init_from(model, config, run.workdir if run.primary else None)
        self.diffusion = diffusion = build_diffusion(config.diffusion)
        tx = make_optimizer(t)
        self.parts = parts = ModelParts(model, trainable(model))
        state, shardings = initial_state(parts, tx, mesh)
        step = make_train_step(parts, tx, diffusion, vae, t)
        latent = vae.latent_shape(d.frames, d.height, d.width)
        ndims = {key: 5, **{k: 3 if k == "y" else 2 for k in text.keys}}
        n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(parts.params))
        if cost is None:
            tokens, flops = self._tokens_and_flops(model.dit.cfg, latent, vae.latent_channels, text.max_length,
                                                   text.dim)
        else:
            tokens, flops = 0, None

            def cost_of(shapes: dict, _cost=cost, cfg=model.dit.cfg):
                return _cost(shapes, lambda lat: self._tokens_and_flops(cfg, lat, vae.latent_channels,
                                                                        text.max_length, text.dim))
        return loop.Setup(state=state, shardings=shardings, step=step, source=source, transform=transform,
                          dataset=dataset,
                          batch_ndims=ndims, eval_every=config.sample.get("eval_every", 0), params=n_params,
                          tokens_per_sample=tokens, flops_per_sample=flops,
                          cost=None if cost is None else cost_of)

    def _bucketed(self, run: loop.Run, text, vae):
        """(batch maker, video key, cost) of bucketed data (``data.bucket_config``): every clip and image probed at
        its native size, assigned to its bucket (the run's seed), latents precomputed per bucket when
        ``data.cache_latents``; the sampler's table (clips and batches per bucket, dropped buckets) is written to
        ``<workdir>/buckets.txt``."""
        from vidjax.data.bucketed import (
            BucketedBatches,
            bucket_config_of,
            check_bucket_sizes,
            clip_loader,
            encode_buckets,
            latent_loader,
        )
        from vidjax.data.buckets import BucketSampler, assign_all

        config, workdir, primary, d = self.config, run.workdir, run.primary, self.config.data
        table = bucket_config_of(config, shd.batch_shards(run.mesh))
        check_bucket_sizes(table, vae, tuple(config.model.patch), pads=config.model.name == "stdit3")
        for _, size in table.shapes():
            check_parallel(config, run.mesh, vae, size)
        if not primary:
            distributed.barrier("data_ready")
        records = prepare_records(config, run.progress)
        if primary:
            distributed.barrier("data_ready")
        sizes: list[tuple[int, int, int]] = []
        records, clips, skipped = probe_records(records, 1, d.frame_interval,
                                                report=workdir / "skipped_clips.txt" if primary else None,
                                                keep_decoded=d.cache_in_memory, progress=run.progress, sizes=sizes)
        if skipped and primary:
            print(f"skipped {len(skipped)} unreadable or too short clip(s); see {workdir / 'skipped_clips.txt'}",
                  file=sys.stderr)
        assignments = assign_all(table, sizes, config.seed, d.frame_interval)
        key, load = "video", clip_loader(records, clips, d.frame_interval)
        if d.get("cache_latents", False) and config.vae.type != "raw":
            if clips is None:
                log.warning("config.data.cache_latents: the clips are not held in memory; encoding every batch")
            else:
                t_enc = time.time()
                latents = encode_buckets(run.jit(vae.encode), clips, assignments, d.frame_interval,
                                         progress=run.progress)
                key, load = "latent", latent_loader(records, latents)
                log.info("latent precompute: %d clips in %.1f s", sum(a is not None for a in assignments),
                         time.time() - t_enc)
        if text.frozen:
            text.precompute(sorted({c for r in records for c in r.captions}), progress=run.progress)
        seed = config.seed

        def make(local_batch: int, index: int, count: int):
            sampler = BucketSampler(assignments, table, seed=seed, num_processes=count, process_index=index)
            if primary:
                (workdir / "buckets.txt").write_text(sampler.describe() + "\n")
                log.info("buckets:\n%s", sampler.describe())
                for drop in sampler.dropped:
                    print(f"bucket {'/'.join(map(str, drop.bucket))} dropped: {drop.num_clips} clips, fewer than its "
                          f"batch size {drop.batch_size} (see {workdir / 'buckets.txt'})", file=sys.stderr)
            return BucketedBatches(sampler, load, text.for_loader, assignments, seed=seed)

        labels = {}  # latent or pixel shape -> the bucket's pixel size label
        for _, (t, h, w) in table.shapes():
            labels[(t, h, w)] = labels[vae.latent_shape(t, h, w)] = f"{t}x{h}x{w}"

        def cost(shapes: dict, tokens_and_flops):
            shape = shapes[key][1:4]
            latent = shape if key == "latent" else vae.latent_shape(*shape)
            tokens, flops = tokens_and_flops(latent)
            return tokens, flops, labels.get(tuple(shape), "x".join(map(str, shape)))

        return make, key, cost

    def _clips(self, run: loop.Run, text, vae):
        """(grain source, per-example transform, video key) of the caption file's (or ``shapes``') clips: probed
        (unreadable and missing clips listed), with latent precompute and the frozen encoder's caption cache."""
        config, workdir, primary, d = self.config, run.workdir, run.primary, self.config.data
        if not primary:  # the first process generates the built-in set, then every process reads it
            distributed.barrier("data_ready")
        records = prepare_records(config, run.progress)
        if primary:
            distributed.barrier("data_ready")
        records, clips, skipped = probe_records(records, d.frames, d.frame_interval,
                                                report=workdir / "skipped_clips.txt" if primary else None,
                                                keep_decoded=d.cache_in_memory, progress=run.progress)
        if skipped and primary:
            print(f"skipped {len(skipped)} unreadable or too short clip(s); see {workdir / 'skipped_clips.txt'}",
                  file=sys.stderr)
        source = VideoSource(records, clips)
        if d.get("cache_latents", False) and config.vae.type != "raw":
            if clips is None:
                log.warning("config.data.cache_latents: the clips are not held in memory (config.data."
                            "cache_in_memory is off or they exceed 2 GiB); encoding every batch instead")
            else:  # latent precompute: the frozen VAE encodes each clip once, the step skips the encoder
                t_enc = time.time()
                latents = encode_clips(run.jit(vae.encode), clips, d.frames, d.height, d.width, d.frame_interval,
                                       progress=run.progress)
                source = VideoSource(records, latents, latents=True)
                log.info("latent precompute: %d clips encoded to %s in %.1f s", len(latents), latents[0].shape,
                         time.time() - t_enc)
        if text.frozen:
            text.precompute(sorted({c for r in records for c in r.captions}), progress=run.progress)
        return source, make_transform(d.frames, d.height, d.width, text.for_loader, d.frame_interval), source.key

    def _packed(self, d, text, progress: bool):
        """(batch maker, video key) of a packed dataset (``data.packed``, from ``python -m vidjax.data pack``):
        raw clips (``video``) or latents (``latent`` with their own ``y`` / ``mask``); one bucket of the training
        size."""
        from vidjax.data.packed import make_packed_dataset, open_packed, packed_captions

        _, buckets = open_packed(d.packed)
        want = (d.frames, d.height, d.width)
        sizes = sorted({tuple(int(v) for v in b) for b in buckets.tolist()})
        if want not in sizes:
            raise ConfigError(f"config.data.packed={d.packed}: its buckets {sizes} do not include the training size "
                              f"config.data.frames/height/width = {want}")
        first = next(iter(make_packed_dataset(d.packed, batch_size=1, seed=0)))
        key = "latent" if "latent" in first else "video"
        if text.frozen and key == "video":
            text.precompute(sorted(set(packed_captions(d.packed))), progress=progress)
        seed, workers = self.config.seed, int(d.get("num_workers", 0))

        def to_model(batch: dict) -> dict:
            out = {k: batch[k] for k in (key, "y", "mask") if k in batch}
            if "y" not in out:  # raw clips: the captions through the model's text inputs
                out.update(text.for_loader(batch["caption"].tolist()))
            return out

        def make(local_batch: int, index: int, count: int):
            return make_packed_dataset(d.packed, batch_size=local_batch, seed=seed, shard_index=index,
                                       shard_count=count, num_workers=workers,
                                       num_threads=d.num_threads).map(to_model)

        return make, key

    def _text(self, workdir: Path):
        config = self.config
        if config.text.encoder != "trainable" and not config.text.get("cache_dir"):
            with config.unlocked():
                config.text.cache_dir = str(workdir / "cache" / "text")
        text = text_inputs(config)
        with config.unlocked():  # what the model is built with (a frozen encoder decides its width and length)
            config.text.dim, config.text.max_length = text.dim, text.max_length
        return text

    def _tokens_and_flops(self, cfg, latent, channels: int, caption_len: int, caption_channels: int):
        """Tokens per sample and training FLOPs per sample (vidjax.estimate's analytic count, 3× the forward)."""
        from vidjax.estimate import backbone_forward_flops, forward_flops

        name = self.config.model.get("name", "stdit")
        hidden, patch = (cfg.hidden_size, cfg.patch_size) if name == "stdit3" else (cfg.hidden, cfg.patch)
        kw = dict(hidden=hidden, frames=latent[0], height=latent[1], width=latent[2], patch=tuple(patch),
                  caption_len=caption_len, caption_channels=caption_channels, in_channels=channels,
                  mlp_ratio=cfg.mlp_ratio)
        if name != "stdit3":
            tokens, fwd = backbone_forward_flops(name, cfg.depth, variant=getattr(cfg, "variant", ""),
                                                 skips=getattr(cfg, "skips", False), **kw)
        else:  # v1.2 splits each v1.0 block in two, each with its own cross-attention and MLP:
            # add depth × (one DiT block without its self-attention) = depth × (full block - attention part)
            tokens, fwd, _ = forward_flops(depth=cfg.depth, **kw)
            _, block, quad = forward_flops(depth=1, temporal=False, **kw)
            _, embed, _ = forward_flops(depth=0, temporal=False, **kw)
            n = tokens
            fwd += cfg.depth * (block - embed - quad - 8 * n * hidden * hidden)  # minus qkv/proj (4NC² ×2 FLOPs)
        return tokens, 3.0 * fwd

    # ---- evaluation ----
    def _eval_model(self, state: dict):
        """The EMA model for sampling; with several processes each gathers it (a collective), the first samples."""
        if jax.process_count() == 1:
            return self.parts.merge(state["ema"], state["rest"])
        return self.parts.merge(shd.to_host(state["ema"]), shd.to_host(state["rest"]))

    def _sample_and_score(self, run: loop.Run, state: dict, step: int, minutes: float, out_dir: Path,
                          writer) -> dict | None:
        from vidjax.evaluate import CHANCE, evaluate_sizes

        model = self._eval_model(state)
        report = None
        if run.primary:  # every size of config.sample.buckets (images on colour and shape), else the data size
            report = evaluate_sizes(model, self.config, self.vae, self.diffusion, self.text_fn, out_dir=out_dir)
            curve = run.workdir / "eval_curve.jsonl"
            per_bucket = {f"{label}/{k}": v for label, b in report["buckets"].items() for k, v in b.items()
                          if k != "n"} if len(report["buckets"]) > 1 else {}
            mx.append_row(curve, {"step": step, "train_minutes": round(minutes, 2), **report["summary"],
                                  **per_bucket})
            mx.plot_curve(curve, run.workdir / "eval_curve.png", ("colour", "shape", "motion", "all"),
                          ylabel="accuracy (%)  (dotted: chance)", chance=CHANCE, percent=True)
            if writer is not None:
                for k in ("colour", "shape", "motion", "all"):  # image-only buckets have no motion
                    if k in report["summary"]:
                        writer.add_scalar(f"eval/{k}", report["summary"][k], step)
            log.info("eval at step %d: %s", step, format_summary(report["summary"]))
        distributed.barrier(f"eval_{step}")
        return report

    def evaluate(self, run: loop.Run, state: dict, step: int, train_minutes: float) -> None:
        self._sample_and_score(run, state, step, train_minutes, run.workdir / "samples" / f"step_{step:06d}",
                               run.writer)

    def finish(self, run: loop.Run, state: dict, trained_now: bool, train_minutes: float) -> dict:
        # also when nothing was trained now: a run stopped after its last checkpoint has no evaluation yet
        if self.config.sample.num_prompts <= 0:
            return {}
        report = self._sample_and_score(run, state, self.config.train.steps, train_minutes,
                                        run.workdir / "samples", None)
        if report is None:
            return {}
        if len(report["buckets"]) > 1:
            for label, b in report["buckets"].items():
                print(f"{label}: {format_summary(b)}", file=sys.stderr)
            return {"eval": report["summary"], "eval_buckets": report["buckets"]}
        print(format_summary(report["summary"]), file=sys.stderr)
        return {"eval": report["summary"], "eval_buckets": report["buckets"]}


def format_summary(s: dict) -> str:
    if "motion" not in s:  # still images: colour and shape
        return "evaluation on {n} prompts: colour {colour:.0%}, shape {shape:.0%}, both {all:.0%}".format(**s)
    return ("evaluation on {n} prompts: colour {colour:.0%}, shape {shape:.0%}, motion {motion:.0%}, "
            "all three {all:.0%}").format(**s)


def _vae_stage(s: dict) -> dict:
    return {k: s[k] for k in ("steps", "psnr", "ssim", "total_minutes", "train_minutes") if k in s}


__all__ = ["DiffusionTask", "check_config", "check_parallel", "initial_state", "make_loss_fn", "make_train_step",
           "stage0_config"]
