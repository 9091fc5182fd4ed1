"""Checkpoints with orbax: the one place that writes and reads training state.

A step directory ``<workdir>/checkpoints/<step>/`` holds the items
``params``, ``ema`` (trained weights as plain nested dicts), ``rest`` (frozen weights and buffers such
as the null caption ``y_embedding``), ``opt`` (optimizer state),
``data_iter`` (the grain iterator position) and ``meta`` (step, config JSON).
Orbax writes each step into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; rerunning resumes from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import grain
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int = 2, async_save: bool = True):
        self.dir = Path(workdir).absolute() / "checkpoints"
        self.mngr = ocp.CheckpointManager(
            self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                           enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, *, params, ema, opt, rest, data_iter, config) -> None:
        meta = {"step": int(step), "config": json.loads(config.to_json())}
        args = dict(params=ocp.args.StandardSave(params), ema=ocp.args.StandardSave(ema),
                    opt=ocp.args.StandardSave(opt), rest=ocp.args.StandardSave(rest), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.mngr.save(step, args=ocp.args.Composite(**args))

    def restore(self, step: int, *, params, ema, opt, rest, data_iter):
        """Restore into the structures given as targets (abstract or concrete); returns a dict."""
        args = dict(params=ocp.args.StandardRestore(params), ema=ocp.args.StandardRestore(ema),
                    opt=ocp.args.StandardRestore(opt), rest=ocp.args.StandardRestore(rest),
                    meta=ocp.args.JsonRestore())
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.mngr.restore(step, args=ocp.args.Composite(**args))

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
        raise FileNotFoundError(f"{workdir}: no checkpoints folder (was this workdir trained by vidjax.train?)")
    mngr = ocp.CheckpointManager(ckpt_dir)
    steps = mngr.all_steps()
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint at step {step}; have {sorted(steps)}")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    config = ml_collections.ConfigDict(meta["config"])
    vae = build_vae(config.vae)
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0), latent_channels=vae.latent_channels))
    graphdef, params, rest = nnx.split(model, trainable(model), ...)
    key = "ema" if ema else "params"
    targets = {key: nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
    restored = mngr.restore(step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v)
                                                             for k, v in targets.items()}))
    nnx.replace_by_pure_dict(params, restored[key])
    nnx.replace_by_pure_dict(rest, restored["rest"])
    mngr.close()
    return config, nnx.merge(graphdef, params, rest), step
