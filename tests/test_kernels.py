"""Pallas factorized-attention kernels (``vidjax.kernels``) against the XLA oracle.

* numerics in interpret mode on CPU, both kernel flavours (Mosaic-TPU and Triton-GPU),
  forward and all three input gradients, fp32 (<= 1e-5) and bf16 (<= 2e-2);
* lowering for real chips from CPU: ``jax.export`` for ``tpu`` and ``cuda`` at the STDiT-XL/2
  16x512^2 shape must contain only Mosaic / Triton kernels (no XLA attention fallback);
* under an 8-device mesh the kernels run per shard (``shard_map``): numerics, no all-gather in the
  compiled program, per-shard Mosaic calls in a sharded TPU export;
* the ``attention_impl`` registry, ``auto`` policy, splash path, a few STDiT train steps and 20 steps of
  the real training job on ``shapes`` (pallas vs xla).

Relative error = max |x - oracle| / max |oracle|, per tensor. The oracle is
``jax.nn.dot_product_attention`` in float32 on the same (possibly bf16-valued) inputs.
The default run covers every value of T, S, D, mask and dtype with a small covering set;
``-m slow`` runs the full cartesian sweep.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from vidjax.kernels import choose_impl, reference_attention, spatial_attention, temporal_attention

from vidjax.models import layers

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
FLAVOURS = ("tpu_interpret", "gpu_interpret")


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref|; absolute when ref is identically 0 (dq, dk of attention over T = 1)."""
    x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
    scale = np.abs(ref).max()
    return float(np.abs(x - ref).max() / (scale if scale > 0 else 1.0))


def make_inputs(shape_q, shape_kv, dtype, seed=0, masked=False, empty_row=False):
    kq, kk, kv, km, kd = jax.random.split(jax.random.PRNGKey(seed), 5)
    q = jax.random.normal(kq, shape_q, jnp.float32).astype(dtype)
    k = jax.random.normal(kk, shape_kv, jnp.float32).astype(dtype)
    v = jax.random.normal(kv, shape_kv, jnp.float32).astype(dtype)
    do = jax.random.normal(kd, shape_q, jnp.float32).astype(dtype)
    mask = None
    if masked:
        B, Sk = shape_kv[0], shape_kv[2]
        mask = jax.random.bernoulli(km, 0.6, (B, Sk)).at[:, 0].set(True)
        if empty_row:  # a batch element with every key masked (uniform average in the oracle)
            mask = mask.at[-1].set(False)
    return q, k, v, do, mask


def _kernel_vs_oracle(fn, axis, mask):
    """(q, k, v, do) -> ((o, dq, dk, dv) of fn, the same from the float32 oracle)."""
    f32 = lambda x: x.astype(jnp.float32)
    oracle = lambda a, b, c: reference_attention(a, b, c, axis=axis, mask=mask)

    def run(q, k, v, do):
        out, vjp = jax.vjp(fn, q, k, v)
        ref_out, ref_vjp = jax.vjp(oracle, f32(q), f32(k), f32(v))
        return (out, *vjp(do)), (ref_out, *ref_vjp(f32(do)))

    return run


def compare(problems: dict, tol: float) -> dict[str, float]:
    """problems: name -> (fn, axis, q, k, v, do, mask). Runs them all in one jit (one compile);
    returns {"name/o", "name/dq", ...: relative error} and asserts each is finite and <= tol."""
    runs = {n: _kernel_vs_oracle(fn, axis, mask) for n, (fn, axis, *_, mask) in problems.items()}
    args = {n: p[2:6] for n, p in problems.items()}
    results = jax.jit(lambda a: {n: runs[n](*a[n]) for n in runs})(args)
    errs = {}
    for name, (got, ref) in results.items():
        q = problems[name][2]
        assert all(x.dtype == q.dtype and x.shape == r.shape for x, r in zip(got, ref))
        errs |= {f"{name}/{t}": rel_err(x, r) for t, x, r in zip(("o", "dq", "dk", "dv"), got, ref)}
    print({k: f"{v:.2e}" for k, v in errs.items()})
    assert all(np.isfinite(e) for e in errs.values()), errs
    assert max(errs.values()) <= tol, errs
    return errs


def spatial_problem(backend, T, S, D, masked, dtype, B=None, H=None, seed=0, **blocks):
    # masked: two batch elements (one with every key masked), one head; else one element, two heads
    B, H = B or (2 if masked else 1), H or (1 if masked else 2)
    q, k, v, do, mask = make_inputs((B, T, S, H, D), (B, T, S, H, D), dtype, seed, masked=masked, empty_row=masked)
    fn = lambda a, b, c: spatial_attention(a, b, c, mask=mask, backend=backend, **blocks)
    return fn, "spatial", q, k, v, do, mask


def temporal_problem(backend, T, S, D, dtype, B=1, H=2, seed=1, **blocks):
    q, k, v, do, _ = make_inputs((B, T, S, H, D), (B, T, S, H, D), dtype, seed)
    fn = lambda a, b, c: temporal_attention(a, b, c, backend=backend, **blocks)
    return fn, "temporal", q, k, v, do, None


# Covering set: every value of T, S, D, mask and dtype appears, S = 100 (padding) meets a key
# mask, D = 72 runs in both dtypes. Masked cases include a batch element with every key masked.
# (T, S, D, masked, dtype)
CASES = [
    (1, 16, 32, True, jnp.float32),
    (5, 100, 72, False, jnp.float32),
    (16, 100, 72, True, jnp.bfloat16),
    (17, 256, 128, True, jnp.bfloat16),
]
case_id = lambda c: f"T{c[0]}-S{c[1]}-D{c[2]}-{'mask' if c[3] else 'nomask'}-{jnp.dtype(c[4]).name}"


@pytest.mark.parametrize("backend", FLAVOURS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numerics(backend, case):
    T, S, D, masked, dtype = case
    compare({"spatial": spatial_problem(backend, T, S, D, masked, dtype),
             "temporal": temporal_problem(backend, T, S, D, dtype)}, TOL[dtype])


@pytest.mark.parametrize("backend", FLAVOURS)
def test_multi_block_padding_and_cross_attention(backend):
    """Several q/k blocks with a ragged last block (online softmax across blocks, accumulation
    across blocks in both backward kernels), several temporal tiles, and the cross-attention
    shape (T = 1, Sq != Sk, caption mask)."""
    q, k, v, do, mask = make_inputs((2, 1, 200, 1, 72), (2, 1, 24, 1, 72), jnp.float32, masked=True)
    compare({
        "blocks": spatial_problem(backend, 2, 300, 72, True, jnp.float32, block_q=128, block_k=128),
        "tiles": temporal_problem(backend, 3, 40, 32, jnp.float32, block_positions=16),
        "cross": (lambda a, b, c: spatial_attention(a, b, c, mask=mask, backend=backend), "spatial",
                  q, k, v, do, mask),
    }, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", FLAVOURS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("T,S,D", list(itertools.product((1, 5, 16, 17), (16, 100, 256), (32, 72, 128))))
def test_numerics_sweep(backend, dtype, T, S, D):
    compare({"spatial": spatial_problem(backend, T, S, D, False, dtype),
             "spatial_mask": spatial_problem(backend, T, S, D, True, dtype),
             "temporal": temporal_problem(backend, T, S, D, dtype)}, TOL[dtype])


@pytest.mark.slow
def test_tpu_semantics_interpreter():
    """The Mosaic kernels under the TPU-semantics interpreter (models VMEM scratch, DMAs and the
    grid order): multi-block spatial with mask and padding, multi-tile temporal."""
    from jax.experimental.pallas import tpu as pltpu

    with pltpu.force_tpu_interpret_mode():
        compare({"spatial": spatial_problem("tpu", 2, 200, 72, True, jnp.float32, block_q=128, block_k=128),
                 "temporal": temporal_problem("tpu", 3, 40, 32, jnp.float32)}, 1e-5)


def test_oracles_agree():
    """The test oracle (jax.nn.dot_product_attention) matches the model's xla_attention."""
    q, k, v, _, mask = make_inputs((2, 3, 20, 2, 16), (2, 3, 20, 2, 16), jnp.float32, masked=True, empty_row=True)
    both = jax.jit(lambda q, k, v, m: [(layers.xla_attention(q, k, v, axis=a, mask=mm),
                                        reference_attention(q, k, v, axis=a, mask=mm))
                                       for a, mm in (("spatial", m), ("temporal", None))])
    for got, ref in both(q, k, v, mask):
        assert rel_err(got, ref) < 1e-6


# --------------------------------------------------------------------------------------
# Lowering for real chips from a CPU host
# --------------------------------------------------------------------------------------

XL = (1, 16, 1024, 16, 72)  # STDiT-XL/2 at 16x512^2: B, T, S = (512/8/2)^2, H, D
TRITON = "__gpu$xla.gpu.triton"
EXPORTS = {  # name: (function, argument shapes, (#kernels forward, #kernels with grad))
    "spatial": (lambda q, k, v: layers.attention(q, k, v, axis="spatial", impl="pallas"), [XL] * 3, (1, 3)),
    "temporal": (lambda q, k, v: layers.attention(q, k, v, axis="temporal", impl="pallas"), [XL] * 3, (1, 2)),
    "temporal_64x512": (lambda q, k, v: layers.attention(q, k, v, axis="temporal", impl="pallas"),
                        [(1, 64, 1024, 16, 72)] * 3, (1, 2)),
    "cross": (lambda q, k, v, m: layers.attention(q, k, v, axis="spatial", mask=m, impl="pallas"),
              [(1, 1, 16 * 1024, 16, 72), (1, 1, 120, 16, 72), (1, 1, 120, 16, 72), None], (1, 3)),
}


def _export_text(fn, shapes, platform, grad):
    args = [jax.ShapeDtypeStruct((1, 120), jnp.bool_) if s is None else jax.ShapeDtypeStruct(s, jnp.bfloat16)
            for s in shapes]
    if grad:
        fn = jax.grad(lambda *a, f=fn: f(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON)]  # Triton calls carry no compat guarantee
    return jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args).mlir_module()


@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "grad"])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_lowers_kernels(name, platform, grad):
    fn, shapes, (n_fwd, n_grad) = EXPORTS[name]
    text = _export_text(fn, shapes, platform, grad)
    targets = re.findall(r"stablehlo\.custom_call @([\w$.]+)\(", text)
    expected = {"tpu": "tpu_custom_call", "cuda": TRITON}[platform]
    assert targets == [expected] * (n_grad if grad else n_fwd), targets
    kind = "temporal" if name.startswith("temporal") else "spatial"
    names = {"spatial": ["fwd", "bwd_dkv", "bwd_dq"], "temporal": ["fwd", "bwd"]}[kind] if grad else ["fwd"]
    kernels = set(re.findall(r"vidjax_(?:spatial|temporal)_\w+", text))
    assert kernels == {f"vidjax_{kind}_{n}" for n in names}, kernels
    # The attention itself is inside the kernels: no XLA matmul, no interpret-mode loop.
    assert "stablehlo.dot_general" not in text and "stablehlo.while" not in text


# --------------------------------------------------------------------------------------
# Registry, auto policy, cuDNN and splash
# --------------------------------------------------------------------------------------


def test_registry_and_auto(caplog):
    assert {"xla", "pallas", "auto", "cudnn", "splash"} <= set(layers.ATTENTION_IMPLS)
    xl, cross_q, cross_k = (1, 16, 1024, 16, 72), (1, 1, 16384, 16, 72), (1, 1, 120, 16, 72)
    assert choose_impl("spatial", xl, xl, jnp.bfloat16, "cpu") == "xla"
    assert choose_impl("spatial", xl, xl, jnp.bfloat16, "tpu") == "pallas"
    assert choose_impl("temporal", xl, xl, jnp.bfloat16, "tpu") == "pallas"
    assert choose_impl("spatial", cross_q, cross_k, jnp.bfloat16, "tpu") == "pallas"
    assert choose_impl("spatial", (1, 2, 16, 2, 8), (1, 2, 16, 2, 8), jnp.bfloat16, "tpu") == "xla"  # tiny
    assert choose_impl("spatial", xl, xl, jnp.bfloat16, "gpu") == "cudnn"
    assert choose_impl("spatial", xl, xl, jnp.float32, "gpu") == "pallas"
    assert choose_impl("temporal", (1, 1, 64, 2, 8), (1, 1, 64, 2, 8), jnp.float32, "gpu") == "xla"  # T = 1
    q, k, v, _, _ = make_inputs((1, 2, 8, 2, 8), (1, 2, 8, 2, 8), jnp.float32)
    with caplog.at_level(logging.INFO, logger="vidjax.kernels"):
        for _ in range(2):
            out = layers.attention(q, k, v, axis="temporal", impl="auto")
    assert len([r for r in caplog.records if "attention_impl=auto" in r.message]) == 1
    np.testing.assert_allclose(out, layers.xla_attention(q, k, v, axis="temporal"), rtol=1e-6)


def test_cudnn_needs_gpu():
    q, k, v, _, _ = make_inputs((1, 2, 8, 2, 8), (1, 2, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match="cudnn"):
        layers.attention(q, k, v, axis="spatial", impl="cudnn")


def test_splash_interpret():
    """splash (interpret mode on CPU): padding 100 -> 128 keys, key mask, one fully masked element."""
    q, k, v, do, mask = make_inputs((2, 2, 100, 2, 72), (2, 2, 100, 2, 72), jnp.float32, masked=True, empty_row=True)
    fn = lambda a, b, c: layers.attention(a, b, c, axis="spatial", mask=mask, impl="splash")
    compare({"splash": (fn, "spatial", q, k, v, do, mask)}, 1e-5)


# --------------------------------------------------------------------------------------
# Under a device mesh: one kernel call per shard (shard_map), no gathered activations
# --------------------------------------------------------------------------------------

MESHES = {  # 8 fake CPU devices (conftest); batch is ("data", "fsdp") in the logical table
    "data2-fsdp2-tensor2": dict(data=2, fsdp=2, tensor=2),  # batch over two mesh axes, heads split
    "data2-sequence2-tensor2": dict(data=2, sequence=2, tensor=2),  # frames / tokens split, heads split
}
CROSS_Q = ("batch", None, "tokens", "heads", None)  # cross-attention queries [B, 1, T*S, H, D]: tokens split
CROSS_KV = ("batch", None, None, "heads", None)  # caption keys [B, 1, L, H, D]: whole


def _vjp_outputs(attend, q, k, v, do):
    """(o, dq, dk, dv) of ``attend(q, k, v)`` with output cotangent ``do``."""
    o, vjp = jax.vjp(attend, q, k, v)
    return (o, *vjp(do))


@pytest.mark.parametrize("mesh_shape", list(MESHES))
def test_pallas_under_mesh_runs_per_shard(mesh_shape):
    """jit of pallas spatial, temporal and cross attention (forward + the three gradients) on sharded inputs
    under an 8-device mesh: the kernels run per shard (``kernels/sharding.py``), so the compiled program
    all-gathers nothing and the results keep the inputs' sharding; they equal the XLA oracle (fp32)."""
    from vidjax.models.stdit import QKV_FRAMES, QKV_TOKENS
    from vidjax.parallel.mesh import make_mesh
    from vidjax.parallel.rules import named_sharding

    mesh = make_mesh(MESHES[mesh_shape])
    q, k, v, do, mask = make_inputs((4, 4, 32, 2, 16), (4, 4, 32, 2, 16), jnp.float32, masked=True, empty_row=True)
    cross = make_inputs((4, 1, 64, 2, 16), (4, 1, 8, 2, 16), jnp.float32, seed=1, masked=True)
    problems = {  # name: (axis, layout of q and do, layout of k and v, (q, k, v, do, mask)), as the model lays them
        "spatial": ("spatial", QKV_FRAMES, QKV_FRAMES, (q, k, v, do, mask)),  # T split
        "temporal": ("temporal", QKV_TOKENS, QKV_TOKENS, (q, k, v, do, None)),  # S split
        "cross": ("spatial", CROSS_Q, CROSS_KV, cross),  # query tokens split, caption whole
    }

    def place(q_axes, kv_axes, arrays):
        put = lambda x, axes: None if x is None else jax.device_put(x, named_sharding(mesh, axes))
        return tuple(put(x, axes) for x, axes in zip(arrays, (q_axes, kv_axes, kv_axes, q_axes, ("batch", None))))

    def kernels(args):
        return {name: _vjp_outputs(functools.partial(layers.attention, axis=problems[name][0], mask=mask,
                                                     impl="pallas"), q, k, v, do)
                for name, (q, k, v, do, mask) in args.items()}

    args = {name: place(*p[1:]) for name, p in problems.items()}
    with jax.set_mesh(mesh):
        compiled = jax.jit(kernels).lower(args).compile()
        got = compiled(args)
    gathers = [line.strip()[:160] for line in compiled.as_text().splitlines() if "all-gather" in line]
    assert not gathers, gathers[:3]
    for name, (axis, q_axes, kv_axes, (q, k, v, do, mask)) in problems.items():
        ref = _vjp_outputs(functools.partial(reference_attention, axis=axis, mask=mask), q, k, v, do)
        errs = {t: rel_err(x, r) for t, x, r in zip(("o", "dq", "dk", "dv"), got[name], ref)}
        print(mesh_shape, name, {t: f"{e:.1e}" for t, e in errs.items()})
        assert max(errs.values()) <= 1e-5, (name, errs)
        for x, axes in zip(got[name], (q_axes, q_axes, kv_axes, kv_axes)):
            assert x.sharding.is_equivalent_to(named_sharding(mesh, axes), 5), (name, x.sharding)


def test_export_under_mesh_lowers_per_shard_kernels():
    """``jax.export`` for TPU of the XL/2-sized pallas gradient on a sharded 8-device mesh (batch over
    data x fsdp, heads over tensor): every Mosaic call sees one shard, [B/4, T, S, (H/2)*128], inside a
    manual (shard_map) region, and the module has no all-gather."""
    from jax.sharding import NamedSharding
    from vidjax.kernels.sharding import attention_specs

    from vidjax.parallel.mesh import make_mesh

    mesh = make_mesh(MESHES["data2-fsdp2-tensor2"])
    shape = (4, 16, 1024, 16, 72)  # B, T, S, H, D
    for axis in ("spatial", "temporal"):
        q_spec, kv_spec, _ = attention_specs(axis, shape, mesh)
        assert q_spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, None, "tensor", None)
        args = [jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, s))
                for s in (q_spec, kv_spec, kv_spec)]
        grad = jax.grad(lambda q, k, v, a=axis: layers.attention(q, k, v, axis=a, impl="pallas").astype(
            jnp.float32).sum(), argnums=(0, 1, 2))
        with jax.set_mesh(mesh):
            text = jax.export.export(jax.jit(grad), platforms=["tpu"])(*args).mlir_module()
        operands = re.findall(r"@tpu_custom_call\(.*\} : \(([^)]*)\) ->", text)
        assert len(operands) == {"spatial": 3, "temporal": 2}[axis], operands
        for types in operands:  # q, k, v (and dO) of one shard in the kernels' [B, T, S, H*Dp] view
            assert "tensor<1x16x1024x1024xbf16>" in types and "4x16" not in types, types
        assert "sdy.manual_computation" in text and "all_gather" not in text


# --------------------------------------------------------------------------------------
# STDiT with attention_impl=pallas vs xla
# --------------------------------------------------------------------------------------


def test_stdit_pallas_matches_xla():
    """A few SGD steps of a tiny STDiT: the pallas model (interpret mode, dispatch by platform)
    tracks the xla model's loss and gradients."""
    from flax import nnx

    from vidjax.models.stdit import STDiT, stdit_config

    cfg = dict(depth=1, hidden=64, heads=2, patch=(1, 2, 2), in_channels=4, caption_channels=32,
               model_max_length=8)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 8, 4))  # [B, T, H, W, C]: T=3, S=16 tokens
    t = jnp.array([10.0, 500.0])
    y = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 32))
    mask = jnp.array([[True] * 5 + [False] * 3, [True] * 8])
    target = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 8, 8, 8))

    def run(impl):
        model = STDiT(stdit_config(**cfg, attention_impl=impl), rngs=nnx.Rngs(0))
        graph, params = nnx.split(model)

        @jax.jit
        def step(params):
            def loss_fn(p):
                out = nnx.merge(graph, p)(x, t, y, mask)
                return jnp.mean((out - target) ** 2)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            return loss, grads, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

        losses = []
        for _ in range(3):  # the zero-initialised projections become non-zero after step 1
            loss, grads, params = step(params)
            losses.append(float(loss))
        return np.array(losses), grads

    loss_x, grads_x = run("xla")
    loss_p, grads_p = run("pallas")
    np.testing.assert_allclose(loss_p, loss_x, rtol=1e-5)
    assert loss_x[-1] < loss_x[0]
    for gp, gx in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_x)):
        if np.abs(np.asarray(gx)).max() > 0:
            assert rel_err(gp, gx) < 1e-4


def test_shapes_training_pallas_matches_xla(tmp_path):
    """Issue acceptance: 20 training steps of the default job on ``shapes`` (quick-sized model, same
    code path: loader, trainable text, rectified flow, AdamW, EMA) give the same loss curve with
    ``attention_impl=pallas`` (interpret mode on CPU) as with ``xla``, within bf16 tolerance."""
    from _helpers import losses, quick

    from configs.shapes_tiny import get_config
    from vidjax.training import run as train_run

    def run(impl):
        config = get_config("quick")
        config = quick(config, tmp_path, **{"model.attention_impl": impl, "train.steps": 20, "train.ckpt_every": 20,
                                            "train.log_every": 1, "sample.num_prompts": 0})
        train_run(config, tmp_path / impl)
        return np.array([v for _, v in sorted(losses(tmp_path / impl).items())])

    loss_x, loss_p = run("xla"), run("pallas")
    assert len(loss_x) == len(loss_p) == 20
    np.testing.assert_allclose(loss_p, loss_x, rtol=2e-2)
    assert loss_x[-5:].mean() < loss_x[:5].mean()  # it trains


def test_pallas_inside_ulysses():
    """Ulysses runs the attention inside its own shard_map (heads split, whole sequences): the pallas
    kernels work there too (that shard_map skips the varying-axes check pallas_call outputs cannot pass)."""
    from vidjax.models.stdit import QKV_TOKENS
    from vidjax.parallel import sequence
    from vidjax.parallel.mesh import make_mesh
    from vidjax.parallel.rules import named_sharding

    mesh = make_mesh(dict(data=1, fsdp=1, sequence=8, tensor=1))
    q, k, v, do, mask = make_inputs((1, 1, 64, 8, 16), (1, 1, 64, 8, 16), jnp.float32, masked=True)

    def attend(q, k, v, m):
        return layers.attention(q, k, v, axis="spatial", mask=m, impl="pallas")

    def fn(q, k, v):
        return sequence.ulysses(attend, q, k, v, mask, layout=QKV_TOKENS)

    placed = [jax.device_put(x, named_sharding(mesh, QKV_TOKENS)) for x in (q, k, v)]
    with jax.set_mesh(mesh):
        got = jax.jit(lambda q, k, v: _vjp_outputs(fn, q, k, v, do))(*placed)
    ref = _vjp_outputs(functools.partial(reference_attention, axis="spatial", mask=mask), q, k, v, do)
    for x, r in zip(got, ref):
        assert rel_err(x, r) <= 1e-5
