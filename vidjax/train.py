"""Train a text-to-video model: ``python -m vidjax.train --config configs/shapes_tiny.py [--workdir W]``.

Config fields can be overridden on the command line: ``--config.train.steps=100``.
The loop: data -> (VAE encode) -> diffusion loss on the STDiT -> AdamW -> EMA -> checkpoint,
then a few samples to mp4 and the evaluation score. Rerunning with the same workdir resumes
from the latest checkpoint (model, optimizer, EMA, step and data-iterator position).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from vidjax.checkpoint import Checkpointer
from vidjax.data import shapes
from vidjax.data.captions import CaptionFileError, load_captions
from vidjax.data.loader import VideoSource, make_dataset, make_transform, probe_records
from vidjax.data.video_io import VideoReadError
from vidjax.diffusion import build_diffusion
from vidjax.models.t2v import build_model, build_tokenizer, trainable
from vidjax.models.vae import build_vae

log = logging.getLogger("vidjax.train")

USER_ERRORS = (CaptionFileError, VideoReadError, ValueError, FileNotFoundError, KeyError)


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

    def merge(self, params: dict, rest: dict | None = None) -> nnx.Module:
        states = []
        for template, values in zip(self.templates, (params, self.rest if rest is None else rest), strict=True):
            state = jax.tree.map(lambda x: x, template)
            nnx.replace_by_pure_dict(state, values)
            states.append(state)
        return nnx.merge(self.graphdef, *states)


def make_train_step(parts: ModelParts, tx, diffusion, vae, ema_decay: float):
    """(params, opt_state, ema, batch, rng) -> (params, opt_state, ema, metrics); pure, for jax.jit."""

    def step(params, opt_state, ema, batch, rng):
        def loss_fn(p):
            model = parts.merge(p)
            x0 = vae.encode(batch["video"])
            cond = {"ids": batch["ids"], "mask": batch["mask"]}
            return diffusion.loss(lambda x, t, c, drop: model(x, t, c, drop), x0, cond, rng)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        return params, opt_state, ema, dict(metrics, grad_norm=optax.global_norm(grads))

    return step


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _setup_logging(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("vidjax")
    if not any(getattr(h, "_vidjax", False) for h in root.handlers):
        fh = logging.FileHandler(workdir / "train.log")
        fh._vidjax = True
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    root.setLevel(logging.INFO)


def run(config, workdir: str | Path) -> dict:
    """Train (or resume) in ``workdir``; returns a summary dict (also written to summary.json)."""
    workdir = Path(workdir)
    _setup_logging(workdir)
    check_config(config)
    t_start = time.time()

    # data
    records = prepare_records(config, workdir)
    records, clips, skipped = probe_records(records, config.data.frames, config.data.frame_interval,
                                            report=workdir / "skipped_clips.txt",
                                            keep_decoded=config.data.cache_in_memory, progress=config.progress)
    if skipped:
        print(f"skipped {len(skipped)} unreadable clip(s); see {workdir / 'skipped_clips.txt'}", file=sys.stderr)
    tokenizer = build_tokenizer(config)
    d = config.data
    transform = make_transform(d.frames, d.height, d.width, tokenizer, d.frame_interval)
    dataset = make_dataset(VideoSource(records, clips), transform, batch_size=config.train.batch_size,
                           seed=config.seed, num_threads=d.num_threads)
    data_iter = iter(dataset)

    # model, objective, optimizer
    vae = build_vae(config.vae)
    model = build_model(config, nnx.Rngs(config.seed), latent_channels=vae.latent_channels)
    if config.train.init_from:  # PixArt-α / Open-Sora / exported weights; overwritten by a resume below
        from vidjax.interop import load_pretrained

        load_pretrained(model.dit, config.train.init_from, allow_missing=config.train.init_allow_missing)
        log.info("initialised the denoiser from %s", config.train.init_from)
    diffusion = build_diffusion(config.diffusion)
    tx = make_optimizer(config.train)
    parts = ModelParts(model, trainable(model))
    params = parts.params
    opt_state = tx.init(params)
    ema = jax.tree.map(jnp.copy, params)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    log.info("model: %s, %.2fM trainable parameters", config.model.get("size") or "custom", n_params / 1e6)

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
        print(f"resuming from checkpoint at step {start}", file=sys.stderr)
    metrics_path = workdir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start)
    _truncate_metrics(workdir / "eval_curve.jsonl", start)

    t = config.train
    step_fn = make_train_step(parts, tx, diffusion, vae, t.ema_decay)
    jit_step = jax.jit(step_fn, donate_argnums=(0, 1, 2))
    base_rng = jax.random.key(config.seed)
    writer = _tb_writer(workdir)
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not config.progress,
               dynamic_ncols=True)
    pending: list = []
    t_loop, eval_seconds = time.time(), 0.0
    with metrics_path.open("a") as mf:
        for step in range(start, t.steps):
            batch = next(data_iter)
            params, opt_state, ema, m = jit_step(params, opt_state, ema, batch, jax.random.fold_in(base_rng, step))
            pending.append((step + 1, m))
            done = step + 1
            if done % t.log_every == 0 or done == t.steps or done % t.ckpt_every == 0:
                for s, mm in jax.device_get(pending):
                    rec = {"step": s, **{k: float(v) for k, v in mm.items()}}
                    mf.write(json.dumps(rec) + "\n")
                    if writer is not None:
                        for k, v in rec.items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}", v, s)
                mf.flush()
                rate = (done - start) / max(time.time() - t_loop, 1e-9)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_per_s=f"{rate:.2f}")
                bar.update(len(pending))
                pending = []
            if done % t.ckpt_every == 0 or done == t.steps:
                ckpt.save(done, params=params, ema=ema, opt=opt_state, rest=parts.rest, data_iter=data_iter,
                          config=config)
            if config.sample.eval_every and done % config.sample.eval_every == 0 and done < t.steps:
                t_eval = time.time()
                _periodic_eval(parts.merge(ema), config, vae, diffusion, tokenizer, done,
                               time.time() - t_loop - eval_seconds, workdir, writer,
                               out_dir=workdir / "samples" / f"step_{done:06d}")
                eval_seconds += time.time() - t_eval
    bar.close()
    ckpt.close()
    train_minutes = (time.time() - t_loop - eval_seconds) / 60
    if writer is not None:
        writer.close()
    _plot_loss(metrics_path, workdir / "loss.png")

    summary = {"steps": t.steps, "resumed_from": start, "train_minutes": round(train_minutes, 2),
               "params_M": round(n_params / 1e6, 3)}
    if config.sample.num_prompts > 0 and start < t.steps:

        report = _periodic_eval(parts.merge(ema), config, vae, diffusion, tokenizer, t.steps, train_minutes * 60,
                                workdir, None, out_dir=workdir / "samples")
        summary["eval"] = report["summary"]
        print(_format_eval(report["summary"]), file=sys.stderr)
    summary["total_minutes"] = round((time.time() - t_start) / 60, 2)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _periodic_eval(model, config, vae, diffusion, tokenizer, step: int, train_seconds: float, workdir: Path,
                   writer, out_dir: Path | None = None) -> dict:
    """Sample and score the evaluation prompts; appends a row to ``eval_curve.jsonl``."""
    from vidjax.evaluate import evaluate_model

    report = evaluate_model(model, config, vae, diffusion, tokenizer, out_dir=out_dir)
    row = {"step": step, "train_minutes": round(train_seconds / 60, 2), **report["summary"]}
    with (workdir / "eval_curve.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
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
        summary = run(config, workdir)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vidjax.train: error: {msg}", file=sys.stderr)
        sys.exit(2)
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
    app.run(main, flags_parser=parse_flags)
