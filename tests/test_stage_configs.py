"""Open-Sora's stages at full size (configs/opensora_v1/stage{1,2,3}.py): they load, build abstractly, shard on an
8-device CPU mesh with vidjax.tools.shardcheck (no weight files needed) and print a budget with vidjax.estimate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from vidjax.config import load_config
from vidjax.models.t2v import build_model
from vidjax.parallel.mesh import make_mesh
from vidjax.tools.shardcheck import analyze, vae_architecture

REPO = Path(__file__).resolve().parents[1]
V1 = {1: (16, 256, 0.5, 1.0, "full"), 2: (16, 512, 1.0, 1.0, "none"), 3: (64, 512, 1.0, 2 / 3, "full")}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_v1_stages_carry_open_soras_settings(stage):
    c = load_config(str(REPO / f"configs/opensora_v1/stage{stage}.py"))
    frames, size, space, time, remat = V1[stage]
    assert (c.data.frames, c.data.height, c.data.width, c.data.frame_interval) == (frames, size, size, 3)
    assert (c.model.space_scale, c.model.time_scale, c.model.remat) == (space, pytest.approx(time), remat)
    assert (c.model.size, c.model.learn_sigma, c.model.dtype) == ("STDiT-XL/2", True, "bfloat16")
    assert (c.train.lr, c.train.grad_clip, c.train.ema_decay, c.train.final_lr_frac) == (2e-5, 1.0, 0.9999, 1.0)
    assert (c.text.encoder, c.text.max_length, c.text.dim) == ("t5", 120, 4096)
    assert c.vae.type == "sd_vae" and c.diffusion.name == "iddpm"
    assert c.train.init_from == {1: "pretrained_models/PixArt-XL-2-512x512.pth", 2: "runs/opensora_v1_stage1",
                                 3: "runs/opensora_v1_stage2"}[stage]


def test_xl2_builds_abstractly_with_v1s_parameter_count():
    from vidjax.models.vae import build_vae

    c = load_config(str(REPO / "configs/opensora_v1/stage1.py"))
    vae = build_vae(vae_architecture(c.vae))
    assert vae.latent_shape(16, 256, 256) == (16, 32, 32) and vae.latent_channels == 4
    model = nnx.eval_shape(lambda: build_model(c, nnx.Rngs(0), latent_channels=4))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 7.5e8 < n < 7.7e8, n  # STDiT-XL/2 with T5-XXL captions and learned sigma: 759.6M


def test_v1_stage1_shards_on_8_devices_with_fsdp():
    c = load_config(str(REPO / "configs/opensora_v1/stage1.py"), ["train.batch_size=8"])
    report = analyze(c, make_mesh(c), compiler_options={"xla_backend_optimization_level": 0})
    assert report.mesh["fsdp"] == 8
    assert report.params_per_device * 8 == pytest.approx(report.params_total, rel=1e-3)  # ZeRO-3
    assert report.count("all-gather") > 0 and report.memory["temp"] > 0


def test_v1_stage3_shards_with_sequence_parallelism():
    c = load_config(str(REPO / "configs/opensora_v1/stage3.py"), ["train.batch_size=4"])
    report = analyze(c, make_mesh(c, fsdp=4, sequence=2), compiler_options={"xla_backend_optimization_level": 0})
    assert report.mesh["sequence"] == 2 and report.count("all-to-all") > 0


def test_estimate_prints_a_budget_for_each_stage():
    for stage in (1, 3):
        config = f"configs/opensora_v1/stage{stage}.py"
        r = subprocess.run([sys.executable, "-m", "vidjax.estimate", "--config", config], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "STDiT, depth 28, width 1152" in r.stdout and "steps" in r.stdout


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_v12_stages_carry_v12s_bucket_tables(stage):
    from vidjax.data.bucketed import bucket_config_of

    c = load_config(str(REPO / f"configs/opensora_v1_2/stage{stage}.py"))
    t = c.data.bucket_config
    # spot checks against configs/opensora-v1-2/train/stage{1,2,3}.py at tag v1.2.0
    assert tuple(t["144p"][1]) == (1.0, 475) and tuple(t["2048"][1]) == {1: (0.1, 5), 2: (0.01, 5), 3: (0.05, 5)}[stage]
    assert {1: ((1.0, 0.33), 27), 2: ((1.0, 0.33), 27), 3: (1.0, 27)}[stage] == tuple(t["144p"][102])
    assert {1: ((0.4, 0.1), 5), 2: ((0.4, 1.0), 5), 3: (0.5, 5)}[stage] == tuple(t["240p"][204])
    assert {1: None, 2: (0.03, 1), 3: (0.2, 2)}[stage] == (tuple(t["720p"][51]) if 51 in t["720p"] else None)
    table = bucket_config_of(c, data_shards=8)  # per-GPU sizes × 8 data-parallel devices
    assert c.data.bucket_batch == "per_device" and table.batch_size("144p", 51) == 51 * 8
    assert (c.model.name, c.model.size, c.text.max_length, c.train.adam_eps) == ("stdit3", "STDiT3-XL/2", 300, 1e-15)
    assert (c.train.lr, c.train.ema_decay, c.train.warmup) == (1e-4, 0.99, {1: 1000, 2: 0, 3: 1000}[stage])


@pytest.mark.slow
def test_v12_stage1_shards_on_8_devices_with_fsdp():
    c = load_config(str(REPO / "configs/opensora_v1_2/stage1.py"), ["train.batch_size=8"])
    report = analyze(c, make_mesh(c), compiler_options={"xla_backend_optimization_level": 0})
    assert report.mesh["fsdp"] == 8 and report.params_per_device * 8 == pytest.approx(report.params_total, rel=1e-3)
