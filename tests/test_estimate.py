"""The compute estimator agrees with the model (parameters) and with XLA (FLOPs)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vidjax.estimate import estimate, main
from vidjax.models.stdit import STDiT, stdit_config


def test_xl2_parameter_count():
    assert estimate(28, 1152, 16, 32, 32).params == 759_620_768


def test_forward_flops_match_xla_cost_analysis():
    # depth 1: XLA counts a scan (while) body once, whatever its trip count
    cfg = stdit_config(depth=1, hidden=64, heads=4, patch=(1, 2, 2), in_channels=4, caption_channels=32,
                       model_max_length=8, learn_sigma=False)
    model = STDiT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x, t = jnp.zeros((1, 4, 16, 16, 4)), jnp.ones((1,))
    y, mask = jnp.zeros((1, 8, 32)), jnp.ones((1, 8), bool)

    def fwd(state):
        return nnx.merge(graphdef, state)(x, t, y, mask)

    xla = jax.jit(fwd).lower(state).compile().cost_analysis()["flops"]
    ours = estimate(1, 64, 4, 16, 16, caption_len=8, caption_channels=32, in_channels=4).train_flops_per_sample / 3
    assert 0.8 < ours / xla < 1.25, (ours, xla)


def test_cli_prints_a_cost(capsys):
    main(["--model", "STDiT-XL/2", "--frames", "16", "--height", "32", "--width", "32", "--batch", "512",
          "--steps", "1000", "--chip", "h100", "--chips", "64", "--mfu", "0.2"])
    out = capsys.readouterr().out
    assert "759.6 M parameters" in out and "h100-hours" in out


def test_config_uses_the_runs_own_vae_geometry(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # config paths are relative to the repository
    main(["--config", "configs/shapes_tiny.py"])  # the stage-0 causal VAE: 8×32×32 -> 2×4×4×16, patch 1
    assert "32 per sample (2×4×4 latent" in capsys.readouterr().out
    main(["--config", "configs/shapes_tiny.py:pixels"])  # raw pixels, patch 2×4×4
    assert "256 per sample (8×32×32 latent" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# The planner: sizes, memory per chip, published budgets, the chip table
# ----------------------------------------------------------------------------------------------------------------


def test_video_sizes_parse_both_ways():
    import pytest

    from vidjax.errors import ConfigError
    from vidjax.estimate import latent_size, parse_video

    assert parse_video("16x256x256") == (16, 256, 256)
    assert parse_video("40s@24fps,256x256") == (960, 256, 256)
    assert latent_size((960, 256, 256), (4, 8, 8)) == (240, 32, 32)
    with pytest.raises(ConfigError, match="--video '40s,256'"):
        parse_video("40s,256")


def test_the_32k_token_planning_example(capsys):
    # 40 s at 24 fps, 256², 8× spatial and 4× temporal compression, patch 2×2×2: about 32K tokens per sample
    main(["--depth", "32", "--hidden", "3072", "--heads", "24", "--video", "40s@24fps,256x256", "--compression",
          "4x8x8", "--patch", "2x2x2", "--chip", "a100", "--chips", "300", "--days", "75", "--batch", "300"])
    out = capsys.readouterr().out
    assert "30,720 per sample" in out and "6,131.3 M parameters" in out
    assert "22,500 chip-days" in out and "M samples" in out
    assert "remat full" in out and "remat none" in out


def test_published_opensora_v1_budgets_within_the_stated_factor(capsys):
    from vidjax.estimate import published_table

    rows = published_table(mfu=0.063)
    assert [r["tokens"] for r in rows] == [4096, 4096, 16384]
    # the published GPU-days imply 5.5-7% MFU; at 6.3% the planner is within 1.25× of every stage
    assert all(0.05 < r["implied_mfu"] < 0.08 for r in rows), rows
    assert all(0.8 < r["ratio"] < 1.25 for r in rows), rows
    main(["--published", "--mfu", "0.063"])
    out = capsys.readouterr().out
    assert "117 GPU-d" in out and "implied MFU" in out and "at 6.3% MFU" in out


def test_memory_model_matches_the_compiled_train_step():
    """Planner activations + gradients against XLA's temp buffers of vidjax's own train step, fp32, 1 device, with
    the blocks in one scan as the full-size configs run them (unrolled, XLA needs about 20% less here)."""
    from vidjax.config import load_config
    from vidjax.estimate import memory_per_chip
    from vidjax.parallel.mesh import make_mesh
    from vidjax.tools.shardcheck import analyze

    repo = Path(__file__).resolve().parents[1]
    for remat, (frames, size, batch) in [("none", (16, 64, 2)), ("none", (8, 32, 4)), ("full", (16, 64, 2))]:
        c = load_config(str(repo / "configs/shapes_tiny.py:pixels"),
                        [f"model.remat={remat}", f"data.frames={frames}", f"data.height={size}", f"data.width={size}",
                         "model.patch=(1,4,4)", f"train.batch_size={batch}", "text.encoder=t5", "text.dim=64",
                         "text.max_length=8", "model.scan_layers=True"])  # as the full-size configs run
        fast = {"xla_backend_optimization_level": 0}
        compiled = analyze(c, make_mesh(c, devices=jax.devices()[:1]), compiler_options=fast).memory["temp"]
        e = estimate(4, 128, frames, size, size, patch=(1, 4, 4), caption_len=8, caption_channels=64, in_channels=3,
                     heads=4)
        m = memory_per_chip(e.params, 4, 128, 4, frames, size, size, patch=(1, 4, 4), caption_len=8,
                            caption_channels=64, in_channels=3, samples_per_chip=batch, compute_bytes=4)
        planned = m.activations[remat] + 4 * e.params  # + the fp32 gradients, also temporaries to XLA
        assert 0.75 < planned / compiled < 1.25, (remat, frames, size, planned / 2**20, compiled / 2**20)


def test_cli_says_what_fits(capsys):
    main(["--model", "STDiT-XL/2", "--video", "16x512x512", "--batch", "128", "--chip", "h800", "--chips", "64"])
    out = capsys.readouterr().out
    assert "16,384 per sample" in out and "2 sample(s) per chip" in out
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.strip().startswith("remat")}
    assert "does NOT fit" in lines["none"] and ": fits" in lines["full"]


def test_chip_table_is_one_data_file():
    from vidjax.estimate import CHIP_PEAK_TFLOPS, CHIPS
    from vidjax.training.metrics import _DEVICE_KINDS

    assert {"h100", "h800", "a100", "v5p", "v5e", "v6e"} <= set(CHIPS)
    for key, row in CHIPS.items():
        assert row["peak_bf16_tflops"] > 0 and row["hbm_gib"] > 0 and row["name"], key
    assert CHIP_PEAK_TFLOPS["v5p"] == 459.0 and CHIPS["v5p"]["hbm_gib"] == 95
    assert _DEVICE_KINDS["v5 lite"] == "v5e"  # training logs read the same table


def test_bad_planner_input_is_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vidjax.estimate", "--video", "16x256", "--chips", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--video '16x256'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name,variant,skips", [
    ("stdit", "", True), ("dit", "", True), ("latte", "interleaved", False), ("latte", "late_temporal", True),
    ("latte", "factorized_block", False), ("latte", "factorized_heads", False),
])
def test_backbone_flops_match_xla_cost_analysis(name, variant, skips):
    """Every backbone of the comparison (issue 19), unrolled so that XLA counts every block."""
    from vidjax.estimate import backbone_forward_flops
    from vidjax.models.dit import DiT, dit_config
    from vidjax.models.latte import Latte, latte_config

    kw = dict(depth=4, hidden=64, heads=4, patch=(1, 2, 2), in_channels=4, caption_channels=32, model_max_length=8,
              learn_sigma=False, skips=skips, scan_layers=False)
    model = {"stdit": lambda: STDiT(stdit_config(**kw), rngs=nnx.Rngs(0)),
             "dit": lambda: DiT(dit_config(**kw), rngs=nnx.Rngs(0)),
             "latte": lambda: Latte(latte_config(**kw, variant=variant), rngs=nnx.Rngs(0))}[name]()
    graphdef, state = nnx.split(model)
    x, t = jnp.zeros((1, 4, 16, 16, 4)), jnp.ones((1,))
    y, mask = jnp.zeros((1, 8, 32)), jnp.ones((1, 8), bool)
    xla = jax.jit(lambda s: nnx.merge(graphdef, s)(x, t, y, mask)).lower(state).compile().cost_analysis()["flops"]
    _, ours = backbone_forward_flops(name, 4, 64, 4, 16, 16, variant=variant, skips=skips, caption_len=8,
                                     caption_channels=32, in_channels=4)
    assert 0.8 < ours / xla < 1.25, (ours, xla)
