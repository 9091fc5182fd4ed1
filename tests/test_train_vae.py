"""The VAE training task end to end: outputs, falling loss, resume, held-out PSNR, loading the result."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import losses, quick
from flax import nnx

from configs.vae_shapes import get_config
from vidjax.models.vae import VQVAE, TemporalVAE, build_vae
from vidjax.models.vae.temporal import CausalConv3d
from vidjax.training import run
from vidjax.training import vae as train_vae


def quick_config(tmp_path, variant="quick", **over):
    c = get_config(variant)
    c.train.lr = 3e-3
    return quick(c, tmp_path, **over)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 8-step causal-VAE run with checkpoints at steps 4 and 8."""
    tmp = tmp_path_factory.mktemp("vae")
    c = quick_config(tmp, **{"train.steps": 8, "train.ckpt_every": 4, "eval.every": 4})
    summary = run(c, tmp / "work")
    return tmp, c, summary


def test_run_trains_and_writes_everything(full_run):
    tmp, _, summary = full_run
    work = tmp / "work"
    ls = losses(work)
    assert sorted(ls) == list(range(1, 9)) and all(np.isfinite(v) for v in ls.values())
    assert np.mean([ls[7], ls[8]]) < 0.7 * np.mean([ls[1], ls[2]]), ls  # it learns
    assert summary["compression"] == "4x8x8" and summary["latent"] == [2, 4, 4, 4]
    assert summary["eval_split"] == "heldout" and summary["eval_clips"] == 4
    assert np.isfinite(summary["psnr"]) and 0 < summary["ssim"] <= 1
    assert all(0 <= summary[f"detect_{k}"] <= 1 for k in ("colour", "shape", "motion", "all"))  # shapes: the ceiling
    assert json.loads((work / "summary.json").read_text()) == summary
    curve = [json.loads(ln) for ln in (work / "eval_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [4, 8] and curve[-1]["psnr"] == pytest.approx(summary["psnr"], abs=1e-3)
    assert (work / "checkpoints" / "4").is_dir() and (work / "checkpoints" / "8").is_dir()
    assert (work / "recon.png").stat().st_size > 0 and (work / "loss.png").exists() and list((work / "tb").glob("ev*"))
    assert json.loads((work / "vae_config.json").read_text())["type"] == "causal_vae"


def test_vae_task_runs_on_an_8_device_mesh_with_fsdp(full_run, tmp_path):
    """Stage 0 is data parallel / ZeRO-3 like the denoiser: on 8 CPU devices split data=4 × fsdp=2 it computes
    the losses of the 8-way data-parallel run (full_run, every device on ``data``)."""
    import jax
    from ml_collections import ConfigDict

    assert jax.device_count() == 8
    tmp, c, _ = full_run
    c2 = ConfigDict(c.to_dict())
    c2.mesh = ConfigDict(dict(data=4, fsdp=2))
    c2.eval.every = 0
    run(c2, tmp_path / "work")
    assert "mesh data=4 fsdp=2 sequence=1 tensor=1 (8 devices)" in (tmp_path / "work" / "train.log").read_text()
    want, got = losses(tmp / "work"), losses(tmp_path / "work")
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4), (k, got[k], want[k])


def test_resume_continues_with_identical_losses(full_run, tmp_path):
    tmp, c, summary = full_run
    work = tmp_path / "work"
    shutil.copytree(tmp / "work", work)
    shutil.rmtree(work / "checkpoints" / "8")  # as if killed after the step-4 checkpoint
    resumed = run(c, work)
    assert resumed["resumed_from"] == 4
    assert losses(work) == losses(tmp / "work")  # steps 5-8 redone exactly: weights, optimizer, data order
    assert resumed["psnr"] == summary["psnr"]


def test_trained_vae_loads_through_build_vae(full_run):
    tmp, c, summary = full_run
    work = tmp / "work"
    vae = build_vae({"type": "checkpoint", "path": str(work)})
    assert isinstance(vae, TemporalVAE) and vae.downsample == (4, 8, 8) and vae.latent_channels == 4
    clips, split = train_vae.heldout_clips(c, [], work)
    assert split == "heldout" and clips.shape == (4, 8, 32, 32, 3)
    x = jnp.asarray(clips.astype(np.float32) / 127.5 - 1)
    z = vae.encode(x)
    assert z.shape == (4, 2, 4, 4, 4)
    recon = np.asarray(vae.decode(z, num_frames=8))
    metrics = train_vae.video_metrics(clips / 255.0, (recon + 1) / 2)
    assert metrics["psnr"] == pytest.approx(summary["psnr"], abs=1e-3)  # the weights the run evaluated
    assert metrics["ssim"] == pytest.approx(summary["ssim"], abs=1e-4)


def test_latent_norm_gives_unit_variance_latents_and_the_same_pictures(tmp_path):
    """``train.latent_norm``: vae_config.json gets the per-channel shift / scale of the training clips' latents;
    build_vae then encodes to ~zero-mean unit-variance channels and decodes to the same pixels as without it."""
    c = quick_config(tmp_path, **{"train.steps": 2, "train.ckpt_every": 2, "eval.every": 0,
                                  "train.latent_norm": True, "train.latent_norm_clips": 16})
    summary = run(c, tmp_path / "work")
    saved = json.loads((tmp_path / "work" / "vae_config.json").read_text())["model"]
    assert len(saved["shift"]) == len(saved["scale"]) == 4 and summary["scale"] == saved["scale"]
    vae = build_vae({"type": "checkpoint", "path": str(tmp_path / "work")})
    raw = build_vae({"type": "checkpoint", "path": str(tmp_path / "work"),
                     "arch": {k: v for k, v in json.loads((tmp_path / "work" / "vae_config.json").read_text()).items()
                              if k != "model"} | {"model": {k: v for k, v in saved.items()
                                                            if k not in ("shift", "scale")}}})
    clips = train_vae.decode_clips(train_vae.prepare_records(c, None)[:16], c.data)
    x = jnp.asarray(clips.astype(np.float32) / 127.5 - 1)
    z, z_raw = np.asarray(vae.encode(x)), np.asarray(raw.encode(x))
    assert np.abs(z_raw.reshape(-1, 4).std(0) - 1).max() > 0.05  # the raw latents are not unit-variance ...
    np.testing.assert_allclose(z.reshape(-1, 4).mean(0), 0, atol=1e-3)  # ... the normalised ones are
    np.testing.assert_allclose(z.reshape(-1, 4).std(0), 1, atol=1e-3)
    np.testing.assert_allclose(vae.decode(jnp.asarray(z), num_frames=8), raw.decode(jnp.asarray(z_raw), num_frames=8),
                               atol=1e-4)
    c.vae.type = "vq_vae"
    with pytest.raises(ValueError, match="latent_norm is for vae.type='causal_vae'"):
        train_vae.check_config(c)


def test_vq_vae_with_adversarial_term_trains_and_loads(tmp_path):
    c = quick_config(tmp_path, "vq", **{"train.steps": 3, "train.ckpt_every": 3, "train.batch_size": 8,
                                        "loss.adversarial_weight": 0.1, "loss.adversarial_start": 1,
                                        "loss.disc_filters": 4, "eval.clips": 2, "eval.batch_size": 2})
    c.data.num_clips = 8
    c.vae.model.update(n_hiddens=8, n_res_layers=1, embedding_dim=4, n_codes=16, num_groups=4, axial_attention=False)
    summary = run(c, tmp_path / "work")
    rows = [json.loads(ln) for ln in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) and r["perplexity"] >= 1 for r in rows)
    assert rows[0]["d_loss"] == 0 and rows[-1]["d_loss"] > 0  # the discriminator starts at step 1
    assert np.isfinite(summary["psnr"]) and summary["compression"] == "4x8x8"
    vae = build_vae({"type": "checkpoint", "path": str(tmp_path / "work")})
    assert isinstance(vae, VQVAE) and bool(vae.codebook.initialized[...])  # the trained codebook came along


def test_bad_configs_are_one_line_errors(tmp_path):
    c = quick_config(tmp_path)
    c.vae.type = "raw"
    with pytest.raises(ValueError, match="config.vae.type='raw'"):
        train_vae.check_config(c)
    c = quick_config(tmp_path, **{"loss.l2": 0.0})
    with pytest.raises(ValueError, match="nothing to reconstruct"):
        train_vae.check_config(c)
    with pytest.raises(ValueError, match="unknown variant"):
        get_config("vqq")


def test_image_term_reconstructs_one_frame_alone_as_a_still(tmp_path):
    """``loss.image_weight``: each step also reconstructs one frame of each clip as a 1-frame video (zero-padded in
    front by the causal VAE), so a mixed schedule's image buckets have a VAE that has seen stills."""
    from vidjax.training.state import ModelParts, make_optimizer

    c = quick_config(tmp_path, **{"loss.sample_posterior": False})
    model = build_vae(c.vae)
    parts = ModelParts(model, nnx.Param)
    tx = make_optimizer(c.train)
    state = {"params": {"vae": parts.params}, "ema": parts.params, "opt": {"vae": tx.init(parts.params)},
             "rest": {"vae": parts.rest, "step": jnp.int32(0)}}
    x = jax.random.uniform(jax.random.key(1), (2, 8, 32, 32, 3), minval=-1, maxval=1)
    rng = jax.random.key(2)
    c.loss.image_weight = 0.5
    _, m = jax.jit(train_vae.make_train_step(parts, tx, "causal_vae", c.loss, 0.99))(state, x, rng)
    image_l2 = float(m["image_l2"])
    # the term is one frame's reconstruction error: equal to one of the per-frame errors of stills
    stills = x.reshape(16, 1, 32, 32, 3)  # every frame of both clips alone
    err = jnp.square(model(stills)[0] - stills).reshape(2, 8, -1)
    per_frame = [float(v) for v in err.mean(axis=(0, 2))]
    assert min(abs(image_l2 - e) for e in per_frame) < 1e-6 * max(per_frame), (image_l2, per_frame)
    lo = c.loss
    clip_loss = lo.l1 * m["l1"] + lo.l2 * m["l2"] + lo.kl_weight * m["kl"] / x[0].size
    assert float(m["loss"] - clip_loss) == pytest.approx(0.5 * image_l2, rel=1e-3)  # + the still's tiny KL term
    # image_l1 / image_l2 weigh the still's term on their own: L1 on clips, L2 alone on the still
    c.loss.update(l1=1.0, image_l1=0.0, image_l2=2.0)
    _, m = jax.jit(train_vae.make_train_step(parts, tx, "causal_vae", c.loss, 0.99))(state, x, rng)
    clip_loss = lo.l1 * m["l1"] + lo.l2 * m["l2"] + lo.kl_weight * m["kl"] / x[0].size
    assert float(m["image_l2"]) == pytest.approx(image_l2, rel=1e-5)  # same frame, same weights
    assert float(m["loss"] - clip_loss) == pytest.approx(0.5 * 2.0 * image_l2, rel=1e-3)
    assert train_vae.image_weights(c.loss) == (0.0, 2.0)
    c.loss.image_l1 = None
    assert train_vae.image_weights(c.loss) == (1.0, 2.0)  # unset: the clip's L1 weight
    c.loss.image_l1 = -0.5
    with pytest.raises(ValueError, match=r"config.loss.image_l1=-0.5 must be >= 0"):
        train_vae.check_config(c)
    c.loss.image_l1 = None
    c.loss.image_weight = -1.0
    with pytest.raises(ValueError, match=r"config.loss.image_weight=-1.0 must be >= 0"):
        train_vae.check_config(c)


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rs = np.random.RandomState(0)
    a = rs.rand(2, 32, 32, 3)
    b = np.clip(a + 0.1 * rs.randn(*a.shape), 0, 1)
    b[1, 8:20, 4:30] = 0.2  # structure, not just noise
    ours = np.asarray(train_vae.ssim(a, b))
    ref = [skm.structural_similarity(x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert train_vae.video_metrics(a[None], a[None])["psnr"] == pytest.approx(100.0)


def test_ssim_blur_matrix_is_the_padded_filter():
    """SSIM's Gaussian blur is one banded matrix per axis: the same as padding symmetrically and filtering, on
    non-square images too (rows and columns not swapped)."""
    g = train_vae._gaussian_window(1.5)
    r = len(g) // 2
    rs = np.random.RandomState(1)
    for n in (12, 33):
        x = rs.rand(n)
        ref = np.convolve(np.pad(x, r, mode="symmetric"), g[::-1], mode="valid")
        np.testing.assert_allclose(train_vae._blur_matrix(n, g) @ x, ref, atol=1e-12)

    def ssim_ref(a, b):  # the textbook form: pad, slide the 1-D window over rows then columns
        def blur(x):
            x = np.pad(x, [(r, r), (r, r), (0, 0)], mode="symmetric")
            x = sum(g[i] * x[i : i + a.shape[0]] for i in range(len(g)))
            return sum(g[i] * x[:, i : i + a.shape[1]] for i in range(len(g)))

        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        s = (2 * mu_a * mu_b + 1e-4) * (2 * cov + 9e-4) / ((mu_a**2 + mu_b**2 + 1e-4) * (var_a + var_b + 9e-4))
        return s[r:-r, r:-r].mean()

    a = rs.rand(24, 40, 3)
    b = np.clip(a + 0.2 * rs.randn(*a.shape), 0, 1)
    b[2:10, 5:30] = 0.1
    assert float(train_vae.ssim(a, b)) == pytest.approx(ssim_ref(a, b), abs=1e-5)


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (1, 2, 2)])
def test_folded_causal_conv_equals_3d_conv(stride):
    """On CPU CausalConv3d stacks its time taps into channels for a 2D conv: the same numbers as the 3D conv."""
    conv = CausalConv3d(5, 6, 3, nnx.Rngs(0), stride=stride)
    x = jax.random.normal(jax.random.key(1), (2, 8, 6, 6, 5))
    np.testing.assert_allclose(conv(x), conv.conv(x), atol=2e-5)


def test_command_line_runs_the_vae_task(tmp_path):
    """``python -m vidjax.train --config configs/vae_shapes.py`` as the README writes it (the quick variant)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", "vidjax.train", "--config", "configs/vae_shapes.py:quick",
                           "--workdir", str(tmp_path / "work"), f"--config.data.root={tmp_path / 'data'}",
                           "--config.train.steps=2", "--config.progress=False"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 2
