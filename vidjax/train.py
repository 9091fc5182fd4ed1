"""Train a text-to-video model: ``python -m vidjax.train --config configs/shapes_tiny.py [--workdir W]``.

Config fields can be overridden on the command line: ``--config.train.steps=100``.
The loop: data -> (VAE encode) -> diffusion loss on the STDiT -> AdamW -> EMA -> checkpoint,
then a few samples to mp4 and the evaluation score. Rerunning with the same workdir resumes
from the latest checkpoint (model, optimizer, EMA, step and data-iterator position).

Scale-out (``docs/parallel.md``): the step runs on the mesh of ``config.mesh`` with parameters,
gradients and optimizer state split over ``fsdp`` (ZeRO-3), the batch over ``data × fsdp`` and
activations over ``sequence`` (``config.model.sequence_parallel``). Several processes (TPU pod,
SLURM, ``launch/local_multiprocess.sh``) each load only their rows of the global batch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from vidjax.checkpoint import Checkpointer
from vidjax.config import load_config
from vidjax.data import shapes
from vidjax.data.captions import CaptionFileError, load_captions
from vidjax.data.loader import VideoSource, encode_clips, make_dataset, make_transform, probe_records
from vidjax.data.video_io import VideoReadError
from vidjax.diffusion import build_diffusion
from vidjax.models.t2v import build_model, build_tokenizer, trainable
from vidjax.models.vae import VAE_WEIGHTS_DIR, build_vae
from vidjax.parallel import distributed
from vidjax.parallel import sharding as shd
from vidjax.parallel.mesh import describe, make_mesh

log = logging.getLogger("vidjax.train")

USER_ERRORS = (CaptionFileError, VideoReadError, ValueError, FileNotFoundError, KeyError, FloatingPointError)


# --------------------------------------------------------------------------------------
# Pieces: data, optimizer, step
# --------------------------------------------------------------------------------------


def check_config(config) -> None:
    """Fail early, with the field names, on settings that cannot work."""
    d, m = config.data, config.model
    pt, ph, pw = m.patch
    if d.height % ph or d.width % pw or d.frames % pt:
        raise ValueError(f"data size {d.frames}×{d.height}×{d.width} (config.data.frames/height/width) is not "
                         f"divisible by the patch size config.model.patch={tuple(m.patch)}")
    dif = config.diffusion
    if dif.name == "iddpm" and dif.get("learn_sigma", True) != m.learn_sigma:
        raise ValueError(f"config.diffusion.learn_sigma={dif.get('learn_sigma', True)} but "
                         f"config.model.learn_sigma={m.learn_sigma}: they must agree")
    if m.hidden % m.heads:
        raise ValueError(f"config.model.hidden={m.hidden} is not divisible by config.model.heads={m.heads}")


def check_parallel(config, mesh, vae) -> None:
    """One-line errors for a batch or clip that the mesh cannot split (before anything is compiled)."""
    shd.check_batch(config.train.batch_size, mesh)
    seq = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))["sequence"]
    if seq == 1:
        return
    d, m = config.data, config.model
    lt, lh, lw = vae.latent_shape(d.frames, d.height, d.width)
    frames, tokens = lt // m.patch[0], (lh // m.patch[1]) * (lw // m.patch[2])
    scheme = m.get("sequence_parallel", "auto")
    if m.get("name", "stdit") == "dit":
        total = frames * tokens + (config.text.max_length if m.get("conditioning") == "token-concat" else 0)
        if total % seq:
            raise ValueError(f"config.data.frames/height/width give {total} tokens (with the caption if "
                             f"token-concat), not divisible by mesh sequence={seq}")
    elif scheme == "ring":
        if tokens % seq:
            raise ValueError(f"config.data.height/width give {tokens} tokens per frame, not divisible by mesh "
                             f"sequence={seq} (sequence_parallel='ring')")
    elif frames % seq:
        raise ValueError(f"config.data.frames={d.frames} gives {frames} latent frames (VAE stride "
                         f"{vae.downsample[0]}, patch {m.patch[0]}), not divisible by mesh sequence={seq}")


def prepare_records(config, workdir: Path):
    """The caption records to train on; generates the ``shapes`` dataset when it is absent."""
    d = config.data
    if d.captions:
        return load_captions(d.captions, d.get("video_root") or None)
    cap = shapes.generate(d.root, num_clips=d.num_clips, frames=d.frames, height=d.height, width=d.width,
                          seed=d.seed, progress=config.progress)
    return load_captions(cap)


def make_optimizer(t) -> optax.GradientTransformation:
    sched = optax.join_schedules([optax.linear_schedule(0.0, t.lr, max(t.warmup, 1)),
                                  optax.cosine_decay_schedule(t.lr, max(t.steps - t.warmup, 1), t.final_lr_frac)],
                                 [max(t.warmup, 1)])
    return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                       optax.adamw(sched, b1=0.9, b2=t.b2, eps=t.adam_eps, weight_decay=t.weight_decay))


class ModelParts:
    """A model split for pure-function training: the graph, the trained parameters and the rest
    (frozen parameters and buffers such as ``y_embedding``), each as a plain nested dict, which
    is what the optimizer and the checkpoints see."""

    def __init__(self, model: nnx.Module, trained=nnx.Param):
        self.graphdef, params, rest = nnx.split(model, trained, ...)
        self.templates = [jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s) for s in (params, rest)]
        self.params, self.rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        # logical axis names of every parameter / buffer (same trees), for vidjax.parallel.sharding
        self.param_axes, self.rest_axes = shd.logical_axes(params), shd.logical_axes(rest)

    def merge(self, params: dict, rest: dict | None = None) -> nnx.Module:
        states = []
        for template, values in zip(self.templates, (params, self.rest if rest is None else rest), strict=True):
            state = jax.tree.map(lambda x: x, template)
            nnx.replace_by_pure_dict(state, values)
            states.append(state)
        return nnx.merge(self.graphdef, *states)


def make_loss_fn(parts: ModelParts, diffusion, vae):
    """(params, batch, rng, rest=None) -> (loss, metrics): the training objective of one batch."""

    def loss_fn(params, batch, rng, rest=None):
        model = parts.merge(params, rest)
        x0 = batch["latent"] if "latent" in batch else vae.encode(batch["video"])  # precomputed, or encode now
        cond = {"ids": batch["ids"], "mask": batch["mask"]}
        return diffusion.loss(lambda x, t, c, drop: model(x, t, c, drop), x0, cond, rng)

    return loss_fn


def make_train_step(parts: ModelParts, tx, diffusion, vae, ema_decay: float):
    """(params, opt_state, ema, batch, rng, rest=None) -> (params, opt_state, ema, metrics); pure, for jax.jit.

    ``rest`` (frozen parameters and buffers) defaults to ``parts.rest``; pass it to place it explicitly.
    """
    loss_fn = make_loss_fn(parts, diffusion, vae)

    def step(params, opt_state, ema, batch, rng, rest=None):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        return params, opt_state, ema, dict(metrics, grad_norm=optax.global_norm(grads))

    return step


def shard_train_step(step_fn, parts: ModelParts, tx, mesh, batch_ndims: dict, seed: int):
    """The jitted step on ``mesh``: (params, opt_state, ema, rest, batch, step) -> (params, opt_state, ema, metrics).

    In/out shardings: ZeRO-3 for parameters, EMA, gradients (inside) and optimizer state; the batch over
    ``data × fsdp``; metrics replicated. Parameters, optimizer state and EMA are donated. The rng is
    ``fold_in(key(seed), step)``, computed inside, so no host-side key has to be placed.
    Returns (jitted step, shardings dict with ``params``, ``opt``, ``rest``, ``batch``).
    """
    p_sh = shd.param_shardings(parts.params, parts.param_axes, mesh)
    r_sh = shd.param_shardings(parts.rest, parts.rest_axes, mesh)
    o_sh = shd.opt_shardings(tx, parts.params, p_sh, mesh)
    b_sh = {k: shd.batch_sharding(mesh, n) for k, n in batch_ndims.items()}
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def sharded(params, opt_state, ema, rest, batch, step):
        return step_fn(params, opt_state, ema, batch, jax.random.fold_in(jax.random.key(seed), step), rest)

    jitted = jax.jit(sharded, in_shardings=(p_sh, o_sh, p_sh, r_sh, b_sh, rep), out_shardings=(p_sh, o_sh, p_sh, rep),
                     donate_argnums=(0, 1, 2))
    return jitted, {"params": p_sh, "opt": o_sh, "rest": r_sh, "batch": b_sh}


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _setup_logging(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("vidjax")
    name = "train.log" if distributed.is_primary() else f"train_process{jax.process_index()}.log"
    path = os.path.abspath(workdir / name)
    for h in [h for h in root.handlers if getattr(h, "_vidjax", False)]:
        if h.baseFilename != path:  # a later run in the same process (stage 0, then the denoiser) logs to its own
            root.removeHandler(h)
            h.close()
    if not any(getattr(h, "_vidjax", False) for h in root.handlers):
        fh = logging.FileHandler(path)
        fh._vidjax = True
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    root.setLevel(logging.INFO)


def prepare_vae(config) -> dict | None:
    """Stage 0: with ``vae.type == "checkpoint"`` and a ``vae.train_config``, train that VAE into ``vae.path``
    first, on the same data, when the path holds no finished weights yet (a killed stage resumes like any
    run). Returns the VAE run's summary, or None when there was nothing to do."""
    v = config.vae
    if v.get("type") != "checkpoint" or not v.get("train_config"):
        return None
    if (Path(v.path) / VAE_WEIGHTS_DIR).is_dir():
        return None
    if jax.process_count() > 1:
        raise ValueError(f"vae.path={v.path!r} holds no trained VAE; train it first with "
                         f"python -m vidjax.train --config {v.train_config} --workdir {v.path}")
    from vidjax import train_vae

    vae_config = load_config(v.train_config)
    vae_config.data = ml_collections.ConfigDict(config.data.to_dict())  # the same clips
    vae_config.progress = config.progress
    log.info("stage 0: training the VAE %s into %s", v.train_config, v.path)
    return train_vae.run(vae_config, v.path)


def run(config, workdir: str | Path) -> dict:
    """Train (or resume) in ``workdir``; returns a summary dict (also written to summary.json).

    ``config.task == "vae"`` trains a video VAE instead (vidjax/train_vae.py, configs/vae_shapes.py).
    """
    if config.get("task", "diffusion") == "vae":
        from vidjax import train_vae

        return train_vae.run(config, workdir)
    workdir = Path(workdir)
    distributed.initialize(config)
    primary = distributed.is_primary()
    t_start = time.time()
    vae_summary = prepare_vae(config)
    _setup_logging(workdir)
    check_config(config)
    mesh = make_mesh(config)
    shd.check_batch(config.train.batch_size, mesh)
    progress = config.progress and primary

    # data: the first process generates the built-in set, then every process reads it
    if not primary:
        distributed.barrier("data_ready")
    records = prepare_records(config, workdir)
    if primary:
        distributed.barrier("data_ready")
    records, clips, skipped = probe_records(records, config.data.frames, config.data.frame_interval,
                                            report=workdir / "skipped_clips.txt" if primary else None,
                                            keep_decoded=config.data.cache_in_memory, progress=progress)
    if skipped and primary:
        print(f"skipped {len(skipped)} unreadable clip(s); see {workdir / 'skipped_clips.txt'}", file=sys.stderr)
    tokenizer = build_tokenizer(config)
    d = config.data
    vae = build_vae(config.vae)
    check_parallel(config, mesh, vae)
    source = VideoSource(records, clips)
    if d.get("cache_latents", False) and config.vae.type != "raw":
        if clips is None:
            log.warning("config.data.cache_latents: the clips are not held in memory (config.data.cache_in_memory "
                        "is off or they exceed 2 GiB); encoding every batch instead")
        else:  # latent precompute: the frozen VAE encodes each clip once, the step skips the encoder
            t_enc = time.time()
            latents = encode_clips(jax.jit(vae.encode), clips, d.frames, d.height, d.width, d.frame_interval,
                                   progress=progress)
            source = VideoSource(records, latents, latents=True)
            log.info("latent precompute: %d clips encoded to %s in %.1f s", len(latents), latents[0].shape,
                     time.time() - t_enc)
    transform = make_transform(d.frames, d.height, d.width, tokenizer, d.frame_interval)
    B = config.train.batch_size
    if jax.process_count() == 1:
        dataset = make_dataset(source, transform, batch_size=B, seed=config.seed, num_threads=d.num_threads)
    else:  # each process reads only the rows its devices hold
        dataset = distributed.process_dataset(source, transform, global_size=B,
                                              rows=distributed.process_rows(mesh, B), seed=config.seed,
                                              num_threads=d.num_threads)
    data_iter = iter(dataset)

    # model, objective, optimizer
    model = build_model(config, nnx.Rngs(config.seed), latent_channels=vae.latent_channels)
    if config.train.init_from:  # PixArt-α / Open-Sora / exported weights; overwritten by a resume below
        from vidjax.interop import load_pretrained

        load_pretrained(model.dit, config.train.init_from, allow_missing=config.train.init_allow_missing)
        log.info("initialised the denoiser from %s", config.train.init_from)
    diffusion = build_diffusion(config.diffusion)
    tx = make_optimizer(config.train)
    parts = ModelParts(model, trainable(model))
    t = config.train
    step_fn = make_train_step(parts, tx, diffusion, vae, t.ema_decay)
    jit_step, shardings = shard_train_step(step_fn, parts, tx, mesh, {source.key: 5, "ids": 2, "mask": 2}, config.seed)
    params = shd.place(parts.params, shardings["params"])  # each device receives only its slice
    parts.rest = shd.place(parts.rest, shardings["rest"])
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt"])(params)
    ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings["params"])(params)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    log.info("model: %s, %.2fM trainable parameters", config.model.get("size") or "custom", n_params / 1e6)
    log.info("mesh: %s, %d process(es)", describe(mesh), jax.process_count())

    # resume
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        restored = ckpt.restore(latest, params=params, ema=ema, opt=opt_state, rest=parts.rest,
                                data_iter=data_iter)
        params, ema, opt_state, parts.rest = restored["params"], restored["ema"], restored["opt"], restored["rest"]
        start = int(restored["meta"]["step"])
        log.info("resumed from step %d", start)
        if primary:
            print(f"resuming from checkpoint at step {start}", file=sys.stderr)
    metrics_path = workdir / "metrics.jsonl"
    if primary:
        _truncate_metrics(metrics_path, start)
        _truncate_metrics(workdir / "eval_curve.jsonl", start)

    writer = _tb_writer(workdir) if primary else None
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    pending: list = []
    t_loop, eval_seconds = time.time(), 0.0
    with metrics_path.open("a") if primary else open(os.devnull, "w") as mf:
        for step in range(start, t.steps):
            batch = distributed.global_batch(next(data_iter), mesh, B)
            with jax.set_mesh(mesh):  # activations are constrained by logical names under this mesh
                params, opt_state, ema, m = jit_step(params, opt_state, ema, parts.rest, batch, step)
            pending.append((step + 1, m))
            done = step + 1
            if done % t.log_every == 0 or done == t.steps or done % t.ckpt_every == 0:
                rec = write_metrics(shd.to_host(pending), mf, writer)[-1]
                rate = (done - start) / max(time.time() - t_loop, 1e-9)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_per_s=f"{rate:.2f}")
                bar.update(len(pending))
                pending = []
            if done % t.ckpt_every == 0 or done == t.steps:
                ckpt.save(done, params=params, ema=ema, opt=opt_state, rest=parts.rest, data_iter=data_iter,
                          config=config)
            if config.sample.eval_every and done % config.sample.eval_every == 0 and done < t.steps:
                t_eval = time.time()
                eval_model = _eval_model(parts, ema)
                if primary:
                    _periodic_eval(eval_model, config, vae, diffusion, tokenizer, done,
                                   time.time() - t_loop - eval_seconds, workdir, writer,
                                   out_dir=workdir / "samples" / f"step_{done:06d}")
                distributed.barrier(f"eval_{done}")
                eval_seconds += time.time() - t_eval
    bar.close()
    ckpt.close()
    train_minutes = (time.time() - t_loop - eval_seconds) / 60
    if writer is not None:
        writer.close()
    if primary:
        _plot_loss(metrics_path, workdir / "loss.png")

    summary = {"steps": t.steps, "resumed_from": start, "train_minutes": round(train_minutes, 2),
               "params_M": round(n_params / 1e6, 3)}
    if config.sample.num_prompts > 0 and start < t.steps:
        eval_model = _eval_model(parts, ema)
        if primary:
            report = _periodic_eval(eval_model, config, vae, diffusion, tokenizer, t.steps, train_minutes * 60,
                                    workdir, None, out_dir=workdir / "samples")
            summary["eval"] = report["summary"]
            print(_format_eval(report["summary"]), file=sys.stderr)
        distributed.barrier("final_eval")
    if vae_summary is not None:
        summary["vae_stage"] = {k: vae_summary[k] for k in ("steps", "psnr", "ssim", "total_minutes")}
    summary["total_minutes"] = round((time.time() - t_start) / 60, 2)
    if primary:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _eval_model(parts: ModelParts, ema) -> nnx.Module:
    """The EMA model for sampling; with several processes each gathers it (a collective) and the first samples."""
    if jax.process_count() == 1:
        return parts.merge(ema)
    return parts.merge(shd.to_host(ema), shd.to_host(parts.rest))


def _periodic_eval(model, config, vae, diffusion, tokenizer, step: int, train_seconds: float, workdir: Path,
                   writer, out_dir: Path | None = None) -> dict:
    """Sample and score the evaluation prompts; appends a row to ``eval_curve.jsonl``."""
    from vidjax.evaluate import evaluate_model

    report = evaluate_model(model, config, vae, diffusion, tokenizer, out_dir=out_dir)
    row = {"step": step, "train_minutes": round(train_seconds / 60, 2), **report["summary"]}
    with (workdir / "eval_curve.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    _plot_eval(workdir / "eval_curve.jsonl", workdir / "eval_curve.png")
    if writer is not None:
        for k in ("colour", "shape", "motion", "all"):
            writer.add_scalar(f"eval/{k}", report["summary"][k], step)
    log.info("eval at step %d: %s", step, _format_eval(report["summary"]))
    return report


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are about to be redone."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _tb_writer(workdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover
        return None
    return SummaryWriter(str(workdir / "tb"))


def write_metrics(pending, mf, writer) -> list[dict]:
    """Append host-side ``[(step, {name: value})]`` as JSON lines to ``mf`` (and TensorBoard ``train/<name>``);
    returns the rows. A non-finite loss stops the run with an error instead of training on NaN."""
    rows = []
    for step, metrics in pending:
        rec = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if not np.isfinite(rec["loss"]):
            raise FloatingPointError(f"loss is {rec['loss']} at step {step}: lower config.train.lr or the loss weights")
        mf.write(json.dumps(rec) + "\n")
        if writer is not None:
            for k, v in rec.items():
                if k != "step":
                    writer.add_scalar(f"train/{k}", v, step)
        rows.append(rec)
    mf.flush()
    return rows


def _plot_loss(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps[k - 1 :], smooth, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _plot_eval(curve_path: Path, out: Path) -> None:
    """Accuracy versus training minutes (one line per judged attribute, chance dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidjax.evaluate import CHANCE

    rows = [json.loads(ln) for ln in curve_path.read_text().splitlines() if ln.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, k in enumerate(("colour", "shape", "motion", "all")):
        ax.plot([r["train_minutes"] for r in rows], [100 * r[k] for r in rows], "o-", color=f"C{i}", label=k)
        ax.axhline(100 * CHANCE[k], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("training minutes")
    ax.set_ylabel("accuracy (%)  (dotted: chance)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _format_eval(s: dict) -> str:
    return ("evaluation on {n} prompts: colour {colour:.0%}, shape {shape:.0%}, motion {motion:.0%}, "
            "all three {all:.0%}").format(**s)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

_CONFIG = config_flags.DEFINE_config_file("config", "configs/shapes_tiny.py", "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")


def main(argv) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax is chatty at INFO
    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.get('name', 'run')}"
    try:
        distributed.initialize(config)  # before any JAX computation
        summary = run(config, workdir)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vidjax.train: error: {msg}", file=sys.stderr)
        sys.exit(2)
    if distributed.is_primary():
        print(json.dumps(summary))


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (unknown config keys, bad values, missing files)."""
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.get("name")  # loads the config file now, so its errors surface here
        return rest
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        msg = str(e.args[0] if e.args else e).strip("'\"").replace("\\'", "'").replace("\\n", " ")
        msg = " ".join(ln.strip() for ln in msg.replace("\\n", "\n").splitlines() if ln.strip())
        print(f"vidjax.train: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    # vidjax.train_vae imports this module by name: let it find this one, not a second copy that would
    # define the flags again
    sys.modules.setdefault("vidjax.train", sys.modules[__name__])
    app.run(main, flags_parser=parse_flags)
