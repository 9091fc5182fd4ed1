"""Checkpoints with orbax: the one place that writes and reads training state.

A step directory ``<workdir>/checkpoints/<step>/`` holds the items
``params``, ``ema`` (trained weights as plain nested dicts), ``rest`` (frozen weights and buffers such
as the null caption ``y_embedding``), ``opt`` (optimizer state),
``data_iter`` (the grain iterator position) and ``meta`` (step, config JSON).
Orbax writes each step into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; rerunning resumes from it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from vidjax.errors import MissingFileError

log = logging.getLogger(__name__)


def _quietly(read, grace: float = 0.5):
    """``(read(), None)``, or ``(None, reason)`` when reading a (damaged) step fails, without flooding the console.

    When one array of a step cannot be read, orbax logs the failure with its traceback, TensorStore's threads,
    whose reads of the other arrays outlive the failed restore, print "Event loop is closed" tracebacks straight to
    the process's stderr, and the abandoned read coroutines print more when they are collected. The caller
    reports the failure once; this captures that output (file descriptor 2, until the failed read is cleaned up)
    and keeps it in train.log.
    """
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved = os.dup(2)
    result, reason = None, None
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            result = read()
        except Exception as e:  # noqa: BLE001 - any failure to read means the step is damaged
            lines = str(e).strip().splitlines() or [""]
            reason = f"{type(e).__name__}: {lines[0].split(' See full TensorStore details')[0][:200]}"
        finally:
            if reason is not None:  # the exception and its frames are gone: let the rest finish in here
                time.sleep(grace)
                gc.collect()
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            absl.setLevel(level)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    if text.strip():
        log.debug("storage output while reading a checkpoint:\n%s", text)
    return result, reason


class Checkpointer:
    """Save and restore a run's state under ``<workdir>/checkpoints``.

    Retention: the last ``keep`` steps, plus every step that is a multiple of ``keep_every`` (0: none).
    """

    def __init__(self, workdir: str | Path, keep: int = 2, async_save: bool = True, keep_every: int = 0):
        self.dir = Path(workdir).absolute() / "checkpoints"
        self.mngr = self._manager(keep, async_save, keep_every)
        self._opts = (keep, async_save, keep_every)

    def _manager(self, keep: int, async_save: bool, keep_every: int) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                           keep_period=keep_every or None,
                                                           enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.mngr.all_steps())

    def save(self, step: int, *, params, ema, opt, rest, data_iter, config, **meta) -> None:
        """Write step ``step`` (asynchronously; atomic: a killed save leaves the previous steps intact).
        ``meta`` entries (JSON values) are stored next to the step and the config."""
        meta = {"step": int(step), "config": json.loads(config.to_json()), **meta}
        args = dict(params=ocp.args.StandardSave(params), ema=ocp.args.StandardSave(ema),
                    opt=ocp.args.StandardSave(opt), rest=ocp.args.StandardSave(rest), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.mngr.save(step, args=ocp.args.Composite(**args))

    def read_meta(self, step: int) -> dict:
        return self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, *, params, ema, opt, rest, data_iter):
        """Restore into the structures given as targets (abstract or concrete); returns a dict."""
        args = dict(params=ocp.args.StandardRestore(params), ema=ocp.args.StandardRestore(ema),
                    opt=ocp.args.StandardRestore(opt), rest=ocp.args.StandardRestore(rest),
                    meta=ocp.args.JsonRestore())
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.mngr.restore(step, args=ocp.args.Composite(**args))

    def restore_latest(self, check_meta=None, **targets) -> dict | None:
        """Restore the newest readable step (None when there is none).

        A step that cannot be read (a truncated array file, a missing item, a damaged manifest) is moved
        aside to ``checkpoints/unreadable_<step>`` (nothing is deleted), logged and reported on stderr, and the
        step before it is tried. ``check_meta(meta)`` runs on the stored meta before the arrays are read; it
        may raise (e.g. a checkpoint of another model), which is not treated as damage.
        """
        for step in reversed(self.all_steps()):
            meta, reason = _quietly(lambda step=step: self.read_meta(step))
            if reason is None:
                if check_meta is not None:
                    check_meta(meta)
                restored, reason = _quietly(lambda step=step: self.restore(step, **targets))
                if reason is None:
                    return restored
            self._set_aside(step, reason)
        return None

    def _set_aside(self, step: int, reason: str) -> None:
        target = self.dir / f"unreadable_{step}"
        n = 1
        while target.exists():
            target, n = self.dir / f"unreadable_{step}.{n}", n + 1
        shutil.move(str(self.dir / str(step)), target)
        msg = f"checkpoint step {step} is unreadable ({reason}); moved to {target.name}"
        log.warning(msg)
        print(f"warning: {msg}; trying the previous step", file=sys.stderr)
        self.mngr.reload()

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


def restore_model(workdir: str | Path, step: int | None = None, ema: bool = True):
    """(config, model) from a training workdir; ``ema=True`` loads the EMA weights.

    The model is rebuilt from the config stored in the checkpoint, so no config file is needed.
    """
    from vidjax.models.t2v import build_model, trainable
    from vidjax.models.vae import build_vae

    ckpt_dir = Path(workdir).absolute() / "checkpoints"
    if not ckpt_dir.is_dir():
        raise MissingFileError(f"{workdir}: no checkpoints folder (was this workdir trained by vidjax.train?)")
    mngr = ocp.CheckpointManager(ckpt_dir)
    steps = mngr.all_steps()
    if not steps:
        raise MissingFileError(f"{ckpt_dir}: no complete checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise MissingFileError(f"{ckpt_dir}: no checkpoint at step {step}; have {sorted(steps)}")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    config = ml_collections.ConfigDict(meta["config"])
    vae = build_vae(config.vae)
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0), latent_channels=vae.latent_channels))
    graphdef, params, rest = nnx.split(model, trainable(model), ...)
    key = "ema" if ema else "params"
    # onto this process's first device, whatever mesh the run was trained on (a pod run samples on one chip)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    targets = {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), nnx.to_pure_dict(v))
               for k, v in ((key, params), ("rest", rest))}
    restored = mngr.restore(step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v)
                                                             for k, v in targets.items()}))
    nnx.replace_by_pure_dict(params, restored[key])
    nnx.replace_by_pure_dict(rest, restored["rest"])
    mngr.close()
    return config, nnx.merge(graphdef, params, rest), step
