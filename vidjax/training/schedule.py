"""A multi-stage schedule (Open-Sora's three stages) as one resumable command.

A config with a ``stages`` section is a schedule: the rest of the config is shared, and each stage lists what it
changes (plain nested values; ``data.bucket_config``, ``data.resolutions`` and ``sample.buckets`` are replaced
whole, other sections merged field by field)::

    c.stages = ConfigDict()
    c.stages.stage1 = dict(data=dict(bucket_config={...}), model=dict(freeze="temporal"), train=dict(steps=2000))
    c.stages.stage2 = dict(data=dict(bucket_config={...}), train=dict(steps=2000, init_reset="attn_temp"))
    ...

``python -m vidjax.train --config configs/three_stage_shapes.py`` then runs the stages in name order, each in
``<workdir>/<stage>`` with the shared loop (stage 0, the VAE, runs first when the config's VAE is absent). A stage
starts from the previous stage's final EMA weights (``train.init_from`` = its workdir, unless the stage sets one),
with the strict load report of vidjax.training.warmstart. A finished stage is not redone; an interrupted one
resumes from its checkpoint; each stage writes its own ``summary.json``, and ``<workdir>/summary.json`` and
``stages.md`` compare them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import ml_collections

from vidjax.errors import ConfigError

log = logging.getLogger("vidjax.train")

#: fields a stage replaces whole (tables), not field by field
REPLACED = {"bucket_config", "resolutions", "buckets", "mix"}


def _merge(base: ml_collections.ConfigDict, override, where: str) -> None:
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}.{key}: no such field in the shared config (a stage changes existing fields)")
        if isinstance(base[key], ml_collections.ConfigDict) and key not in REPLACED:
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"{where}.{key}: a section; expected a dict of its fields, got {value!r}")
            _merge(base[key], value, f"{where}.{key}")
        else:
            base[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def stage_configs(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    """``[(stage name, full config)]`` in name order; each without ``stages`` and named ``<name>_<stage>``."""
    stages = config.get("stages")
    if not stages:
        raise ConfigError("config.stages is empty; a schedule needs at least one stage")
    shared = config.copy_and_resolve_references()
    with shared.unlocked():
        del shared["stages"]
    out = []
    for name in sorted(stages.keys()):
        c = shared.copy_and_resolve_references()
        with c.unlocked():
            _merge(c, stages[name], f"config.stages.{name}")
            c.name = f"{config.get('name', 'run')}_{name}"
        out.append((name, c))
    return out


def run_schedule(config, workdir: str | Path) -> dict:
    """Run (or resume) every stage of ``config.stages`` under ``workdir``; returns the combined summary."""
    from vidjax.training import make_task
    from vidjax.training.loop import fit

    workdir = Path(workdir).absolute()
    start = time.time()
    summaries: dict[str, dict] = {}
    previous: Path | None = None
    for name, c in stage_configs(config):
        stage_dir = workdir / name
        with c.unlocked():
            if previous is not None and not c.train.get("init_from"):
                c.train.init_from = str(previous)
            if not c.train.get("compilation_cache"):  # a bucket shape seen in any stage or run compiles once
                c.train.compilation_cache = str(workdir / "jax_cache")
        print(f"== {name}: {stage_dir}" + (f" (from {c.train.init_from})" if c.train.get("init_from") else ""),
              file=sys.stderr)
        summary = fit(make_task(c), c, stage_dir)
        summaries[name] = summary
        if summary.get("preempted"):
            print(f"stopped in {name}; rerun the same command to continue from it", file=sys.stderr)
            return {"stages": summaries, "preempted": True}
        previous = stage_dir
    combined = {"stages": summaries, "wall_minutes_this_run": round((time.time() - start) / 60, 2)}
    (workdir / "summary.json").write_text(json.dumps(combined, indent=2))
    (workdir / "stages.md").write_text(stages_table(summaries))
    print(stages_table(summaries), file=sys.stderr)
    return combined


def stages_table(summaries: dict[str, dict]) -> str:
    """A Markdown table: per stage and evaluated bucket, the judge's accuracies, steps and minutes."""
    lines = ["| stage | bucket | colour | shape | motion | all | steps | train min | stage min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        buckets = (s.get("eval_buckets") or {"": s.get("eval") or {}})
        for label, e in buckets.items():
            cells = [f"{e[k]:.0%}" if k in e else "–" for k in ("colour", "shape", "motion", "all")]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {s.get('steps', '')} | "
                         f"{s.get('train_minutes', '')} | {s.get('total_minutes', '')} |")
    return "\n".join(lines) + "\n"


__all__ = ["run_schedule", "stage_configs", "stages_table"]
