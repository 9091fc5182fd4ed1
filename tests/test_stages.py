"""The three-stage schedule as one run: buckets in the loop, stage-to-stage weights, resume, bad input.

One quick schedule (configs/three_stage_shapes.py:quick: raw pixels, a tiny STDiT, images then video then mixed
buckets) is trained once per module; the tests read it, restart it, and break it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax.config import load_config
from vidjax.training import run

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/three_stage_shapes.py:quick"


def quick_schedule_config(data_root: Path, **stage_over):
    c = load_config(CONFIG)
    c.progress = False
    c.data.root = str(data_root)
    for key, value in stage_over.items():  # "stage2.train.steps": 12
        stage, sec, k = key.split(".")
        c.stages[stage][sec][k] = value
    return c


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def schedule(tmp_path_factory):
    root = tmp_path_factory.mktemp("three_stage")
    c = quick_schedule_config(root / "data", **{"stage2.train.steps": 12,  # room to kill stage 2 mid-way
                                                 "stage1.sample.eval_every": 2})  # an image-only eval mid-stage
    summary = run(c, root / "run")
    return root, c, summary


def train_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "vidjax.train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_schedule_runs_each_stage_from_the_previous_with_a_load_report(schedule):
    root, c, summary = schedule
    work = root / "run"
    assert list(summary["stages"]) == ["stage1", "stage2", "stage3"]
    for name, steps in (("stage1", 4), ("stage2", 12), ("stage3", 4)):
        assert (work / name / "summary.json").is_file()
        assert json.loads((work / name / "summary.json").read_text())["steps"] == steps
    assert json.loads((work / "summary.json").read_text())["stages"]["stage3"]["steps"] == 4
    assert "| stage3 | 8x12x24 |" in (work / "stages.md").read_text()
    assert not (work / "stage1" / "init_report.json").exists()  # stage 1 starts from scratch
    rep2 = json.loads((work / "stage2" / "init_report.json").read_text())
    assert rep2["source"] == str(work / "stage1") and rep2["weights"] == "ema"
    assert rep2["new"] and all("attn_temp" in n for n in rep2["new"])  # temporal attention re-initialised
    assert rep2["loaded"] and not any("attn_temp" in n for n in rep2["loaded"])
    rep3 = json.loads((work / "stage3" / "init_report.json").read_text())
    assert rep3["new"] == [] and rep3["dropped"] == [] and any("attn_temp" in n for n in rep3["loaded"])


def test_buckets_batch_sizes_compiles_and_images_scored_on_colour_and_shape(schedule):
    root, c, summary = schedule
    s1, s3 = summary["stages"]["stage1"], summary["stages"]["stage3"]
    # stage 1 sees images only, at two sizes: two shapes, each compiled once
    assert set(s1["buckets"]) <= {"1x8x8", "1x16x16"} and s1["step_compilations"] == len(s1["buckets"])
    assert s1["step_compilations"] == len({json.dumps(b) for b in s1["buckets"]})
    assert all(b["samples"] == 8 * b["steps"] for b in s1["buckets"].values())
    assert s3["step_compilations"] == len(s3["buckets"]) <= 4
    assert all(b["samples"] == 8 * b["steps"] for b in s3["buckets"].values())
    table = (root / "run" / "stage3" / "buckets.txt").read_text()
    assert "16px" in table and "batches per epoch" in table
    # evaluation: images have no motion, videos do
    assert set(s1["eval_buckets"]) == {"1x8x8", "1x16x16"}
    assert all("motion" not in e for e in s1["eval_buckets"].values())
    curve = [json.loads(ln) for ln in (root / "run" / "stage1" / "eval_curve.jsonl").read_text().splitlines()]
    assert curve[0]["step"] == 2 and "shape" in curve[0] and "motion" not in curve[0]  # mid-stage, images only
    assert "motion" in s3["eval_buckets"]["8x12x24"] and "motion" not in s3["eval_buckets"]["1x16x16"]
    grid = root / "run" / "stage3" / "samples" / "8x12x24" / "grid.png"
    assert grid.is_file()


def test_stage2_starts_as_the_stage1_image_model_applied_frame_by_frame(schedule):
    from vidjax.checkpoint import restore_model
    from vidjax.models.t2v import build_model
    from vidjax.training.schedule import stage_configs
    from vidjax.training.warmstart import copy_weights, init_from

    root, c, _ = schedule
    _, image_model, _ = restore_model(root / "run" / "stage1", ema=True)
    stage2 = dict(stage_configs(c))["stage2"]
    stage2.train.init_from = str(root / "run" / "stage1")
    stage2.text.dim, stage2.text.max_length = c.text.dim, c.text.max_length
    video_model = build_model(stage2, nnx.Rngs(1), latent_channels=3)
    init_from(video_model, stage2, None)
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (2, 4, 8, 8, 3))
    t = jnp.array([100.0, 700.0])
    cond = {"ids": jax.random.randint(k[1], (2, c.text.max_length), 1, 50), "mask": jnp.ones((2, c.text.max_length),
                                                                                               bool)}
    whole = video_model(x, t, cond)
    per_frame = jnp.concatenate([image_model(x[:, i : i + 1], t, cond) for i in range(4)], axis=1)
    scale = float(jnp.abs(per_frame).max())
    assert scale > 0 and float(jnp.abs(whole - per_frame).max()) <= 1e-5 * scale
    # the stage-1 model's temporal attention stayed at zero (frozen): its output on a video is also per frame
    assert float(jnp.abs(image_model(x, t, cond) - per_frame).max()) <= 1e-5 * scale

    # the same with an image model far from initialisation (every non-temporal tensor randomised, as after a
    # long stage 1): the stage-2 model built by the same copy still equals it frame by frame, to 1e-5
    graphdef, params, rest = nnx.split(image_model, nnx.Not(nnx.PathContains("attn_temp")), ...)
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape, p.dtype), params)
    image_model = nnx.merge(graphdef, params, rest)
    video_model = build_model(stage2, nnx.Rngs(2), latent_channels=3)
    report = copy_weights(image_model, video_model, reset=("attn_temp",))
    assert report["new"] and all("attn_temp" in n for n in report["new"])
    whole = video_model(x, t, cond)
    per_frame = jnp.concatenate([image_model(x[:, i : i + 1], t, cond) for i in range(4)], axis=1)
    assert float(jnp.abs(per_frame).mean()) > 0.05
    np.testing.assert_allclose(np.asarray(whole), np.asarray(per_frame), atol=1e-5, rtol=1e-5)


def test_rerun_redoes_no_finished_stage(schedule):
    root, c, summary = schedule
    before = {n: (root / "run" / n / "summary.json").stat().st_mtime for n in ("stage1", "stage2", "stage3")}
    again = run(c, root / "run")
    assert again["stages"] == summary["stages"]
    assert {n: (root / "run" / n / "summary.json").stat().st_mtime for n in before} == before


def test_a_stage_stopped_after_its_last_checkpoint_is_still_evaluated(schedule, tmp_path):
    """Killed between the final checkpoint and the summary: the rerun restores the last step and evaluates."""
    from vidjax.training.diffusion import DiffusionTask
    from vidjax.training.loop import fit
    from vidjax.training.schedule import stage_configs

    root, c, summary = schedule
    shutil.copytree(root / "run" / "stage1", tmp_path / "stage1")
    (tmp_path / "stage1" / "summary.json").unlink()
    c1 = dict(stage_configs(c))["stage1"]
    again = fit(DiffusionTask(c1), c1, tmp_path / "stage1")
    assert again["resumed_from"] == 4 and again["step_compilations"] == 0
    assert again["eval_buckets"].keys() == summary["stages"]["stage1"]["eval_buckets"].keys()
    assert again["eval"] == summary["stages"]["stage1"]["eval"]  # the same EMA weights, the same samples


def _metrics_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigkill_inside_stage2_resumes_with_identical_losses_and_keeps_stage1(schedule, tmp_path):
    root, _, _ = schedule
    flags = ["--config", CONFIG, f"--config.data.root={root / 'data'}", "--config.progress=false",
             "--config.stages.stage2.train.steps=12", "--config.stages.stage3.train.steps=1",
             "--config.sample.num_prompts=0"]
    want = losses(root / "run" / "stage2")  # the uninterrupted schedule's stage 2
    assert sorted(want) == list(range(1, 13))
    work = tmp_path / "killed"
    shutil.copytree(root / "run" / "stage1", work / "stage1")  # the same finished stage 1

    stage1_summary = (work / "stage1" / "summary.json").stat().st_mtime
    proc = subprocess.Popen([sys.executable, "-m", "vidjax.train", *flags, f"--workdir={work}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = 3 + int(np.random.default_rng(int(time.time())).integers(0, 6))  # a random point in stage 2
    ckpts = work / "stage2" / "checkpoints"

    def saved() -> bool:  # a finished checkpoint (orbax renames it from a temporary name when complete)
        return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())

    deadline = time.time() + 300
    while (_metrics_rows(work / "stage2" / "metrics.jsonl") < target or not saved()) and proc.poll() is None:
        assert time.time() < deadline, "stage 2 did not start"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "stage2" / "summary.json").exists(), "stage 2 finished before the kill"
    r = train_cli(*flags, f"--workdir={work}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage1" in r.stderr and "already trained for 4 steps" in r.stderr  # stage 1 not redone
    assert "resuming from checkpoint at step" in r.stderr
    assert (work / "stage1" / "summary.json").stat().st_mtime == stage1_summary
    got = losses(work / "stage2")
    assert sorted(got) == list(range(1, 13))
    for s in range(1, 13):
        assert got[s] == pytest.approx(want[s], rel=1e-6), (s, got[s], want[s])


def test_init_from_missing_or_another_architecture_is_one_line(schedule, tmp_path):
    root, _, _ = schedule
    base = ["--config", f"{CONFIG},stage3", f"--config.data.root={root / 'data'}", "--config.progress=false"]
    r = train_cli(*base, f"--config.train.init_from={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'a'}")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "config.train.init_from" in r.stderr and "nowhere" in r.stderr
    r = train_cli(*base, f"--config.train.init_from={root / 'run' / 'stage2'}", "--config.model.hidden=48",
                  f"--workdir={tmp_path / 'b'}")
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "differ in shape" in line[0] and "48" in line[0], r.stderr
    assert not (tmp_path / "b" / "checkpoints").exists()  # stopped before training


def test_bucket_table_errors_are_one_line(schedule, tmp_path):
    root, _, _ = schedule
    from vidjax.data.bucketed import bucket_config_of
    from vidjax.errors import ConfigError

    c = load_config(f"{CONFIG},stage3")
    c.data.bucket_config = {"17px": {1: (1.0, 8)}}
    with pytest.raises(ConfigError, match=r"bucket_config\['17px'\]: unknown resolution name; expected one of .*16px"):
        bucket_config_of(c)
    c.data.bucket_config = {"16px": {8: (1.0, 0)}}
    with pytest.raises(ConfigError, match=r"\['16px'\]\[8\]: the batch size must be a positive int"):
        bucket_config_of(c)
    c.data.bucket_config = {"16px": {8: (1.0, 6)}}
    with pytest.raises(ConfigError, match="does not split over the 4 data-parallel devices"):
        bucket_config_of(c, data_shards=4)
    c.data.bucket_config, c.data.bucket_batch = {"16px": {8: (1.0, 3)}}, "per_device"
    assert bucket_config_of(c, data_shards=4).batch_size("16px", 8) == 12  # Open-Sora's per-GPU sizes
    c.data.bucket_config = {}
    with pytest.raises(ConfigError, match="the bucket table is empty"):
        bucket_config_of(c)
    # a frame size the patch cannot divide stops the run before training, naming the bucket
    c = load_config(f"{CONFIG},stage3")
    c.data.resolutions = {"8px": [(8, 8)], "16px": [(16, 16), (10, 20)]}
    from vidjax.training.diffusion import DiffusionTask
    from vidjax.training.loop import fit

    c.progress, c.data.root = False, str(root / "data")
    with pytest.raises(ConfigError, match=r"bucket 16px/8/0.50: frame size 10×20 is not a multiple of 4×4 pixels"):
        fit(DiffusionTask(c), c, tmp_path / "c")
