"""Latte's four variants and U-ViT's long skips: attention patterns by probe, block order, the skip path, and
training on an 8-device mesh (FSDP, sequence parallelism) equal to one device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax.models.latte import VARIANTS, Latte, LatteBlock, latte_config
from vidjax.models.stdit import STDiT, stdit_config

TINY = dict(depth=2, hidden=32, heads=4, caption_channels=16, model_max_length=6, in_channels=4, patch=(1, 1, 1))
T, H, W = 3, 4, 5  # latent frames, grid: S = 20 tokens per frame


def randomize(module: nnx.Module, seed: int) -> nnx.Module:
    """Every parameter random (zero-initialised projections and gates included)."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Param):
            v = np.asarray(var.get_value())
            var.set_value(jnp.asarray(rng.normal(0, 0.2, v.shape).astype(np.float32)))
    return module


def influence(fn, t0: int = 1, s0: int = 7) -> np.ndarray:
    """[T, S] bool: which output tokens of ``fn`` (x [1, T, S, C] -> same) change when token (t0, s0) changes."""
    C = TINY["hidden"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, T, H * W, C)), jnp.float32)
    bumped = x.at[0, t0, s0].add(jnp.linspace(-1.0, 1.0, C))  # not a constant: LayerNorm would remove it
    return np.abs(np.asarray(fn(bumped) - fn(x)))[0].max(-1) > 1e-6


def pattern(name: str, t0: int = 1, s0: int = 7) -> np.ndarray:
    frame = np.zeros((T, H * W), bool)
    frame[t0] = True
    position = np.zeros((T, H * W), bool)
    position[:, s0] = True
    return {"frame": frame, "position": position, "both": frame | position}[name]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_attends_in_its_pattern(variant):
    """A probe token changes exactly its frame (spatial attention), its position over time (temporal), or both
    (factorized heads); variant 3's block holds one attention of each kind."""
    cfg = latte_config(**TINY, variant=variant)
    model = randomize(Latte(cfg, rngs=nnx.Rngs(0)), seed=1)
    first = nnx.merge(*_first_block(model.blocks))
    if variant in ("interleaved", "late_temporal"):
        second = nnx.merge(*_first_block(model.temporal_blocks))
        assert (first.kind, second.kind) == ("spatial", "temporal")
        np.testing.assert_array_equal(influence(first.attn), pattern("frame"))
        np.testing.assert_array_equal(influence(second.attn), pattern("position"))
    elif variant == "factorized_block":
        assert first.kind == "both"
        np.testing.assert_array_equal(influence(first.attn), pattern("frame"))
        np.testing.assert_array_equal(influence(first.attn_temp), pattern("position"))
    else:
        assert first.kind == "heads" and first.attn_temp is None
        np.testing.assert_array_equal(influence(first.attn), pattern("both"))
    # a whole block mixes tokens only through its attention (cross-attention and MLP are per token)
    y = jnp.asarray(np.random.default_rng(2).normal(size=(1, TINY["model_max_length"], TINY["hidden"])), jnp.float32)
    t0 = jnp.asarray(np.random.default_rng(3).normal(size=(1, 6 * TINY["hidden"])), jnp.float32)
    whole = influence(lambda x: first(x, y, None, t0))
    if variant == "factorized_block":
        assert whole.all()  # frame, then every position of it over time
    else:
        np.testing.assert_array_equal(whole, influence(first.attn))


def _first_block(stacked: nnx.Module):
    graphdef, state = nnx.split(stacked)
    return graphdef, jax.tree.map(lambda p: p[0], state)


@pytest.mark.parametrize("variant,order", [
    ("interleaved", ["spatial", "temporal", "spatial", "temporal"]),
    ("late_temporal", ["spatial", "spatial", "temporal", "temporal"]),
    ("factorized_block", ["both", "both"]), ("factorized_heads", ["heads", "heads"]),
])
def test_block_order_and_scan_equals_unrolled(variant, order, monkeypatch):
    calls = []
    original = LatteBlock.__call__

    def spy(self, *a, **k):
        calls.append(self.kind)
        return original(self, *a, **k)

    x, t, y, mask = _inputs()
    outs = []
    for scan in (False, True):
        model = randomize(Latte(latte_config(**TINY, variant=variant, scan_layers=scan), rngs=nnx.Rngs(0)), seed=4)
        with monkeypatch.context() as m:
            m.setattr(LatteBlock, "__call__", spy)
            outs.append(np.asarray(model(x, t, y, mask)))
        if not scan:
            assert calls == order
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6 * np.abs(outs[0]).max())
    assert outs[0].shape == (2, T, H, W, 8)


def _inputs():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, T, H, W, 4)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(2, TINY["model_max_length"], TINY["caption_channels"])), jnp.float32)
    return x, jnp.array([100.0, 800.0]), y, jnp.arange(TINY["model_max_length"])[None].repeat(2, 0) < 4


@pytest.mark.parametrize("make,depth", [("stdit", 4), ("stdit", 5), ("latte_interleaved", 5),
                                        ("latte_late_temporal", 4), ("latte_factorized_heads", 4)])
def test_uvit_skips_change_the_output_only_when_enabled(make, depth):
    """With skip projections that pass x through (``[I; 0]``) a skip model equals the same model without skips;
    with random ones it differs; the scan and the unrolled walk agree; without ``skips`` there are no skip
    parameters."""
    def build(skips, scan=True):
        kw = {**TINY, "depth": depth, "skips": skips, "scan_layers": scan}
        if make == "stdit":
            return randomize(STDiT(stdit_config(**kw), rngs=nnx.Rngs(0)), seed=6)
        return randomize(Latte(latte_config(**kw, variant=make.split("_", 1)[1]), rngs=nnx.Rngs(0)), seed=6)

    x, t, y, mask = _inputs()
    plain = build(False)
    assert plain.skip_linears is None
    base = np.asarray(plain(x, t, y, mask))
    skipped = build(True)
    nnx.update(skipped, nnx.state(plain, nnx.Param))  # the same block weights; the skip projections stay random
    random_out = np.asarray(skipped(x, t, y, mask))
    assert np.abs(random_out - base).max() > 1e-3
    unrolled = build(True, scan=False)
    nnx.update(unrolled, nnx.state(skipped, nnx.Param))
    np.testing.assert_allclose(np.asarray(unrolled(x, t, y, mask)), random_out,
                               atol=1e-4 * np.abs(random_out).max())  # fp32 reordering, amplified by σ = 0.2 weights
    # (measured: 1.7e-4 against a largest output of 5.5 at depth 5; a wrong skip pairing differs by O(1))
    C = TINY["hidden"]
    for lins in (skipped.skip_linears, getattr(skipped, "late_skip_linears", None)):
        if lins is None:
            continue
        n = lins.kernel[...].shape[0]
        assert n == depth // 2
        lins.kernel[...] = jnp.tile(jnp.concatenate([jnp.eye(C), jnp.zeros((C, C))])[None], (n, 1, 1))
        lins.bias[...] = jnp.zeros((n, C))
    np.testing.assert_allclose(np.asarray(skipped(x, t, y, mask)), base, atol=1e-6 * np.abs(base).max())


def test_bad_latte_fields_are_one_line_errors():
    with pytest.raises(ValueError, match="model.variant="):
        latte_config(**TINY, variant="spatial_only")
    with pytest.raises(ValueError, match="splits the heads"):
        latte_config(**{**TINY, "heads": 1, "hidden": 33}, variant="factorized_heads")
    with pytest.raises(ValueError, match="whole frames per chip"):
        latte_config(**TINY, sequence_parallel="dsp")


@pytest.mark.parametrize("variant", ["factorized_heads", "interleaved"])
def test_pallas_kernels_match_xla(variant):
    """``attention_impl="pallas"`` (interpret mode on CPU) gives Latte the same loss and gradients as XLA, for the
    split heads too."""
    x, t, y, mask = _inputs()
    target = jnp.asarray(np.random.default_rng(9).normal(size=(2, T, H, W, 8)), jnp.float32)

    def run(impl):
        model = randomize(Latte(latte_config(**{**TINY, "depth": 1}, variant=variant, attention_impl=impl),
                                rngs=nnx.Rngs(0)), seed=8)
        graphdef, state = nnx.split(model)
        loss = jax.jit(jax.value_and_grad(lambda s: jnp.mean((nnx.merge(graphdef, s)(x, t, y, mask) - target) ** 2)))
        value, grads = loss(state)
        return float(value), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])

    (loss_x, grad_x), (loss_p, grad_p) = run("xla"), run("pallas")
    assert abs(loss_p - loss_x) <= 1e-5 * abs(loss_x)
    assert np.linalg.norm(grad_p - grad_x) <= 1e-4 * np.linalg.norm(grad_x)
