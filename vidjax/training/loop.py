"""The one training loop. A task (the diffusion denoiser, the video VAE) supplies its state, step, data and
evaluation; the loop does everything else, once, for every task:

    check settings -> stage(s) before (``task.prepare``) -> ``task.setup``: state, step, data
    -> mesh placement (the logical-axis table, ZeRO-3 on ``fsdp``, batch over ``data × fsdp``)
    -> resume from the newest readable checkpoint (same model or a one-line error)
    -> steps: jitted, donated; metrics every ``log_every`` (JSON lines, TensorBoard, tokens/s, MFU, progress bar);
       checkpoints every ``ckpt_every`` (last ``keep_checkpoints`` kept, plus every ``keep_every``-th);
       evaluation every ``eval_every``
    -> ``task.finish`` (final evaluation and artefacts) -> ``summary.json``

Safety: a step whose loss or gradient is NaN/Inf changes nothing (``state.update``'s guard) and is counted;
``max_nonfinite`` of them in a row stop the run with a message. SIGTERM / SIGINT (preemption, Ctrl-C) write a
checkpoint and end the run normally; rerunning continues from it with the same batches and random numbers.
Rerunning a finished run changes nothing and returns its summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vidjax.checkpoint import Checkpointer
from vidjax.cli import check_writable
from vidjax.data.loader import make_dataset
from vidjax.errors import ConfigError, UserError
from vidjax.parallel import distributed
from vidjax.parallel import sharding as shd
from vidjax.parallel.mesh import describe, make_mesh
from vidjax.training import metrics as mx

log = logging.getLogger("vidjax.train")

# config.model / config.vae keys that choose how a step is executed, not what the state holds: a resume may
# change them
EXECUTION_KEYS = {"attention_impl", "remat", "scan_layers", "sequence_parallel", "dtype"}


class TrainingDiverged(UserError, FloatingPointError):
    """Too many steps in a row with a non-finite loss or gradient."""


@dataclasses.dataclass
class Run:
    """What every task may use: the config, the workdir, the mesh, and whether this process writes files."""

    config: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    primary: bool
    progress: bool
    stop: Preemption
    writer: Any = None
    compiler_options: dict[str, str] = dataclasses.field(default_factory=dict)  # see cpu_compiler_options

    def jit(self, fn: Callable, **kw) -> Callable:
        """``jax.jit`` with the run's XLA options, for a task's own hot paths (the latent precompute, evaluation
        reconstructions): they compile as the train step does."""
        return jax.jit(fn, compiler_options=self.compiler_options or None, **kw)


@dataclasses.dataclass
class Setup:
    """What a task hands the loop.

    ``state``: ``{"params", "ema", "opt", "rest"}`` (see vidjax.training.state), host or device arrays;
    ``shardings``: the same tree of ``NamedSharding``; ``step(state, batch, rng) -> (state, metrics)``: pure,
    metrics hold at least ``loss`` and ``nonfinite``; ``source`` / ``transform``: a grain random-access source
    and the per-example map to the batch arrays (``batch_ndims``: key -> ndim).
    """

    state: dict
    shardings: dict
    step: Callable
    source: Any
    transform: Callable | None
    batch_ndims: dict[str, int]
    # instead of source + transform: make(local_batch, shard_index, shard_count) -> an iterable of this process's
    # batches (its share ``shard_index`` of ``shard_count`` equal shares of every global batch) with a grain-style
    # iterator state (packed shards, vidjax.data.packed; bucketed batches, vidjax.data.bucketed)
    dataset: Callable | None = None
    eval_every: int = 0
    params: int = 0
    tokens_per_sample: int = 0
    flops_per_sample: float | None = None  # training FLOPs (forward and backward) of one sample
    # batches of several shapes (buckets): cost({key: shape}) -> (tokens per sample, training FLOPs per sample,
    # bucket label); the loop then times each step and reports throughput per bucket
    cost: Callable | None = None


class Task(Protocol):
    kind: str
    state_sections: tuple[str, ...]  # config sections (dotted paths) that fix the state's shapes

    def prepare(self, run: Run) -> dict: ...  # before setup (earlier stages); summary entries

    def setup(self, run: Run) -> Setup: ...

    def evaluate(self, run: Run, state: dict, step: int, train_minutes: float) -> None: ...  # periodic

    def finish(self, run: Run, state: dict, trained_now: bool, train_minutes: float) -> dict: ...  # summary entries


# --------------------------------------------------------------------------------------
# Settings, logging, preemption
# --------------------------------------------------------------------------------------


def check_train_settings(config) -> None:
    """One-line errors for ``config.train`` values the loop cannot run with."""
    t = config.train
    for key in ("steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints"):
        if int(t.get(key, 1)) < 1:
            raise ConfigError(f"config.train.{key}={t.get(key)}: must be a positive integer")
    for key in ("grad_accum", "max_nonfinite"):
        if key in t and int(t[key]) < 1:
            raise ConfigError(f"config.train.{key}={t[key]}: must be a positive integer")
    if int(t.get("keep_every", 0)) < 0:
        raise ConfigError(f"config.train.keep_every={t.keep_every}: must be 0 (off) or a positive integer")
    accum = int(t.get("grad_accum", 1))
    if t.batch_size % accum:
        raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by "
                          f"config.train.grad_accum={accum}")


def cpu_compiler_options(config) -> dict[str, str]:
    """``config.train.cpu_compiler_options`` when the step compiles for a CPU, else ``{}``: XLA options for the
    train step and the task's other jits (``Run.jit``; ``jax.jit``'s ``compiler_options``, XLA flag names without
    ``--``). Each is tried once on a trivial function, so a misspelt name or value is a one-line error. Call after
    ``jax.distributed`` starts (it starts the backend)."""
    options = config.train.get("cpu_compiler_options", None) or {}
    if jax.default_backend() != "cpu" or not options:
        return {}
    options = {str(k): str(v) for k, v in dict(options).items()}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
    except Exception as e:  # XLA's INVALID_ARGUMENT / NOT_FOUND for an unknown option or value
        raise ConfigError(f"config.train.cpu_compiler_options={options}: XLA rejects it: "
                          + " ".join(str(e).split())) from None
    return options


def setup_logging(workdir: Path) -> None:
    """``train.log`` in ``workdir`` (``train_process<i>.log`` on other processes); a later run in the same
    process (stage 0, then the denoiser) logs to its own file."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("vidjax")
    name = "train.log" if distributed.is_primary() else f"train_process{jax.process_index()}.log"
    path = os.path.abspath(workdir / name)
    for h in [h for h in root.handlers if getattr(h, "_vidjax", False)]:
        if h.baseFilename != path:
            root.removeHandler(h)
            h.close()
    if not any(getattr(h, "_vidjax", False) for h in root.handlers):
        fh = logging.FileHandler(path)
        fh._vidjax = True
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    root.setLevel(logging.INFO)


class Preemption:
    """SIGTERM / SIGINT set ``requested``; the loop checkpoints and stops at the next step boundary.
    A second signal falls through to the default (stop at once)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: saving a checkpoint at the end of this step, then stopping "
              "(send it again to stop at once)", file=sys.stderr)
        for s, h in self._previous.items():
            signal.signal(s, h)

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
            for s in self.SIGNALS:
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def agreed(self) -> bool:
        """True when any process was asked to stop (a collective with several processes)."""
        flag = self.requested is not None
        if jax.process_count() > 1:
            flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
        return flag


def _dotted(tree: dict, path: str):
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k not in EXECUTION_KEYS:
                out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def check_same_model(stored: dict, config, sections: tuple[str, ...], where: str) -> None:
    """One-line error when the checkpoint's config differs from ``config`` in a state-defining section."""
    current = json.loads(config.to_json())
    old, new = {}, {}
    for sec in sections:
        old.update(_flat(_dotted(stored, sec), sec))
        new.update(_flat(_dotted(current, sec), sec))
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in diffs[:6])
        now = ", ".join(f"{k}={new.get(k)!r}" for k in diffs[:6])
        raise ConfigError(f"{where} was trained with {was}, but the config now has {now}: resuming needs the same "
                          "model; use another --workdir, or the settings it was trained with")


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def jit_train_step(step: Callable, shardings: dict, batch_ndims: dict[str, int], mesh, seed: int,
                   traces: list | None = None, compiler_options: dict[str, str] | None = None):
    """The step as the loop runs it: ``(state, batch, step_index) -> (state, metrics)``, jitted on ``mesh`` with
    the state's shardings (donated), the batch over ``data × fsdp``, and the rng ``fold_in(key(seed), step)``
    computed inside (no host-side key to place). Each trace (one per new batch shape) appends the batch's shapes
    to ``traces``; ``compiler_options`` go to XLA (see :func:`cpu_compiler_options`)."""
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    b_sh = {k: shd.batch_sharding(mesh, n) for k, n in batch_ndims.items()}

    def step_on_mesh(state, batch, index):
        if traces is not None:
            traces.append({k: tuple(v.shape) for k, v in batch.items()})
        return step(state, batch, jax.random.fold_in(jax.random.key(seed), index))

    return jax.jit(step_on_mesh, in_shardings=(shardings, b_sh, rep), out_shardings=(shardings, rep),
                   donate_argnums=(0,), compiler_options=compiler_options or None)


def _finished_summary(workdir: Path, steps: int) -> dict | None:
    """The summary of a run that already finished ``steps`` steps (None otherwise)."""
    path = workdir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    latest = Checkpointer(workdir).latest_step() if (workdir / "checkpoints").is_dir() else None
    if summary.get("steps") == steps and latest is not None and latest >= steps:
        return summary
    return None


def fit(task: Task, config, workdir: str | Path) -> dict:
    """Train (or resume) ``task`` in ``workdir``; returns the summary dict (also written to summary.json)."""
    workdir = Path(workdir).absolute()
    check_train_settings(config)
    check_writable(workdir, what="workdir")
    distributed.initialize(config)
    compiler_options = cpu_compiler_options(config)  # a bad option stops here, before any data work
    primary = distributed.is_primary()
    setup_logging(workdir)
    t = config.train
    done_before = _finished_summary(workdir, t.steps)
    if done_before is not None:
        if primary:
            print(f"{workdir}: already trained for {t.steps} steps; nothing to do (summary.json kept)",
                  file=sys.stderr)
        return done_before
    t_start = time.time()
    cache = t.get("compilation_cache", "")
    if cache:  # JAX's persistent compilation cache: a rerun (or a new bucket seen before) skips XLA compiles
        jax.config.update("jax_compilation_cache_dir", str(Path(cache).expanduser().absolute()))
    mesh = make_mesh(config)
    with Preemption() as stop:
        run = Run(config, workdir, mesh, primary, bool(config.progress) and primary, stop,
                  compiler_options=compiler_options)
        summary = {"task": task.kind, **task.prepare(run)}
        if stop.requested:
            return _interrupted(summary, workdir, primary, "before training")
        return _train(task, run, summary, t_start)


def _bucket_row(b: dict, peak: float) -> dict:
    """One bucket's throughput over the steps that did not compile (``peak``: the mesh's FLOP/s, 0 if unknown)."""
    sec = max(b["seconds"], 1e-9)
    row = {"steps": b["steps"], "samples": b["samples"], "compile_seconds": round(b["compile_seconds"], 2)}
    if b["steps"]:
        row.update(steps_per_s=round(b["steps"] / sec, 4), samples_per_s=round(b["samples"] / sec, 3),
                   tokens_per_s=round(b["tokens"] / sec, 1))
        if peak:
            row["mfu"] = round(b["flops"] / sec / peak, 4)
    return row


def _interrupted(summary: dict, workdir: Path, primary: bool, where: str) -> dict:
    summary["preempted"] = True
    if primary:
        print(f"stopped {where}; rerun the same command to continue", file=sys.stderr)
    return summary


def _train(task: Task, run: Run, summary: dict, t_start: float) -> dict:
    config, workdir, mesh, primary = run.config, run.workdir, run.mesh, run.primary
    t = config.train
    setup = task.setup(run)
    B, seed = t.batch_size, config.seed
    shd.check_batch(B, mesh)
    start_row, stop_row = distributed.process_rows(mesh, B) if jax.process_count() > 1 else (0, B)
    shard_count = B // (stop_row - start_row)  # equal shares of every global batch (1 on one process)
    if setup.dataset is not None:
        dataset = setup.dataset(stop_row - start_row, start_row // (stop_row - start_row), shard_count)
    elif jax.process_count() == 1:
        dataset = make_dataset(setup.source, setup.transform, batch_size=B, seed=seed,
                               num_threads=config.data.num_threads)
    else:  # each process reads only the rows its devices hold
        dataset = distributed.process_dataset(setup.source, setup.transform, global_size=B,
                                              rows=distributed.process_rows(mesh, B), seed=seed,
                                              num_threads=config.data.num_threads)
    data_iter = iter(dataset)
    state = shd.place(setup.state, setup.shardings)  # each device receives only its slice
    log.info("%s: %.2fM trainable parameters; mesh %s, %d process(es)", task.kind, setup.params / 1e6,
             describe(mesh), jax.process_count())

    # resume from the newest readable checkpoint
    ckpt = Checkpointer(workdir, keep=t.keep_checkpoints, keep_every=int(t.get("keep_every", 0)))
    start, prior_seconds = 0, 0.0

    def same_model(meta: dict) -> None:
        check_same_model(meta["config"], config, task.state_sections, f"{ckpt.dir}/{meta['step']}")

    restored = ckpt.restore_latest(check_meta=same_model, params=state["params"], ema=state["ema"],
                                   opt=state["opt"], rest=state["rest"], data_iter=data_iter)
    if restored is not None:
        state = {k: restored[k] for k in ("params", "ema", "opt", "rest")}
        start = int(restored["meta"]["step"])
        prior_seconds = float(restored["meta"].get("train_seconds", 0.0))
        log.info("resumed from step %d", start)
        if primary:
            print(f"resuming from checkpoint at step {start}", file=sys.stderr)
    metrics_path, curve_path = workdir / "metrics.jsonl", workdir / "eval_curve.jsonl"
    if primary:
        mx.truncate_after(metrics_path, start)
        mx.truncate_after(curve_path, start)

    traces: list[dict] = []
    jit_step = jit_train_step(setup.step, setup.shardings, setup.batch_ndims, mesh, seed, traces,
                              run.compiler_options)
    peak, peak_source = mx.peak_flops_per_device() if (setup.flops_per_sample or setup.cost) else (0.0, "")
    if peak:
        log.info("MFU against %.3g FLOP/s per device (%s) × %d devices", peak, peak_source, mesh.size)

    run.writer = mx.tb_writer(workdir) if primary else None
    bar = tqdm(total=t.steps, initial=start, desc=f"train {task.kind}", unit="step", disable=not run.progress,
               dynamic_ncols=True)
    max_bad = int(t.get("max_nonfinite", 20))
    pending: list = []
    streak, skipped, throughput = 0, 0, {}
    t_loop, eval_seconds = time.time(), 0.0
    t_flush, steps_since, samples_since, tokens_since, flops_since = time.time(), 0, 0, 0.0, 0.0
    buckets: dict[str, dict] = {}  # per bucket label: steps, samples, tokens, flops, seconds, compile_seconds
    done = start
    stopped = False

    def train_seconds() -> float:
        return prior_seconds + time.time() - t_loop - eval_seconds

    try:
        with metrics_path.open("a") if primary else open(os.devnull, "w") as mf:
            for step in range(start, t.steps):
                local = next(data_iter)
                rows = len(next(iter(local.values()))) * shard_count  # the global batch (a bucket's own size)
                batch = distributed.global_batch(local, mesh, rows)
                compiled, t_step = len(traces), time.time()
                with jax.set_mesh(mesh):  # activations are constrained by logical names under this mesh
                    state, m = jit_step(state, batch, step)
                if setup.cost is None:
                    tokens, flops = setup.tokens_per_sample, setup.flops_per_sample or 0.0
                else:  # buckets: time every step (a sync per step) to report each bucket's own throughput
                    tokens, flops, label = setup.cost({k: tuple(v.shape) for k, v in batch.items()})
                    jax.block_until_ready(m["loss"])
                    b = buckets.setdefault(label, dict(steps=0, samples=0, tokens=0.0, flops=0.0, seconds=0.0,
                                                       compile_seconds=0.0))
                    if len(traces) > compiled:  # this step compiled the bucket's shape: not a throughput sample
                        b["compile_seconds"] += time.time() - t_step
                        log.info("bucket %s: compiled in %.1f s (step compilation %d)", label, time.time() - t_step,
                                 len(traces))
                    else:
                        b["steps"] += 1
                        b["samples"] += rows
                        b["tokens"] += rows * tokens
                        b["flops"] += rows * flops
                        b["seconds"] += time.time() - t_step
                pending.append((step + 1, m))
                done, steps_since = step + 1, steps_since + 1
                samples_since += rows
                tokens_since += rows * tokens
                flops_since += rows * flops
                local_stop = jax.process_count() == 1 and run.stop.requested is not None
                flush = done % t.log_every == 0 or done == t.steps or done % t.ckpt_every == 0 or local_stop
                if flush:
                    host = shd.to_host(pending)
                    dt = max(time.time() - t_flush, 1e-9)
                    throughput = {"steps_per_s": steps_since / dt, "samples_per_s": samples_since / dt,
                                  "tokens_per_s": tokens_since / dt}
                    if peak:
                        throughput["mfu"] = flops_since / dt / (peak * mesh.size)
                    host[-1] = (host[-1][0], {**host[-1][1], **throughput})
                    rows = mx.write_metrics(host, mf, run.writer)
                    for r in rows:
                        bad = r.get("nonfinite", 0.0) > 0
                        skipped += bad
                        streak = streak + 1 if bad else 0
                        if streak >= max_bad:
                            raise TrainingDiverged(
                                f"{streak} steps in a row (up to step {r['step']}) had a non-finite loss or gradient "
                                f"and were skipped, so the weights and checkpoints are those of step "
                                f"{r['step'] - streak}. Lower config.train.lr (now {t.lr}) or check the data, then "
                                "rerun to resume from them; if those weights are already blown up (finite but huge "
                                "after a far too large step), start in a new --workdir or from an earlier step kept "
                                "with config.train.keep_every")
                    last = rows[-1]
                    bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{throughput['steps_per_s']:.2f}")
                    bar.update(len(pending))
                    pending, t_flush, steps_since, samples_since, tokens_since, flops_since = [], time.time(), 0, \
                        0, 0.0, 0.0
                stopping = flush and run.stop.agreed()
                if done % t.ckpt_every == 0 or done == t.steps or stopping:
                    ckpt.save(done, params=state["params"], ema=state["ema"], opt=state["opt"], rest=state["rest"],
                              data_iter=data_iter, config=config, train_seconds=train_seconds())
                if stopping:
                    stopped = True
                    break
                if setup.eval_every and done % setup.eval_every == 0 and done < t.steps:
                    t_eval = time.time()
                    task.evaluate(run, state, done, train_seconds() / 60)
                    eval_seconds += time.time() - t_eval
                    t_flush += time.time() - t_eval
    finally:
        bar.close()
        ckpt.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
    minutes = train_seconds() / 60
    log.info("the step was compiled %d time(s): %s", len(traces), traces)
    summary.update(steps=t.steps, resumed_from=start, train_minutes=round(minutes, 2),
                   params_M=round(setup.params / 1e6, 3), nonfinite_steps=skipped, step_compilations=len(traces),
                   **{k: round(v, 4) for k, v in throughput.items()})
    if buckets:
        summary["buckets"] = {label: _bucket_row(b, peak * mesh.size) for label, b in buckets.items()}
        log.info("per bucket: %s", summary["buckets"])
    if stopped:
        summary["stopped_at"] = done
        if primary:
            log.info("stopped at step %d by %s; checkpoint saved", done, run.stop.requested)
            print(f"checkpoint saved at step {done}", file=sys.stderr)
        if run.writer is not None:
            run.writer.close()
        return _interrupted(summary, workdir, primary, f"at step {done}")
    summary.update(task.finish(run, state, start < t.steps, minutes))
    if run.writer is not None:
        run.writer.close()
    if primary:
        mx.plot_loss(metrics_path, workdir / "loss.png")
    summary["total_minutes"] = round((time.time() - t_start) / 60, 2)
    if primary:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
