"""Training: the one loop (loop.py) and the tasks it runs.

    state.py      the training state, the optimizer, the update rule (accumulation, non-finite guard, EMA)
    loop.py       the loop: mesh, resume, metrics, checkpoints, preemption, evaluation cadence, summary
    metrics.py    metrics files, TensorBoard, plots, tokens/s and MFU
    diffusion.py  the text-to-video denoiser task (stage 0 VAE first when configured)
    vae.py        the video VAE task

    warmstart.py  ``train.init_from``: an earlier stage's weights or an imported checkpoint, with a load report
    schedule.py   ``config.stages``: a multi-stage schedule (Open-Sora's three stages) as one resumable run

``run(config, workdir)`` picks the task from ``config.task`` (``"diffusion"``, the default, or ``"vae"``), or runs
the schedule of ``config.stages``.
"""

from __future__ import annotations

from pathlib import Path

from vidjax.errors import ConfigError

TASKS = ("diffusion", "vae")


def make_task(config):
    kind = config.get("task", "diffusion")
    if kind == "diffusion":
        from vidjax.training.diffusion import DiffusionTask

        return DiffusionTask(config)
    if kind == "vae":
        from vidjax.training.vae import VAETask

        return VAETask(config)
    raise ConfigError(f"config.task={kind!r}; expected one of {TASKS}")


def run(config, workdir: str | Path) -> dict:
    """Train (or resume) ``config`` in ``workdir``; returns the summary (also in ``workdir/summary.json``)."""
    from vidjax.training.loop import fit

    if config.get("stages"):
        from vidjax.training.schedule import run_schedule

        return run_schedule(config, workdir)
    return fit(make_task(config), config, workdir)
