"""STDiT (Open-Sora v1.0 semantics) and the full-attention DiT baselines.

Numerical parity with a PyTorch reference lives in test_interop.py; here: sizes, program
structure (scan, remat), freezing, the quirks that hold at initialisation, bf16, masking,
and the DiT conditionings. Batches are built so one forward pass answers several questions
(samples do not interact).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange
from flax import nnx
from jax.sharding import NamedSharding

from vidjax.models.dit import CONDITIONINGS, DiT, dit_config
from vidjax.models.layers import (
    CrossAttention,
    SelfAttention,
    add_bias,
    dot_general_f32_accumulate,
    expand,
    gate,
    linear,
    modulate,
    sum_f32,
    xla_attention,
)
from vidjax.models.stdit import (
    REMAT_POLICIES,
    STDIT_SIZES,
    FinalLayer,
    STDiT,
    count_params,
    stdit_config,
    trainable_filter,
)
from vidjax.parallel.mesh import make_mesh
from vidjax.parallel.rules import logical_to_spec

TINY = dict(depth=2, hidden=64, heads=4, caption_channels=32, model_max_length=8)
L = TINY["model_max_length"]


def randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Make every parameter non-trivial (zero-initialised gates, projections and biases included)."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            v = np.asarray(var.get_value())
            var.set_value(jnp.asarray(v + rng.normal(0, 0.05, v.shape).astype(v.dtype)))
    return model


def saved_residuals(fn, *args) -> str:
    """What ``jax.checkpoint``-ed ``fn`` saves for its backward pass (``print_saved_residuals``' text)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as out:
        jax.ad_checkpoint.print_saved_residuals(fn, *args)
    return out.getvalue()


def batch(b: int = 4, frames: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, frames, 8, 12, 4)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(b, L, TINY["caption_channels"])), jnp.float32)
    mask = jnp.arange(L)[None].repeat(b, 0) < 5  # tokens 5.. are padding
    return x, jnp.full((b,), 321.0), y, mask


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, t, y, mask, drop):
    return nnx.merge(graphdef, state)(x, t, y, mask, drop)


def run(model: nnx.Module, x, t, y, mask, drop=None) -> np.ndarray:
    """Jitted forward, compiled once per (model structure, input shapes)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(graphdef, state, x, t, y, mask, jnp.zeros(x.shape[0], bool) if drop is None else drop))


@pytest.fixture(scope="module")
def tiny() -> STDiT:
    return randomize(STDiT(stdit_config(**TINY), rngs=nnx.Rngs(0)), seed=0)


def abstract_program(depth: int = 2, **kw) -> str:
    """The jaxpr of a training gradient, from an abstract model (nothing allocated or compiled)."""
    model = nnx.eval_shape(lambda: STDiT(stdit_config(**{**TINY, "depth": depth}, **kw), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x, t, y, mask = batch(2)

    def loss(state):
        return jnp.sum(nnx.merge(graphdef, state)(x, t, y, mask) ** 2)

    return str(jax.make_jaxpr(jax.grad(loss))(state))


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------


def test_named_sizes_and_xl2_traces():
    assert set(STDIT_SIZES) == {"STDiT-XL/2", "STDiT-B/2", "STDiT-S/2"}
    cfg = stdit_config("STDiT-XL/2")
    assert (cfg.depth, cfg.hidden, cfg.heads, cfg.patch, cfg.in_channels, cfg.out_channels,
            cfg.caption_channels, cfg.model_max_length) == (28, 1152, 16, (1, 2, 2), 4, 8, 4096, 120)
    model = nnx.eval_shape(lambda: STDiT(cfg, rngs=nnx.Rngs(0)))
    assert count_params(model) == 759_620_768
    assert count_params(model, trainable_filter("not_temporal")) == 28 * (1152 * 3456 + 3456 + 1152**2 + 1152)
    # the whole XL/2 forward traces abstractly (one block, thanks to scan)
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, 2, 8, 8, 4), jnp.float32)
    y = jax.ShapeDtypeStruct((1, 120, 4096), jnp.float32)
    out = jax.eval_shape(lambda s, x, y: nnx.merge(graphdef, s)(x, jnp.ones(1), y, jnp.ones((1, 120), bool)),
                         state, x, y)
    assert out.shape == (1, 2, 8, 8, 8) and out.dtype == jnp.float32
    small = nnx.eval_shape(lambda: STDiT(stdit_config("STDiT-S/2"), rngs=nnx.Rngs(0)))
    base = nnx.eval_shape(lambda: STDiT(stdit_config("STDiT-B/2"), rngs=nnx.Rngs(0)))
    assert count_params(small) < count_params(base) < 759_620_768
    with pytest.raises(ValueError, match="model.size"):
        stdit_config("STDiT-XXL/2")


# --------------------------------------------------------------------------------------
# Program structure: scan over depth, remat policy
# --------------------------------------------------------------------------------------


def test_program_does_not_grow_with_depth():
    two, six = abstract_program(depth=2), abstract_program(depth=6)
    assert two.count("\n") == six.count("\n") and "scan[" in two


@pytest.mark.parametrize("make,remat", [("stdit", "none"), ("stdit", "dots"), ("dit", "none")])
def test_unrolled_layers_equal_the_scan(make, remat):
    """``scan_layers=False`` walks the same stacked parameters block by block: same outputs and gradients, and a
    program without a scan (which grows with depth)."""
    def build(scan_layers):
        cfg = (stdit_config if make == "stdit" else dit_config)(**TINY, remat=remat, scan_layers=scan_layers)
        return randomize((STDiT if make == "stdit" else DiT)(cfg, rngs=nnx.Rngs(0)), seed=3)

    x, t, y, mask = batch(2)
    outs, grads = [], []
    for scan_layers in (True, False):
        graphdef, state = nnx.split(build(scan_layers))
        loss = jax.jit(jax.value_and_grad(lambda s, g=graphdef: jnp.sum(jnp.tanh(nnx.merge(g, s)(x, t, y, mask)))))
        value, g = loss(state)
        outs.append(float(value))
        grads.append(np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)]))
    assert abs(outs[0] - outs[1]) < 1e-5 * abs(outs[0])
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    if make == "stdit" and remat == "none":
        two, three = abstract_program(depth=2, scan_layers=False), abstract_program(depth=3, scan_layers=False)
        assert "scan[" not in two and three.count("\n") > two.count("\n")


def test_remat_policy_from_config():
    none, full, dots = abstract_program(), abstract_program(remat="full"), abstract_program(remat="dots")
    assert "remat2[" not in none
    assert "remat2[" in full and "policy=None" in full
    assert "remat2[" in dots and "policy=<function save_from_both_policies" in dots
    # "dots" keeps the weight matmuls' outputs (dots without batch dims; bf16 layers: see the bf16 linear test)
    def layer(x, w):
        return jnp.sum(jnp.tanh(x @ w))

    saved = saved_residuals(jax.checkpoint(layer, policy=REMAT_POLICIES["dots"]), jnp.ones((4, 8)), jnp.ones((8, 16)))
    assert "f32[4,16] output of dot_general" in saved, saved
    with pytest.raises(ValueError, match="remat"):
        stdit_config(**TINY, remat="some")


# --------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------


def test_freeze_options():
    model = nnx.eval_shape(lambda: STDiT(stdit_config(**TINY, freeze="not_temporal"), rngs=nnx.Rngs(0)))
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, model.trainable()))]
    assert paths and all("attn_temp" in p for p in paths)
    assert len(paths) == 4  # qkv and proj, kernel and bias (stacked over depth)
    text = [p for p, _ in nnx.to_flat_state(nnx.state(model, trainable_filter("text")))]
    everything = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert not any("cross_attn" in p for p in text) and len(everything) - len(text) == 6
    assert not any("y_embedding" in p for p in everything)  # the null caption is a buffer
    with pytest.raises(ValueError, match="freeze"):
        stdit_config(**TINY, freeze="spatial")


# --------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------


def test_zero_temporal_projection_makes_an_image_model_per_frame(tiny):
    """With attn_temp.proj = 0 (its init), frames do not interact: the model is PixArt per frame."""
    model = nnx.clone(tiny)
    for p in (model.blocks.attn_temp.proj.kernel, model.blocks.attn_temp.proj.bias):
        p[...] = jnp.zeros_like(p[...])
    x, t, y, mask = batch()
    clip = run(model, x, t, y, mask)  # [4, 4 frames, ...]
    frames = run(model, rearrange(x, "b t h w c -> (b t) 1 h w c"), t.repeat(4), y.repeat(4, 0), mask.repeat(4, 0))
    np.testing.assert_allclose(rearrange(frames, "(b t) 1 h w c -> b t h w c", t=4), clip, atol=1e-5)
    assert not np.allclose(run(tiny, x, t, y, mask), clip, atol=1e-3)  # and the temporal branch does act


def test_temporal_pos_input_tells_every_token_its_frame(tiny):
    """With the zero temporal projection, identical frames give identical outputs under Open-Sora's
    ``temporal_pos="block0"`` (the frame index only enters through block 0's temporal attention), but not
    under ``"input"``, where the temporal sincos is added to every token; with the projection non-zero both
    see it. The option adds no parameters."""
    x, t, y, mask = batch()
    x = x[:, :1].repeat(4, 1)  # 4 identical frames
    outs = {}
    for pos in ("block0", "input"):
        model = STDiT(stdit_config(**TINY, temporal_pos=pos), rngs=nnx.Rngs(0))
        nnx.update(model, nnx.state(tiny, nnx.Param))
        for p in (model.blocks.attn_temp.proj.kernel, model.blocks.attn_temp.proj.bias):
            p[...] = jnp.zeros_like(p[...])
        outs[pos] = run(model, x, t, y, mask)
    np.testing.assert_allclose(outs["block0"], outs["block0"][:, :1].repeat(4, 1), atol=1e-6)
    assert np.abs(outs["input"] - outs["input"][:, :1]).max() > 1e-2
    assert count_params(STDiT(stdit_config(**TINY, temporal_pos="input"), rngs=nnx.Rngs(0))) == count_params(tiny)
    with pytest.raises(ValueError, match="temporal_pos"):
        stdit_config(**TINY, temporal_pos="rope")


def test_caption_mask_padding_and_null_caption(tiny):
    x, t, y, mask = batch()
    x, t, y, mask = x[:1].repeat(4, 0), t, y[:1], mask
    rng = np.random.default_rng(1)
    ys = jnp.concatenate([y, y.at[:, 6].set(rng.normal(size=y.shape[-1])),  # change a padding token
                          y.at[:, 2].set(rng.normal(size=y.shape[-1])),  # change a real token
                          tiny.y_embedder.y_embedding[...][None]])  # the null caption, given explicitly
    out = run(tiny, x, t, ys, mask)
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)
    assert not np.allclose(out[2], out[0], atol=1e-4)
    dropped = run(tiny, x, t, y.repeat(4, 0), mask, jnp.array([False, False, False, True]))  # drop -> y_embedding
    np.testing.assert_allclose(dropped[3], out[3], atol=1e-6)
    np.testing.assert_allclose(dropped[0], out[0], atol=1e-6)


def test_bf16_compute_keeps_fp32_params_and_rounds_the_timestep(tiny):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: STDiT(stdit_config(**TINY, dtype="bfloat16"), rngs=nnx.Rngs(0))))
    model = nnx.merge(graphdef, nnx.state(tiny))  # tiny's weights, bf16 compute
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}
    x, _, y, mask = batch()
    x, y = x[:1].repeat(4, 0), y[:1].repeat(4, 0)
    t = jnp.array([999.0, 1000.0, 500.0, 20.0])  # 999 and 1000 are both 1000 in bf16 (`timestep.to(dtype)`)
    low, full = run(model, x, t, y, mask), run(tiny, x, t, y, mask)
    assert low.dtype == np.float32
    np.testing.assert_array_equal(low[0], low[1])
    assert not np.allclose(full[0], full[1], atol=1e-6)
    assert float(np.abs(low - full).max() / np.abs(full).max()) < 5e-2


def dot_eqns(jaxpr) -> list:
    """Every dot_general in a jaxpr, custom_vjp / pjit / ... bodies included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for p in eqn.params.values():
            for j in p if isinstance(p, (list, tuple)) else [p]:
                j = getattr(j, "jaxpr", j)
                if hasattr(j, "eqns"):
                    found += dot_eqns(j)
    return found


def linear_case(seed: int, lead: tuple[int, int, int], dtype):
    """A linear layer's product: x [*lead, 64], w [64, 32], a cotangent c [*lead, 32], the contraction ``dn`` of
    x's last axis with w's first, and ``loss(x, w) = sum((x @ w) * c)`` through the layers' dot."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(*lead, 64)), dtype)
    w = jnp.asarray(rng.normal(size=(64, 32)) / 8, dtype)
    c = jnp.asarray(rng.normal(size=(*lead, 32)), jnp.float32)
    dn = (((3,), (0,)), ((), ()))

    def loss(x, w):
        return jnp.sum(dot_general_f32_accumulate(x, w, dn).astype(jnp.float32) * c)

    return x, w, c, dn, loss


def test_bf16_linear_sums_in_fp32_forward_and_backward():
    """A bf16 layer's matmuls (forward and both gradient products) take bf16 inputs into fp32 sums, the form XLA's
    CPU backend runs on its bf16 kernels; results match the fp32 products of the same bf16 values."""
    x, w, c, dn, loss = linear_case(0, (2, 3, 48), jnp.bfloat16)

    def reference(x, w):  # the same bf16 values, fp32 everywhere
        return jnp.sum((x.astype(jnp.float32) @ w.astype(jnp.float32)) * c)

    y = dot_general_f32_accumulate(x, w, dn)
    assert y.dtype == jnp.bfloat16
    exact = x.astype(jnp.float32) @ w.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(exact.astype(jnp.bfloat16), np.float32),
                               rtol=1e-2, atol=1e-6)  # one rounding of the fp32 sum
    for got, want in zip(jax.grad(loss, (0, 1))(x, w), jax.grad(reference, (0, 1))(x, w), strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=2e-2,
                                   atol=2e-2 * float(jnp.abs(want).max()))
    found = dot_eqns(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr)
    assert len(found) >= 3  # forward, input gradient, weight gradient
    for eqn in found:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.dtype(jnp.bfloat16)] * 2, eqn
        assert eqn.params["preferred_element_type"] == jnp.float32, eqn
    # remat "dots" keeps these products as it keeps plain dots (the custom VJP would otherwise hide them)
    def layer(x, w):
        return jnp.sum(jnp.tanh(dot_general_f32_accumulate(x, w, dn)).astype(jnp.float32))

    saved = saved_residuals(jax.checkpoint(layer, policy=REMAT_POLICIES["dots"]), x, w)
    assert "bf16[2,3,48,32] named 'linear_product'" in saved, saved
    # fp32 layers compute the plain dot (their custom VJP only reshapes the weight gradient), also kept by "dots"
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    saved = saved_residuals(jax.checkpoint(layer, policy=REMAT_POLICIES["dots"]), x32, w32)
    assert "f32[2,3,48,32] named 'linear_product'" in saved, saved
    np.testing.assert_array_equal(dot_general_f32_accumulate(x32, w32, dn), jax.lax.dot_general(x32, w32, dn))


def test_linear_weight_gradient_is_one_2d_product():
    """A float32 linear layer's weight gradient is one 2-D product of the input and the cotangent flattened to
    [tokens, channels] (autodiff contracts the three leading axes at once, and XLA's CPU backend copies both
    operands into a transposed layout for that), with autodiff's values. Bf16 layers, and float32 ones under
    sequence parallelism (frames split across devices: merging the axes would all-gather the activations),
    contract the leading axes in place."""
    x, w, c, dn, loss = linear_case(4, (2, 4, 36), jnp.float32)

    def autodiff(x, w):
        return jnp.sum(jax.lax.dot_general(x, w, dn) * c)

    for got, want in zip(jax.grad(loss, (0, 1))(x, w), jax.grad(autodiff, (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    for dtype, flat in ((jnp.float32, True), (jnp.bfloat16, False)):
        eqns = dot_eqns(jax.make_jaxpr(jax.grad(loss, 1))(x.astype(dtype), w.astype(dtype)).jaxpr)
        shapes = [tuple(v.aval.shape for v in eqn.invars) for eqn in eqns]
        assert (((288, 64), (288, 32)) in shapes) == flat, (dtype, shapes)
        assert (((2, 4, 36, 64), (2, 4, 36, 32)) in shapes) != flat, (dtype, shapes)

    mesh = make_mesh(None, devices=jax.devices()[:2], sequence=2)
    spec = NamedSharding(mesh, logical_to_spec(("batch", "frames", None, None)))
    xs = jax.device_put(x, spec)
    with jax.set_mesh(mesh):
        eqns = dot_eqns(jax.make_jaxpr(jax.grad(loss, 1))(xs, w).jaxpr)
        assert all(len(eqn.invars[0].aval.shape) == 4 for eqn in eqns), [eqn.invars for eqn in eqns]
        hlo = jax.jit(jax.grad(loss, 1)).lower(xs, w).compile().as_text()
    assert "all-gather" not in hlo
    np.testing.assert_allclose(jax.jit(jax.grad(loss, 1))(xs, w), jax.grad(autodiff, 1)(x, w), rtol=1e-5, atol=1e-4)


def test_linear_bias_gradient_sums_in_fp32():
    """A layer computes what ``nnx.Linear`` computes; a bf16 layer's bias gradient is the float32 sum of its
    bf16 cotangent, not that sum rounded to bf16 (autodiff's bf16 reduction, slow on XLA's CPU backend)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 48, 64)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(2, 3, 48, 32)), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        layer = randomize(linear(64, 32, ("embed", "mlp"), nnx.Rngs(0), dtype=dtype), 2)
        plain = nnx.Linear(64, 32, dtype=dtype, dot_general=dot_general_f32_accumulate, rngs=nnx.Rngs(0))
        plain.kernel.value, plain.bias.value = layer.kernel.value, layer.bias.value
        np.testing.assert_array_equal(np.asarray(layer(x), np.float32), np.asarray(plain(x), np.float32))

        def loss(model):
            return jnp.sum(model(x).astype(jnp.float32) * c)

        got = nnx.grad(loss)(layer)
        cotangent = c.astype(dtype).astype(jnp.float32)  # d loss / d output, in the layer's dtype
        assert got["bias"].value.dtype == jnp.float32
        # 288 terms, summed in float32 either way (bf16: sum_f32's dot with ones; fp32: autodiff's reduce)
        exact = np.asarray(cotangent, np.float64).sum((0, 1, 2))
        np.testing.assert_allclose(got["bias"].value, exact, rtol=1e-6, atol=3e-5)
        want = nnx.grad(loss)(plain)
        np.testing.assert_allclose(got["kernel"].value, want["kernel"].value, rtol=1e-6, atol=1e-6)


def test_adaln_vectors_broadcast_with_fp32_gradient_sums():
    """modulate and gate compute the plain formulas; a bf16 adaLN vector's gradient is the float32 sum of the
    bf16 cotangent over the tokens it was broadcast to (not rounded to bf16 on the way)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 3, 40, 16)), jnp.bfloat16)
    shift, scale, g = (jnp.asarray(rng.normal(size=(2, 1, 1, 16)), jnp.bfloat16) for _ in range(3))
    np.testing.assert_array_equal(np.asarray(modulate(x, shift, scale), np.float32),
                                  np.asarray(x * (1 + scale) + shift, np.float32))
    np.testing.assert_array_equal(np.asarray(gate(g, x), np.float32), np.asarray(g * x, np.float32))
    c = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    got = jax.grad(lambda v: jnp.sum(expand(v, x.shape).astype(jnp.float32) * c))(shift)
    assert got.dtype == jnp.bfloat16 and got.shape == shift.shape
    want = c.astype(jnp.bfloat16).astype(jnp.float32).sum((1, 2), keepdims=True)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want.astype(jnp.bfloat16), np.float32))


def test_bf16_bias_and_adaln_gradients_sum_as_dots_with_ones():
    """A bf16 layer's bias and adaLN-vector gradients are float32 dots with ones (sum_f32): no reduce of the
    token axes is left for XLA's CPU backend to turn into slow strided reduce-windows."""
    rng = np.random.default_rng(5)
    y = jnp.asarray(rng.normal(size=(2, 3, 40, 16)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 1, 1, 16)), jnp.bfloat16)
    c = jnp.asarray(rng.normal(size=y.shape), jnp.float32)

    def loss(b, v):
        return jnp.sum(modulate(add_bias(y, b), v, v).astype(jnp.float32) * c)

    got = jax.grad(loss, (0, 1))(b, v)
    want = jax.grad(lambda b, v: jnp.sum(((y.astype(jnp.float32) + b) * (1 + v) + v) * c), (0, 1))(
        b, v.astype(jnp.float32))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=2e-2, atol=0.5)
    for axes in [(0, 2), (1, 3), ()]:  # a summed last axis falls back to a reduce
        np.testing.assert_allclose(sum_f32(c, axes), c.sum(axes), rtol=1e-5, atol=1e-5)
    assert "reduce-window" not in jax.jit(jax.grad(loss, (0, 1))).lower(b, v).compile().as_text()
    sums = [e for e in dot_eqns(jax.make_jaxpr(jax.grad(loss, (0, 1)))(b, v).jaxpr)
            if e.params["preferred_element_type"] == jnp.float32]
    assert len(sums) >= 3, sums  # the bias sum and the two adaLN vectors' sums


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_bf16_attention_gradient_products_take_bf16_inputs(axis):
    """bf16 attention: the forward is the reference's, and its gradient (bf16 products into fp32 sums, as flash
    attention's backward) matches the fp32 gradient of the same bf16 values to bf16 accuracy."""
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 10, 2, 8)), jnp.bfloat16) for _ in range(3))
    c = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [4]])) if axis == "spatial" else None

    def loss(q, k, v, dtype=jnp.bfloat16):
        out = xla_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), axis=axis, mask=mask)
        return jnp.sum(out.astype(jnp.float32) * c)

    want = jax.grad(functools.partial(loss, dtype=jnp.float32), (0, 1, 2))(q, k, v)
    got = jax.grad(loss, (0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), atol=2e-2 * float(jnp.abs(w).max()))
    products = [e for e in dot_eqns(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, k, v).jaxpr)
                if e.params["preferred_element_type"] == jnp.float32]
    assert len(products) >= 5  # the logits, then dV, dP, dQ, dK (the output product is bf16 -> bf16)
    for eqn in products:
        assert [x.aval.dtype for x in eqn.invars] == [jnp.dtype(jnp.bfloat16)] * 2, eqn


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_fp32_attention_runs_heads_major_with_the_written_out_gradient(axis):
    """fp32 attention: forward and gradient equal autodiff through a plain softmax on the native layout, and every
    product (forward and backward) is a batched matmul over heads-major [B, X, H, N, D] tiles: batch axes
    leading, contraction last, so XLA transposes nothing inside the products."""
    rng = np.random.default_rng(5)
    q, k, v, c = (jnp.asarray(rng.normal(size=(2, 6, 10, 2, 8)), jnp.float32) for _ in range(4))
    mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [4]])) if axis == "spatial" else None
    Q, K, L = ("btqhd", "btkhd", "bthqk") if axis == "spatial" else ("bqshd", "bkshd", "bshqk")

    def reference(q, k, v):
        logits = jnp.einsum(f"{Q},{K}->{L}", q * 8**-0.5, k)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, None, :], logits, jnp.finfo(jnp.float32).min)
        return jnp.einsum(f"{L},{K}->{Q}", jax.nn.softmax(logits, -1), v)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * c)

    ours = functools.partial(xla_attention, axis=axis, mask=mask)
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), atol=1e-6)
    want = jax.grad(functools.partial(loss, reference), (0, 1, 2))(q, k, v)
    got = jax.grad(functools.partial(loss, ours), (0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert "custom_vjp_call" in str(jax.make_jaxpr(ours)(q, k, v))  # the backward is _softmax_attention's
    jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, ours), (0, 1, 2)))(q, k, v)
    products = dot_eqns(jaxpr.jaxpr)
    assert len(products) == 6, products  # logits and output, then dV, dP, dQ, dK
    for eqn in products:
        (contract, _), batch = eqn.params["dimension_numbers"]
        assert batch == ((0, 1, 2), (0, 1, 2)) and contract[0] in (3, 4), eqn


def test_fps_and_input_errors(tiny):
    model = nnx.eval_shape(lambda: STDiT(stdit_config(**TINY, fps_conditioning=True), rngs=nnx.Rngs(0)))
    x, t, y, mask = batch(1)
    graphdef, state = nnx.split(model)
    with pytest.raises(ValueError, match="fps"):
        jax.eval_shape(lambda s: nnx.merge(graphdef, s)(x, t, y, mask), state)
    assert float(jnp.abs(STDiT(stdit_config(**TINY, fps_conditioning=True), rngs=nnx.Rngs(0))
                         .fps_embedder.mlp.fc2.kernel[...]).max()) == 0  # fps branch starts at zero
    with pytest.raises(ValueError, match="not divisible by the patch"):
        tiny(x[:, :, :7], t, y, mask)


# --------------------------------------------------------------------------------------
# DiT baselines
# --------------------------------------------------------------------------------------


def test_dit_shares_stdit_parts(monkeypatch):
    model = nnx.eval_shape(lambda: DiT(dit_config(**TINY, conditioning="cross-attn"), rngs=nnx.Rngs(0)))
    assert isinstance(model.blocks.attn, SelfAttention) and isinstance(model.blocks.cross_attn, CrossAttention)
    assert isinstance(model.final_layer, FinalLayer)
    # no second attention: the DiT's forward goes through the shared SelfAttention / CrossAttention
    calls = []
    for cls in (SelfAttention, CrossAttention):
        original = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _f=original, _n=cls.__name__, **k: (calls.append(_n),
                                                                                                _f(self, *a, **k))[1])
    x, t, y, mask = batch(1)
    graphdef, state = nnx.split(model)
    jax.eval_shape(lambda s: nnx.merge(graphdef, s)(x, t, y, mask), state)
    assert {"SelfAttention", "CrossAttention"} <= set(calls), calls
    with pytest.raises(ValueError, match="conditioning"):
        dit_config(**TINY, conditioning="film")
    with pytest.raises(ValueError, match="temporal"):
        dit_config(**TINY, temporal_rope=True)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_dit_conditionings(conditioning):
    model = randomize(DiT(dit_config(**TINY, conditioning=conditioning), rngs=nnx.Rngs(0)), seed=1)
    x, t, y, mask = batch()
    x, y = x[:1], y[:1]
    noise = jnp.asarray(np.random.default_rng(2).normal(size=y.shape[-1]), jnp.float32)
    xs = jnp.concatenate([x, x, x, x.at[:, 0, 0, 0].add(1.0)])  # sample 3: one pixel of frame 0 changed
    ys = jnp.concatenate([y, y.at[:, 6].set(noise), y.at[:, 2].set(noise), y])  # padding / real token changed
    out = run(model, xs, t, ys, mask)
    assert out.shape == (4, 4, 8, 12, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)  # caption padding is ignored
    assert not np.allclose(out[2], out[0], atol=1e-4)  # the caption conditions the video
    assert not np.allclose(out[3, -1], out[0, -1], atol=1e-5)  # full attention: frame 0 reaches the last frame
