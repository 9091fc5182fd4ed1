"""The training entry point end to end: run, outputs, resume after SIGKILL, and one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import losses, quick

from configs.shapes_tiny import get_config
from vidjax import train

REPO = Path(__file__).resolve().parents[1]


def quick_config(tmp_path, **over):
    return quick(get_config("quick"), tmp_path, **over)


def cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run([sys.executable, "-m", "vidjax.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 8-step run (checkpoints every 2 steps) that the resume test compares against."""
    tmp = tmp_path_factory.mktemp("full")
    c = quick_config(tmp, **{"train.steps": 8, "train.ckpt_every": 2})
    summary = train.run(c, tmp / "work")
    return tmp, c, summary


def test_run_writes_everything(full_run):
    tmp, _, summary = full_run
    work = tmp / "work"
    assert summary["steps"] == 8 and summary["resumed_from"] == 0
    assert sorted(losses(work)) == list(range(1, 9))
    assert all(np.isfinite(v) for v in losses(work).values())
    samples = sorted((work / "samples").glob("*.mp4"))
    assert len(samples) == 4 and (work / "samples" / "grid.png").stat().st_size > 0
    assert (work / "loss.png").exists() and list((work / "tb").glob("events.*"))
    assert (work / "eval_curve.png").stat().st_size > 0  # accuracy versus training minutes
    ev = json.loads((work / "samples" / "eval_train.json").read_text())
    assert ev["summary"]["n"] == 4 and set(ev["summary"]) >= {"colour", "shape", "motion", "all"}
    assert (work / "checkpoints" / "8").is_dir()


def test_stage0_trains_the_vae_then_the_denoiser_in_its_latents(tmp_path):
    """The default pipeline's shape: ``vae.type="checkpoint"`` with a ``train_config`` trains that VAE on the
    same clips first, then the denoiser on its latents; once the VAE is there, it is not trained again."""
    from ml_collections import ConfigDict

    c = quick_config(tmp_path, **{"train.steps": 2, "train.ckpt_every": 2})
    c.vae = ConfigDict(dict(type="checkpoint", path=str(tmp_path / "vae"),
                            train_config=f"{REPO / 'configs/vae_shapes.py'}:quick"))
    c.model.patch = (1, 1, 1)
    summary = train.run(c, tmp_path / "work")
    assert summary["vae_stage"]["steps"] == 6 and (tmp_path / "vae" / "vae_weights").is_dir()
    assert (tmp_path / "vae" / "eval_curve.jsonl").exists() or (tmp_path / "vae" / "summary.json").exists()
    assert summary["steps"] == 2 and summary["eval"]["n"] == 4
    assert train.prepare_vae(c) is None  # already trained
    meta = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert meta["vae_stage"]["psnr"] == summary["vae_stage"]["psnr"]
    # latent precompute (data.cache_latents, on by default) trains on exactly what encoding every batch gives
    assert "latent precompute: 64 clips encoded" in (tmp_path / "work" / "train.log").read_text()
    c.data.cache_latents = False
    train.run(c, tmp_path / "online")
    assert "latent precompute" not in (tmp_path / "online" / "train.log").read_text()
    cached, online = losses(tmp_path / "work"), losses(tmp_path / "online")
    assert sorted(cached) == sorted(online) == [1, 2]
    assert all(abs(cached[k] - online[k]) <= 1e-5 * abs(online[k]) for k in cached), (cached, online)


def test_config_variants_combine():
    assert get_config().vae.type == "checkpoint" and tuple(get_config().model.patch) == (1, 1, 1)
    from vidjax.config import load_config

    stage0 = load_config(str(REPO / get_config().vae.train_config))  # the default's stage-0 VAE schedule
    assert stage0.name == "vae_shapes_stage0" and stage0.train.batch_size == 4 and stage0.train.steps == 5000
    c = get_config("pixels,iddpm")
    assert c.vae.type == "raw" and tuple(c.model.patch) == (2, 4, 4)
    assert c.diffusion.name == "iddpm" and c.model.learn_sigma and c.name == "shapes_tiny_pixels_iddpm"
    assert get_config("iddpm").vae.type == "checkpoint"
    with pytest.raises(ValueError, match="unknown variant"):
        get_config("pixel")


def test_sigkill_then_rerun_resumes_with_identical_losses(full_run, tmp_path):
    _, c, _ = full_run
    work = tmp_path / "work"
    args = ["--config", "configs/shapes_tiny.py:quick", f"--workdir={work}", f"--config.data.root={c.data.root}",
            "--config.train.steps=8", "--config.train.ckpt_every=2", "--config.progress=false"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.Popen([sys.executable, "-m", "vidjax.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "checkpoints" / "4").is_dir():  # a committed checkpoint, mid-run
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert killed_at < 8

    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from checkpoint at step {killed_at}" in r.stderr
    want, got = losses(full_run[0] / "work"), losses(work)
    assert sorted(got) == list(range(1, 9))
    for s in range(1, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), (s, got[s], want[s])


def test_unknown_config_key_is_one_line():
    r = cli("--config", "configs/shapes_tiny.py", "--config.train.stepz=3", timeout=120)
    assert r.returncode == 2
    assert "stepz" in r.stderr and "steps" in r.stderr and "Traceback" not in r.stderr


def test_resolution_not_divisible_by_patch(tmp_path):
    c = quick_config(tmp_path, **{"data.height": 30})
    with pytest.raises(ValueError, match=r"not divisible by the patch size config.model.patch=\(2, 4, 4\)"):
        train.run(c, tmp_path / "w")
    r = cli("--config", "configs/shapes_tiny.py:quick", "--config.data.height=30", f"--workdir={tmp_path}/w2",
            timeout=120)
    assert r.returncode == 2 and "not divisible by the patch size" in r.stderr and "Traceback" not in r.stderr


def test_missing_video_in_caption_file(tmp_path):
    cap = tmp_path / "captions.jsonl"
    cap.write_text(json.dumps({"file": "nope.mp4", "captions": ["a red circle moving left"]}) + "\n")
    r = cli("--config", "configs/shapes_tiny.py:quick", f"--config.data.captions={cap}", f"--workdir={tmp_path}/w",
            timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nope.mp4" in r.stderr and "does not exist" in r.stderr


def test_corrupt_clip_skipped_training_continues(full_run, tmp_path):
    _, c, _ = full_run
    data = Path(c.data.root)
    lines = (data / "captions.jsonl").read_text().splitlines()[:16]
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not an mp4 at all")
    rows = [json.loads(ln) for ln in lines]
    for r in rows:
        r["file"] = str(data / r["file"])
    rows.append({"file": str(bad), "captions": ["a red square moving up"]})
    cap = tmp_path / "captions.jsonl"
    cap.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c2 = quick_config(tmp_path, **{"data.captions": str(cap), "train.steps": 2, "sample.num_prompts": 0})
    summary = train.run(c2, tmp_path / "w")
    assert summary["steps"] == 2
    assert str(bad) in (tmp_path / "w" / "skipped_clips.txt").read_text()


def test_sample_cli_from_workdir(full_run, tmp_path):
    from vidjax import sample
    from vidjax.checkpoint import restore_model

    work = full_run[0] / "work"
    config, model, step = restore_model(work, ema=False)
    assert step == 8 and config.model.depth == 2
    y_null = model.dit.y_embedder.y_embedding[...]
    assert y_null.shape == (config.text.max_length, config.text.dim) and float(abs(y_null).sum()) > 0
    out = tmp_path / "one.mp4"
    sample.main(["--workdir", str(work), "--prompt", "a blue square moving up", "--out", str(out), "--steps", "3",
                 "--seed", "1"])
    assert out.stat().st_size > 0 and out.with_suffix(".png").stat().st_size > 0
    from vidjax.data.video_io import read_video

    assert read_video(out).shape == (config.data.frames, config.data.height, config.data.width, 3)
    with pytest.raises(SystemExit):
        sample.main(["--workdir", str(tmp_path / "nothing"), "--prompt", "x", "--out", str(out)])


def test_write_metrics_logs_rows_and_stops_on_nan(tmp_path):
    """Both training tasks log through one ``write_metrics``: rows up to a non-finite loss are kept, then a
    one-line error (a USER_ERRORS type) names the step."""
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as mf:
        rows = train.write_metrics([(1, {"loss": np.float32(0.5)}), (2, {"loss": 0.25, "psnr": 20.0})], mf, None)
        assert [r["step"] for r in rows] == [1, 2]
        with pytest.raises(FloatingPointError, match="at step 3"):
            train.write_metrics([(3, {"loss": float("nan")})], mf, None)
    assert losses(tmp_path) == {1: 0.5, 2: 0.25}
    assert FloatingPointError in train.USER_ERRORS
