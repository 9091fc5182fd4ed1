"""The compute estimator agrees with the model (parameters) and with XLA (FLOPs)."""

from pathlib import Path

import jax
import jax.numpy as jnp
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
