"""The training loop end to end (vidjax/training/): run, outputs, resume after SIGKILL / SIGTERM, damaged
checkpoints, the non-finite guard, gradient accumulation, retention, frozen T5 captions, and one-line errors."""

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
import optax
import pytest
from _helpers import losses, quick, tiny_t5_dir

from configs.shapes_tiny import get_config
from vidjax.errors import ConfigError, OutputError
from vidjax.training import run
from vidjax.training.diffusion import stage0_config
from vidjax.training.loop import Preemption, TrainingDiverged

REPO = Path(__file__).resolve().parents[1]


def quick_config(tmp_path, **over):
    return quick(get_config("quick"), tmp_path, **over)


def cli(*args, module="vidjax.train", timeout=300, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def stored(workdir, step: int, names=("params", "ema", "opt")) -> dict:
    """Items of a checkpoint, read as saved (no target structure)."""
    import orbax.checkpoint as ocp

    from vidjax.checkpoint import Checkpointer

    ck = Checkpointer(workdir)
    tree = ck.mngr.restore(step, args=ocp.args.Composite(**{n: ocp.args.StandardRestore() for n in names}))
    ck.close()
    return tree


def metric_rows(workdir) -> list[dict]:
    return [json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 8-step run (checkpoints every 2 steps, all kept) that the resume tests compare against."""
    tmp = tmp_path_factory.mktemp("full")
    c = quick_config(tmp, **{"train.steps": 8, "train.ckpt_every": 2, "train.keep_checkpoints": 10})
    summary = run(c, tmp / "work")
    return tmp, c, summary


def test_run_writes_everything(full_run):
    tmp, _, summary = full_run
    work = tmp / "work"
    assert summary["steps"] == 8 and summary["resumed_from"] == 0 and summary["nonfinite_steps"] == 0
    assert sorted(losses(work)) == list(range(1, 9))
    assert all(np.isfinite(v) for v in losses(work).values())
    samples = sorted((work / "samples").glob("*.mp4"))
    assert len(samples) == 4 and (work / "samples" / "grid.png").stat().st_size > 0
    assert (work / "loss.png").stat().st_size > 0 and list((work / "tb").glob("events.*"))
    assert (work / "eval_curve.png").stat().st_size > 0  # accuracy versus training minutes
    ev = json.loads((work / "samples" / "eval_train.json").read_text())
    assert ev["summary"]["n"] == 4 and set(ev["summary"]) >= {"colour", "shape", "motion", "all"}
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6, 8]
    # throughput in the metrics at every log step (quick: log_every=1): tokens/s and MFU
    rows = metric_rows(work)
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1
    assert summary["step_compilations"] == 1  # one batch shape, one compile


def test_rerunning_a_finished_run_keeps_its_summary(full_run):
    tmp, c, summary = full_run
    before = (tmp / "work" / "summary.json").read_text()
    again = run(c, tmp / "work")
    assert again == json.loads(before) and "eval" in again
    assert (tmp / "work" / "summary.json").read_text() == before


def test_stage0_trains_the_vae_then_the_denoiser_in_its_latents(tmp_path, monkeypatch):
    """The default pipeline's shape: ``vae.type="checkpoint"`` with a ``train_config`` trains that VAE on the
    same clips first, then the denoiser on its latents; once the VAE is there, it is not trained again."""
    from ml_collections import ConfigDict

    c = quick_config(tmp_path, **{"train.steps": 2, "train.ckpt_every": 2})
    c.vae = ConfigDict(dict(type="checkpoint", path=str(tmp_path / "vae"),
                            train_config=f"{REPO / 'configs/vae_shapes.py'}:quick"))
    c.model.patch = (1, 1, 1)
    summary = run(c, tmp_path / "work")
    assert summary["vae_stage"]["steps"] == 6 and (tmp_path / "vae" / "vae_weights").is_dir()
    assert json.loads((tmp_path / "vae" / "summary.json").read_text())["task"] == "vae"
    assert summary["steps"] == 2 and summary["eval"]["n"] == 4
    assert stage0_config(c) is None  # already trained
    meta = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert meta["vae_stage"]["psnr"] == summary["vae_stage"]["psnr"]
    # latent precompute (data.cache_latents, on by default) trains on exactly what encoding every batch gives
    assert "latent precompute: 64 clips encoded" in (tmp_path / "work" / "train.log").read_text()
    # the precompute's encoder compiles with the run's XLA options (config.train.cpu_compiler_options), as the
    # train step does: XLA's CPU library fusions off -> no YNNPACK fusion in it
    from vidjax.training import loop

    compiled = []  # (function, the run's options, what Run.jit made of it)
    real_jit = loop.Run.jit

    def spy(self, fn, **kw):
        compiled.append((fn, self.compiler_options, real_jit(self, fn, **kw)))
        return compiled[-1][2]

    monkeypatch.setattr(loop.Run, "jit", spy)
    c.train.cpu_compiler_options = {"xla_cpu_experimental_ynn_fusion_type": ""}
    run(c, tmp_path / "off")
    encoders = [(opts, jitted) for fn, opts, jitted in compiled if getattr(fn, "__name__", "") == "encode"]
    assert [opts for opts, _ in encoders] == [{"xla_cpu_experimental_ynn_fusion_type": ""}]
    x = np.zeros((1, c.data.frames, c.data.height, c.data.width, 3), np.float32)
    assert "__ynn_fusion" not in encoders[0][1].lower(x).compile().as_text()
    assert losses(tmp_path / "off").keys() == losses(tmp_path / "work").keys()
    c.train.cpu_compiler_options = {}
    c.data.cache_latents = False
    online = run(c, tmp_path / "online")
    assert online["vae_stage"]["psnr"] == summary["vae_stage"]["psnr"]  # read back from the VAE's own summary
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
    small = {v: load_config(f"{REPO / 'configs/shapes_small.py'}{v}").name for v in ("", ":iddpm", ":pixels")}
    assert len(set(small.values())) == 3, small  # every variant has its own workdir


def _train_args(c, work, steps=8, ckpt_every=2):
    return ["--config", "configs/shapes_tiny.py:quick", f"--workdir={work}", f"--config.data.root={c.data.root}",
            f"--config.train.steps={steps}", f"--config.train.ckpt_every={ckpt_every}", "--config.progress=false"]


def _start(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.Popen([sys.executable, "-m", "vidjax.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, cond, seconds=240):
    deadline = time.time() + seconds
    while not cond():
        assert proc.poll() is None, "training finished before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.02)


def _assert_same_losses(work, reference):
    want, got = losses(reference), losses(work)
    assert sorted(got) == list(range(1, 9))
    for s in range(1, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), (s, got[s], want[s])


def test_sigkill_then_rerun_resumes_with_identical_losses(full_run, tmp_path):
    _, c, _ = full_run
    work = tmp_path / "work"
    args = _train_args(c, work)
    proc = _start(args)
    _wait_for(proc, lambda: (work / "checkpoints" / "4").is_dir())  # a committed checkpoint, mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert killed_at < 8

    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from checkpoint at step {killed_at}" in r.stderr
    _assert_same_losses(work, full_run[0] / "work")


def test_sigterm_saves_a_checkpoint_and_exits_0_then_resumes_losing_nothing(full_run, tmp_path):
    """Preemption: SIGTERM between periodic checkpoints (ckpt_every=100) still writes one, at the step reached."""
    _, c, _ = full_run
    work = tmp_path / "work"
    args = _train_args(c, work, ckpt_every=100)
    proc = _start(args)
    _wait_for(proc, lambda: (work / "metrics.jsonl").is_file() and len(metric_rows(work)) >= 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    saved = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 8 and f"checkpoint saved at step {saved[0]}" in err
    assert '"preempted": true' in out
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from checkpoint at step {saved[0]}" in r.stderr
    _assert_same_losses(work, full_run[0] / "work")


def test_sigint_is_caught_by_preemption():
    with Preemption() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the loop checkpoints and stops instead
        assert stop.requested == "SIGINT" and stop.agreed()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_damaged_checkpoints_fall_back_to_the_newest_readable_step(full_run, tmp_path):
    """A truncated array file (step 8), a missing meta item (step 6) and a garbage manifest (step 4): the run
    sets each aside, says so, and resumes from step 2, training on with the same losses."""
    src, c, _ = full_run
    work = tmp_path / "work"
    shutil.copytree(src / "work" / "checkpoints", work / "checkpoints")
    shutil.copy(src / "work" / "metrics.jsonl", work / "metrics.jsonl")  # logged up to step 8
    ck = work / "checkpoints"
    arrays = sorted((ck / "8" / "params").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    big = arrays[-1]
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 3])
    shutil.rmtree(ck / "6" / "meta")
    for manifest in (ck / "4").rglob("manifest.ocdbt"):
        manifest.write_bytes(b"garbage" * 10)
    r = cli(*_train_args(c, work))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from checkpoint at step 2" in r.stderr
    for step in (8, 6, 4):
        assert f"checkpoint step {step} is unreadable" in r.stderr and (ck / f"unreadable_{step}").is_dir()
    assert "Traceback" not in r.stderr and "Event loop" not in r.stderr  # one line per damaged step
    _assert_same_losses(work, src / "work")


def test_resuming_with_another_model_is_one_line(full_run, tmp_path):
    src, c, _ = full_run
    work = tmp_path / "work"
    shutil.copytree(src / "work" / "checkpoints", work / "checkpoints")
    r = cli(*_train_args(c, work, steps=10), "--config.model.hidden=32")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
    assert "model.hidden=64" in r.stderr and "model.hidden=32" in r.stderr and "--workdir" in r.stderr


def test_nonfinite_steps_are_skipped_and_stop_the_run(tmp_path):
    """lr=1e30: the parameters blow up, every later step is NaN and skipped (counted in the metrics), and
    after max_nonfinite such steps in a row the run stops with a message; no checkpoint holds NaN/Inf."""
    c = quick_config(tmp_path, **{"train.lr": 1e30, "train.steps": 12, "train.ckpt_every": 2,
                                  "train.keep_checkpoints": 10, "train.max_nonfinite": 3, "sample.num_prompts": 0})
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        run(c, tmp_path / "w")
    rows = metric_rows(tmp_path / "w")
    bad = [r for r in rows if r["nonfinite"]]
    assert len(bad) == 3 and all(r["loss"] is None or not np.isfinite(r["loss"]) for r in bad)
    from vidjax.checkpoint import Checkpointer

    steps = Checkpointer(tmp_path / "w").all_steps()
    assert len(steps) >= 2
    for step in steps:
        tree = stored(tmp_path / "w", step)
        for name in ("params", "ema", "opt"):
            assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree[name])
                       if np.issubdtype(np.asarray(x).dtype, np.floating)), (step, name)


def test_guard_leaves_params_optimizer_and_ema_untouched():
    from vidjax.training.state import update

    tx = optax.adam(0.1)
    params = {"w": jnp.ones(3)}
    state = {"params": params, "ema": {"w": jnp.full(3, 0.5)}, "opt": tx.init(params), "rest": {}}

    def loss_fn(p, batch, rng):
        return jnp.sum(p["w"] * batch["x"]), ({}, None)

    new, m, _ = update(state, loss_fn, {"x": jnp.array([1.0, jnp.nan, 2.0])}, jax.random.key(0), tx, ema_decay=0.9)
    assert float(m["nonfinite"]) == 1.0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    new, m, _ = update(state, loss_fn, {"x": jnp.ones(3)}, jax.random.key(0), tx, ema_decay=0.9)
    assert float(m["nonfinite"]) == 0.0 and not np.allclose(new["params"]["w"], 1.0)


def test_gradient_accumulation_equals_the_full_batch():
    """4 micro-batches of 4 give the gradient, loss and update of one batch of 16 (a deterministic loss)."""
    from vidjax.training.state import grads_of, update

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32), "b": jnp.zeros(3)}
    batch = {"x": jnp.asarray(rng.standard_normal((16, 5)), jnp.float32),
             "y": jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)}

    def loss_fn(p, b, r):
        err = jnp.tanh(b["x"] @ p["w"] + p["b"]) - b["y"]
        return jnp.mean(err**2), ({"mae": jnp.mean(jnp.abs(err))}, None)

    key = jax.random.key(0)
    full, accum = grads_of(loss_fn, params, batch, key, 1), grads_of(loss_fn, params, batch, key, 4)
    np.testing.assert_allclose(accum[0], full[0], rtol=1e-5)
    np.testing.assert_allclose(accum[1]["mae"], full[1]["mae"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(accum[3]), jax.tree.leaves(full[3]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    tx = optax.adamw(1e-2)
    state = {"params": params, "ema": params, "opt": tx.init(params), "rest": {}}
    s1, _, _ = update(state, loss_fn, batch, key, tx, ema_decay=0.9)
    s4, _, _ = update(state, loss_fn, batch, key, tx, ema_decay=0.9, micro_batches=4)
    for a, b in zip(jax.tree.leaves(s4["params"]), jax.tree.leaves(s1["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_and_grad_accum_train_finite(tmp_path):
    """model.dtype=bfloat16 computes in bf16 with float32 parameters and optimizer state; with grad_accum=2."""
    c = quick_config(tmp_path, **{"model.dtype": "bfloat16", "train.grad_accum": 2, "train.steps": 3,
                                  "train.ckpt_every": 3, "sample.num_prompts": 0})
    summary = run(c, tmp_path / "w")
    assert summary["nonfinite_steps"] == 0 and all(np.isfinite(v) for v in losses(tmp_path / "w").values())
    tree = stored(tmp_path / "w", 3)
    dtypes = {np.asarray(x).dtype for name in ("params", "ema") for x in jax.tree.leaves(tree[name])}
    assert dtypes == {np.dtype(np.float32)}
    opt_dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(tree["opt"]) if np.asarray(x).ndim}
    assert opt_dtypes == {np.dtype(np.float32)}


def test_retention_keeps_the_last_k_and_every_nth(tmp_path):
    from ml_collections import ConfigDict

    from vidjax.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path, keep=2, keep_every=4, async_save=False)
    tree = {"w": np.ones(2, np.float32)}
    for step in range(1, 11):
        ck.save(step, params=tree, ema=tree, opt=tree, rest=tree, data_iter=None, config=ConfigDict({"a": 1}))
    ck.close()
    assert Checkpointer(tmp_path).all_steps() == [4, 8, 9, 10]


@pytest.mark.parametrize("key,value", [("train.steps", 0), ("train.steps", -3), ("train.ckpt_every", 0),
                                       ("train.log_every", 0), ("train.grad_accum", 3)])
def test_bad_train_settings_are_config_errors(tmp_path, key, value):
    c = quick_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        run(c, tmp_path / "w")


def test_unwritable_workdir_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    c = quick_config(tmp_path)
    with pytest.raises(OutputError, match="is a file"):
        run(c, tmp_path / "file" / "w")
    assert not (tmp_path / "data").exists()  # nothing generated


def test_resolution_not_divisible_by_patch(tmp_path):
    c = quick_config(tmp_path, **{"data.height": 30})
    with pytest.raises(ValueError, match=r"not divisible by the patch size config.model.patch=\(2, 4, 4\)"):
        run(c, tmp_path / "w")
    r = cli("--config", "configs/shapes_tiny.py:quick", "--config.data.height=30", f"--workdir={tmp_path}/w2",
            timeout=120)
    assert r.returncode == 2 and "not divisible by the patch size" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_and_missing_clips_skipped_training_continues(full_run, tmp_path):
    _, c, _ = full_run
    data = Path(c.data.root)
    lines = (data / "captions.jsonl").read_text().splitlines()[:16]
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not an mp4 at all")
    rows = [json.loads(ln) for ln in lines]
    for r in rows:
        r["file"] = str(data / r["file"])
    rows.append({"file": str(bad), "captions": ["a red square moving up"]})
    rows.append({"file": str(tmp_path / "nope.mp4"), "captions": ["a red square moving down"]})  # no such file
    cap = tmp_path / "captions.jsonl"
    cap.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c2 = quick_config(tmp_path, **{"data.captions": str(cap), "train.steps": 2, "sample.num_prompts": 0})
    summary = run(c2, tmp_path / "w")
    assert summary["steps"] == 2
    skipped = (tmp_path / "w" / "skipped_clips.txt").read_text()
    assert str(bad) in skipped and f"{tmp_path / 'nope.mp4'}\t" in skipped and "not found" in skipped


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


def test_frozen_t5_captions_train_and_sample(full_run, tmp_path):
    """A tiny random T5 saved by transformers (sentencepiece tokenizer trained here) conditions training and
    sampling; each distinct caption is embedded once into the disk cache, equal to a fresh encoding."""
    from vidjax.data.shapes import caption, eval_prompts
    from vidjax.models.text.conditioner import build_text_conditioner

    _, c, _ = full_run
    captions = [caption(*t) for t in eval_prompts(48, "train")]
    t5 = tiny_t5_dir(tmp_path / "t5", captions, d_model=24)
    work = tmp_path / "work"
    r = cli(*_train_args(c, work, steps=3, ckpt_every=3), "--config.text.encoder=t5", f"--config.text.path={t5}",
            "--config.text.max_length=12")
    assert r.returncode == 0, r.stderr[-3000:]
    cache = work / "cache" / "text"
    files = list(cache.rglob("*.npz"))
    seen = {cap for ln in (Path(c.data.root) / "captions.jsonl").read_text().splitlines()
            for cap in json.loads(ln)["captions"]}
    cached = build_text_conditioner({"encoder": "t5", "path": str(t5), "max_length": 12, "cache_dir": str(cache)})
    assert all(cached.cache_path(t).is_file() for t in seen)  # every training caption, embedded before training
    assert len(files) <= len(seen) + 4  # plus at most the 4 evaluation prompts
    cond = build_text_conditioner({"encoder": "t5", "path": str(t5), "max_length": 12})
    some = sorted(seen)[:5]
    y, mask, _ = cond.encode(some)
    yc, mc = cached.cached(some)
    np.testing.assert_allclose(yc, np.asarray(y), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(mc, np.asarray(mask))
    stored = json.loads((work / "summary.json").read_text())
    assert stored["steps"] == 3 and stored["eval"]["n"] == 4
    # sampling from another folder uses the same encoder (the paths in the checkpoint are absolute)
    out = tmp_path / "elsewhere"
    out.mkdir()
    r = cli("--workdir", str(work), "--prompt", "a green triangle moving left", "--out", str(out / "s.mp4"),
            "--steps", "2", module="vidjax.sample", cwd=out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "s.mp4").stat().st_size > 0


def test_missing_text_encoder_directory_is_one_line(full_run, tmp_path):
    _, c, _ = full_run
    r = cli(*_train_args(c, tmp_path / "w"), "--config.text.encoder=t5", f"--config.text.path={tmp_path}/nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{tmp_path}/nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_training_package_import_graph_is_acyclic():
    """No module of vidjax imports (directly or through others) a module that imports it back."""
    import ast

    root = REPO / "vidjax"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                    graph[name].add(t)
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, n]))
            if n not in state:
                visit(n, [*stack, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_export_sample_and_evaluate_work_from_any_folder(tmp_path):
    """A run started in folder a/ with a relative VAE path (stage 0 trains it there) is exported, sampled and
    evaluated from folder b/: the checkpoint stores absolute paths."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    r = cli("--config", str(REPO / "configs/shapes_tiny.py"), "--workdir=work", "--config.data.root=data",
            "--config.data.num_clips=64", "--config.train.steps=2", "--config.train.ckpt_every=2",
            "--config.train.batch_size=8", "--config.model.depth=2", "--config.model.hidden=64",
            "--config.progress=false", "--config.sample.num_prompts=4", "--config.sample.batch_size=4",
            "--config.sample.eval_every=0", "--config.diffusion.sample_steps=4", "--config.vae.path=vae_here",
            f"--config.vae.train_config={REPO / 'configs/vae_shapes.py'}:quick", cwd=a)
    assert r.returncode == 0, r.stderr[-3000:]
    work = a / "work"
    r = cli("--workdir", str(work), "--ema", "--out", "m.safetensors", module="vidjax.export", cwd=b)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (b / "m.safetensors").stat().st_size > 0
    r = cli("--workdir", str(work), "--prompt", "a red circle moving left", "--out", "s.mp4", "--steps", "2",
            module="vidjax.sample", cwd=b)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("--workdir", str(work), "--num_prompts", "4", module="vidjax.evaluate", cwd=b)
    assert r.returncode == 0, r.stderr[-2000:]


def test_training_reads_a_packed_dataset(tmp_path):
    """shapes clips -> python -m vidjax.data ingest / pack -> data.packed: the loop trains on the shards (raw H.264
    clips, VAE every step) and resumes its grain iterator from the checkpoint."""
    from vidjax.data.pipeline.ingest import ingest
    from vidjax.data.pipeline.pack import pack
    from vidjax.data.shapes import generate

    cap = generate(tmp_path / "shapes", num_clips=16, frames=8, height=32, width=32, progress=False)
    ingest(cap, tmp_path / "videos.csv", progress=False)
    pack(tmp_path / "videos.csv", tmp_path / "packed", buckets="8x32x32", shard_size=8, progress=False)
    c = quick_config(tmp_path, **{"data.packed": str(tmp_path / "packed"), "train.steps": 4, "train.ckpt_every": 2,
                                  "sample.num_prompts": 0})
    summary = run(c, tmp_path / "w")
    assert summary["steps"] == 4 and all(np.isfinite(v) for v in losses(tmp_path / "w").values())
    assert not (tmp_path / "w" / "skipped_clips.txt").exists()  # the caption-file path was not used
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "4")  # resume from step 2: the same batches again
    c2 = quick_config(tmp_path, **{"data.packed": str(tmp_path / "packed"), "train.steps": 4, "train.ckpt_every": 2,
                                   "sample.num_prompts": 0})
    full = losses(tmp_path / "w")
    resumed = run(c2, tmp_path / "w")
    assert resumed["resumed_from"] == 2 and losses(tmp_path / "w") == pytest.approx(full, rel=1e-6)
    bad = quick_config(tmp_path, **{"data.packed": str(tmp_path / "packed"), "data.height": 64})
    with pytest.raises(ConfigError, match="do not include the training size"):
        run(bad, tmp_path / "w3")


def test_cpu_compiler_options_reach_the_train_step_and_bad_ones_are_one_line(tmp_path, monkeypatch):
    from vidjax.parallel.mesh import make_mesh
    from vidjax.training import loop

    # the jitted step compiles with the options: XLA's CPU library fusions off -> no YNNPACK fusion left
    mesh = make_mesh(None, devices=jax.devices()[:1])
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def step(state, batch, rng):  # one gradient step of a 2-layer tanh MLP
        loss, g = jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(batch["x"] @ w) @ w))(state["w"])
        return {"w": state["w"] - 1e-3 * g}, {"loss": loss}

    args = ({"w": jnp.ones((128, 128))}, {"x": jnp.ones((256, 128))}, 0)
    texts = {}
    for name, opts in (("default", None), ("off", {"xla_cpu_experimental_ynn_fusion_type": ""})):
        jitted = loop.jit_train_step(step, {"w": rep}, {"x": 2}, mesh, 0, compiler_options=opts)
        texts[name] = jitted.lower(*args).compile().as_text()
    assert "__ynn_fusion" not in texts["off"]
    if "__ynn_fusion" in texts["default"]:  # this jaxlib hands dots to YNNPACK by default: the option changed that
        assert texts["off"] != texts["default"]

    # the loop passes config.train.cpu_compiler_options to the step it jits
    seen = []
    real = loop.jit_train_step
    monkeypatch.setattr(loop, "jit_train_step", lambda *a, **k: seen.append(a[6:] + tuple(k.values())) or real(*a, **k))
    opts = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
    c = quick_config(tmp_path, **{"train.steps": 1})
    c.train.cpu_compiler_options = opts
    run(c, tmp_path / "w")
    assert seen == [(opts,)]

    # a misspelt option stops the run before any data work, on one line naming the field
    c = quick_config(tmp_path / "bad")
    c.train.cpu_compiler_options = {"xla_cpu_no_such_option": "1"}
    with pytest.raises(ConfigError, match="config.train.cpu_compiler_options") as e:
        run(c, tmp_path / "bad" / "w")
    assert "\n" not in str(e.value) and not (tmp_path / "bad" / "data").exists()
