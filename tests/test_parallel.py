"""Scale-out on 8 forced CPU devices: mesh, FSDP, DSP / Ulysses / ring sequence parallelism, collectives.

Every sharded result is compared with the same function on one device. Models are tiny
(depth 1, width 64, 8 heads, 8 latent frames of 8×8 tokens); parameters are random normal
(σ = 0.1), so that zero-initialised gates and projections do not hide a wrong gradient. Programs are compiled
with LLVM optimisation off (``FAST``): it halves compile time on a loaded CPU and leaves the HLO
(partitioning, collectives, buffer assignment) unchanged.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.shapes_tiny import get_config
from vidjax.diffusion import build_diffusion
from vidjax.models.t2v import build_model, trainable
from vidjax.models.vae import build_vae
from vidjax.parallel import hlo, sequence
from vidjax.parallel import sharding as shd
from vidjax.parallel.mesh import MeshError, make_mesh, parse_mesh
from vidjax.parallel.rules import LOGICAL_AXIS_RULES, MESH_AXES
from vidjax.tools import shardcheck
from vidjax.training import diffusion as train
from vidjax.training.state import ModelParts, make_optimizer

REPO = Path(__file__).resolve().parents[1]
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]  # (data, fsdp, sequence), tensor = 1
TOL = 1e-5  # relative error, fp32
FAST = {"xla_backend_optimization_level": 0}


def tiny_config(name: str = "stdit", **model):
    c = get_config("quick")
    c.data.frames, c.data.height, c.data.width = 8, 16, 16
    c.train.batch_size = 8
    c.model.update(dict(name=name, depth=1, hidden=64, heads=8, patch=(1, 2, 2)), **model)  # T' = 8, S = 64
    return c


class Setup:
    """A randomised model, its loss, and one fixed batch."""

    def __init__(self, config):
        self.config = config
        self.vae = build_vae(config.vae)
        # abstract build (eager initialisers would compile dozens of tiny programs), then random values
        model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0), latent_channels=self.vae.latent_channels))
        self.parts = ModelParts(model, trainable(model))
        rng = np.random.default_rng(0)
        self.parts.params, self.parts.rest = (
            jax.tree.map(lambda v: rng.normal(0, 0.1, v.shape).astype(v.dtype), tree)
            for tree in (self.parts.params, self.parts.rest))
        self.loss_fn = train.make_loss_fn(self.parts, build_diffusion(config.diffusion), self.vae)
        d, B, L = config.data, config.train.batch_size, config.text.max_length
        self.batch = {"video": rng.uniform(-1, 1, (B, d.frames, d.height, d.width, 3)).astype(np.float32),
                      "ids": rng.integers(1, config.text.vocab_size, (B, L)).astype(np.int32),
                      "mask": np.arange(L)[None].repeat(B, 0) < rng.integers(3, L + 1, (B, 1))}

    def grad_fn(self):
        return jax.value_and_grad(lambda p, r, b: self.loss_fn(p, b, jax.random.key(7), r)[0])

    def single(self):
        """Loss and gradients on one device."""
        dev = jax.devices()[0]
        put = lambda t: jax.device_put(t, dev)  # noqa: E731
        args = put(self.parts.params), put(self.parts.rest), put(self.batch)
        return jax.jit(self.grad_fn()).lower(*args).compile(FAST)(*args)

    def sharded(self, mesh):
        """(loss, grads, compiled) with ZeRO-3 parameters, the batch over data × fsdp, under ``mesh``."""
        p_sh = shd.param_shardings(self.parts.params, self.parts.param_axes, mesh)
        r_sh = shd.param_shardings(self.parts.rest, self.parts.rest_axes, mesh)
        b_sh = {k: shd.batch_sharding(mesh, v.ndim) for k, v in self.batch.items()}
        args = shd.place(self.parts.params, p_sh), shd.place(self.parts.rest, r_sh), shd.place(self.batch, b_sh)
        with jax.set_mesh(mesh):
            f = jax.jit(self.grad_fn(), in_shardings=(p_sh, r_sh, b_sh),
                        out_shardings=(NamedSharding(mesh, P()), p_sh))
            compiled = f.lower(*args).compile(FAST)
            loss, grads = compiled(*args)
        assert jax.tree.leaves(grads)[0].sharding.mesh.shape == mesh.shape
        return loss, grads, compiled


def mesh_of(shape):
    return make_mesh(dict(data=shape[0], fsdp=shape[1], sequence=shape[2], tensor=1))


def rel_errors(got, want) -> dict:
    """Per-leaf ||got - want|| / ||want|| (absolute norm where ``want`` is 0)."""
    flat_g, flat_w = jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)
    out = {}
    for (path, g), w in zip(flat_g, flat_w, strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        den = np.linalg.norm(w)
        out[jax.tree_util.keystr(path)] = np.linalg.norm(g - w) / (den if den > 0 else 1.0)
    return out


def assert_equivalent(setup: Setup, ref, meshes):
    ref_loss, ref_grads = ref
    assert np.isfinite(float(ref_loss))
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(ref_grads)]
    assert sum(n > 0 for n in norms) > 0.9 * len(norms)  # randomised: nearly every parameter gets a gradient
    results = {}
    for shape in meshes:
        loss, grads, compiled = setup.sharded(mesh_of(shape))
        loss_err = abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))
        errs = rel_errors(grads, ref_grads)
        worst = max(errs, key=errs.get)
        print(f"{setup.config.model.name}/{setup.config.model.sequence_parallel} mesh {shape}: loss rel err "
              f"{loss_err:.1e}, worst gradient rel err {errs[worst]:.1e}")
        assert loss_err <= TOL, (shape, loss_err)
        assert errs[worst] <= TOL, (shape, worst, errs[worst])
        results[shape] = compiled
    return results


# --------------------------------------------------------------------------------------
# Mesh and table
# --------------------------------------------------------------------------------------


def test_mesh_axes_fill_and_errors():
    mesh = make_mesh(dict(data=-1, fsdp=2, sequence=2))
    assert mesh.axis_names == MESH_AXES and dict(mesh.shape) == {"data": 2, "fsdp": 2, "sequence": 2, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert make_mesh(None).shape["data"] == 8
    with pytest.raises(MeshError, match=r"product 2 × 2 × 3 × 1 = 12 ≠ 8 total devices"):
        make_mesh(dict(data=2, fsdp=2, sequence=3))
    with pytest.raises(MeshError, match=r"8 total devices are not divisible by 3"):
        make_mesh(dict(data=-1, sequence=3))
    with pytest.raises(MeshError, match="unknown axis 'seq'"):
        parse_mesh("seq=2")
    # hybrid layout: 2 "slices" (groups of 4 devices) on dcn_data, the rest within a slice
    devs = jax.devices()

    class Dev:  # a device with a slice index, as on a multi-slice TPU
        def __init__(self, d):
            self.d, self.slice_index, self.id = d, d.id // 4, d.id

        def __getattr__(self, k):
            return getattr(self.d, k)

    from vidjax.parallel.mesh import mesh_shape

    assert mesh_shape(dict(data=-1, fsdp=2, sequence=1, tensor=1, dcn_data=2, dcn_fsdp=1, dcn_sequence=1,
                           dcn_tensor=1), 8, 2) == ([2, 2, 1, 1], [2, 1, 1, 1])
    assert len({d.slice_index for d in map(Dev, devs)}) == 2


def test_one_table_and_no_mesh_axis_names_outside_it():
    assert {"embed", "mlp", "heads", "layers", "batch", "frames", "tokens"} <= set(LOGICAL_AXIS_RULES)
    assert LOGICAL_AXIS_RULES["frames"] == LOGICAL_AXIS_RULES["tokens"] == "sequence"
    names = "|".join(MESH_AXES)
    rules = REPO / "vidjax" / "parallel" / "rules.py"
    files = [p for d in ("vidjax", "kernels", "configs") for p in (REPO / d).rglob("*.py") if p != rules]
    assert len(files) > 50
    for path in files:
        hits = re.findall(rf"""["']({names})["']""", path.read_text())
        assert not hits, f"{path} names mesh axes {hits}; use vidjax.parallel.rules (logical names, MESH_AXES)"


def test_distributed_settings_take_process_0_from_the_config(monkeypatch):
    from ml_collections import ConfigDict

    from vidjax.parallel.distributed import _setting

    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    c = ConfigDict(dict(distributed=dict(coordinator="", num_processes=0, process_id=0)))
    assert _setting(c, "process_id", "JAX_PROCESS_ID", -1) == 0  # 0 is a process id, not "unset"
    c.distributed.process_id = -1
    assert _setting(c, "process_id", "JAX_PROCESS_ID", -1) == 3  # unset: the environment's
    monkeypatch.delenv("JAX_PROCESS_ID")
    assert _setting(c, "process_id", "JAX_PROCESS_ID", -1) == -1


def test_bad_batch_and_frames_are_one_line_errors(stdit):
    mesh = mesh_of((2, 2, 2))
    with pytest.raises(ValueError, match=r"train.batch_size=6 is not divisible by the data axes data × fsdp = "
                                         r"2 × 2 = 4"):
        shd.check_batch(6, mesh)
    c = tiny_config()
    c.data.frames = 6
    vae = build_vae(c.vae)
    with pytest.raises(ValueError, match=r"config.data.frames=6 gives 6 latent frames .* not divisible by mesh "
                                         r"sequence=4"):
        train.check_parallel(c, mesh_of((2, 1, 4)), vae)
    # the model itself refuses too (e.g. when called outside vidjax.train)
    s = stdit[0]
    model = s.parts.merge(s.parts.params)
    x = jnp.zeros((8, 6, 16, 16, 3))
    with jax.set_mesh(mesh_of((2, 1, 4))), pytest.raises(ValueError, match=r"6 latent frames are not divisible "
                                                                              r"by mesh sequence=4"):
        jax.eval_shape(lambda: model(x, jnp.zeros(8), {"ids": s.batch["ids"], "mask": s.batch["mask"]}))
    msg = str(pytest.raises(ValueError, shd.check_batch, 6, mesh).value)
    assert "\n" not in msg


# --------------------------------------------------------------------------------------
# Equivalence with one device: STDiT + DSP, DiT + Ulysses, STDiT + ring
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdit():
    s = Setup(tiny_config("stdit"))
    return s, s.single()


@pytest.fixture(scope="module")
def stdit_dsp(stdit):
    setup, ref = stdit
    return assert_equivalent(setup, ref, MESHES)


def test_stdit_dsp_matches_one_device(stdit_dsp):
    assert set(stdit_dsp) == set(MESHES)


def test_dit_ulysses_matches_one_device():
    setup = Setup(tiny_config("dit"))
    compiled = assert_equivalent(setup, setup.single(), MESHES)
    # Ulysses: per block one all-to-all of [q|k|v] in and one of the output back, forward and backward
    a2a = [c for c in hlo.collectives(compiled[(1, 1, 8)].as_text()) if c.kind == "all-to-all"]
    assert sum(c.count for c in a2a) == 4 * setup.config.model.depth


def test_stdit_ring_matches_one_device(stdit):
    setup, ref = stdit
    ring = Setup(tiny_config("stdit", sequence_parallel="ring"))
    compiled = assert_equivalent(ring, ref, [(2, 1, 4)])
    colls = hlo.collectives(compiled[(2, 1, 4)].as_text())
    assert not [c for c in colls if c.kind == "all-to-all" and "shard_map" in c.op_name]
    assert sum(c.count for c in colls if c.kind == "collective-permute" and "ppermute" in c.op_name) > 0


DOCUMENTED_DSP_OVER_ALLGATHER_SENT = 0.2521  # docs/parallel.md §6, tiny STDiT on (1, 1, 8): bytes sent per device


def test_allgather_matches_one_device_for_dit_and_stdit(stdit, stdit_dsp):
    """The all-gather scheme (FastSeq: local queries, K/V gathered over the sequence group): DiT over its flat
    tokens, STDiT in temporal attention only (frames stay whole per chip), both equal one device; its sequence
    collectives are all-gathers of K and V (and their gradients' reduction), never an all-to-all."""
    dit = Setup(tiny_config("dit", sequence_parallel="allgather"))
    compiled = assert_equivalent(dit, dit.single(), [(1, 1, 8), (2, 2, 2)])
    setup, ref = stdit
    compiled_st = assert_equivalent(Setup(tiny_config("stdit", sequence_parallel="allgather")), ref,
                                    [(1, 1, 8), (2, 2, 2)])
    for c in (compiled[(1, 1, 8)], compiled_st[(1, 1, 8)]):
        colls = hlo.collectives(c.as_text())
        assert not [c for c in colls if c.kind == "all-to-all" and "shard_map" in c.op_name]
        gathers = [c for c in colls if c.kind == "all-gather" and "shard_map" in c.op_name]
        assert sum(c.count for c in gathers) == 2 * setup.config.model.depth  # K and V, once per block forward
        B, T, S, C = 8, 8, 64, 64
        assert all(c.bytes == B * T * S * C * 4 for c in gathers)  # each the whole K (or V) of the clip

    def sent(compiled):
        return sum(c.wire_bytes * c.count for c in hlo.collectives(compiled.as_text()) if c.moves_data)

    ratio = sent(stdit_dsp[(1, 1, 8)]) / sent(compiled_st[(1, 1, 8)])
    print(f"STDiT bytes sent per device, DSP / all-gather: {ratio:.4f}")
    assert ratio == pytest.approx(DOCUMENTED_DSP_OVER_ALLGATHER_SENT, abs=5e-4)


NEW_BACKBONES = {  # issue 19: Latte's four variants and a U-ViT (all inputs as tokens, long skips)
    "latte_interleaved": dict(name="latte", variant="interleaved"),
    "latte_late_temporal": dict(name="latte", variant="late_temporal", sequence_parallel="ulysses"),
    "latte_factorized_block": dict(name="latte", variant="factorized_block", skips=True),
    "latte_factorized_heads": dict(name="latte", variant="factorized_heads"),
    "uvit": dict(name="dit", conditioning="token-concat", skips=True, depth=2),
}


def train_losses(setup: Setup, mesh=None, steps: int = 20) -> list[float]:
    """``steps`` AdamW steps on the fixed batch: one device (``mesh=None``) or ZeRO-3 under ``mesh``."""
    import optax

    tx = optax.adamw(3e-3)
    grad = setup.grad_fn()

    def step(params, opt, rest, batch):
        loss, g = grad(params, rest, batch)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    params, rest, batch = setup.parts.params, setup.parts.rest, setup.batch
    if mesh is None:
        dev = jax.devices()[0]
        params, rest, batch = jax.device_put((params, rest, batch), dev)
        run = jax.jit(step)
    else:
        p_sh = shd.param_shardings(params, setup.parts.param_axes, mesh)
        r_sh = shd.param_shardings(rest, setup.parts.rest_axes, mesh)
        b_sh = {k: shd.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
        o_sh = shd.opt_shardings(tx, params, p_sh, mesh)
        params, rest, batch = shd.place(params, p_sh), shd.place(rest, r_sh), shd.place(batch, b_sh)
        run = jax.jit(step, in_shardings=(p_sh, o_sh, r_sh, b_sh), out_shardings=(p_sh, o_sh, None))
    opt = tx.init(params)
    losses = []
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        compiled = run.lower(params, opt, rest, batch).compile(FAST)
        for _ in range(steps):
            params, opt, loss = compiled(params, opt, rest, batch)
            losses.append(float(loss))
    return losses


@pytest.mark.parametrize("backbone", sorted(NEW_BACKBONES))
def test_new_backbones_train_20_steps_on_8_devices_like_one(backbone):
    """Each new model trains 20 AdamW steps with FSDP over 8 devices and with sequence parallelism (data 2 ×
    sequence 4); every step's loss equals the one-device run to 1e-5."""
    setup = Setup(tiny_config(**NEW_BACKBONES[backbone]))
    ref = train_losses(setup)
    assert ref[-1] < ref[0]  # it trains
    for shape in ((1, 8, 1), (2, 1, 4)):
        got = train_losses(setup, mesh_of(shape))
        err = max(abs(g - w) / abs(w) for g, w in zip(got, ref, strict=True))
        print(f"{backbone} mesh {shape}: worst loss rel err over 20 steps {err:.1e}")
        assert err <= TOL, (shape, err)


# --------------------------------------------------------------------------------------
# Communication: the planned all-to-alls, nothing gathered, DSP vs Ulysses
# --------------------------------------------------------------------------------------


def test_dsp_collectives_are_exactly_the_planned_all_to_alls(stdit, stdit_dsp):
    setup, _ = stdit
    depth, (B, T, S, C) = setup.config.model.depth, (8, 8, 64, 64)
    colls = hlo.collectives(stdit_dsp[(1, 1, 8)].as_text())
    a2a = [c for c in colls if c.kind == "all-to-all"]
    fwd = sum(c.count for c in a2a if "transpose(" not in c.op_name)
    bwd = sum(c.count for c in a2a if "transpose(" in c.op_name)
    assert (fwd, bwd) == (2 * depth, 2 * depth), [(c.op_name, c.count) for c in a2a]
    assert all(c.bytes == B * T * S * C * 4 // 8 for c in a2a)  # each moves the local activation [B, T/8, S, C]
    assert not [c for c in colls if c.kind in ("all-gather", "collective-permute")]  # nothing gathered
    # with FSDP and data parallelism on top: the same sequence all-to-alls; all-gathers are weights only
    colls = hlo.collectives(stdit_dsp[(2, 2, 2)].as_text())
    ours = [c for c in colls if c.kind == "all-to-all" and "shard_map" in c.op_name]
    assert sum(c.count for c in ours) == 4 * depth
    gathered = [c for c in colls if c.kind == "all-gather"]
    assert gathered and all(len(shape) <= 2 for c in gathered for _, shape in c.shapes), \
        [c.shapes for c in gathered if any(len(s) > 2 for _, s in c.shapes)]


def test_loop_multiplicity_counts_each_scanned_block():
    mesh = mesh_of((1, 1, 8))

    def f(x):
        def body(x, _):
            return sequence.split_frames(sequence.split_tokens(x) * 2.0, x.shape[2]), None

        return jax.lax.scan(body, x, None, length=3)[0]

    x = jax.ShapeDtypeStruct((2, 8, 16, 4), jnp.float32, sharding=NamedSharding(mesh, P(None, "sequence")))
    with jax.set_mesh(mesh):
        text = jax.jit(f).lower(x).compile(FAST).as_text()
    assert sum(c.count for c in hlo.collectives(text) if c.kind == "all-to-all") == 6


DOCUMENTED_TOTAL_RATIO = 0.359  # docs/parallel.md §4, tiny model: collectives that move data


def test_dsp_moves_a_quarter_of_ulysses_bytes(stdit_dsp):
    """Both on the same STDiT and mesh (1, 1, 8): DSP 2 activation exchanges per block, Ulysses 8."""
    ulysses = Setup(tiny_config("stdit", sequence_parallel="ulysses"))
    mesh = mesh_of((1, 1, 8))
    report = {}
    for name, compiled in (("dsp", stdit_dsp[(1, 1, 8)]), ("ulysses", ulysses.sharded(mesh)[2])):
        colls = hlo.collectives(compiled.as_text())
        report[name] = (hlo.moved_bytes(colls, "all-to-all"), hlo.moved_bytes(colls))
        idle = [c for c in colls if not c.moves_data]
        assert all(c.group_size == 1 for c in idle)
    a2a_ratio = report["dsp"][0] / report["ulysses"][0]
    total_ratio = report["dsp"][1] / report["ulysses"][1]
    print(f"DSP/Ulysses all-to-all bytes {a2a_ratio:.3f}, all collective bytes {total_ratio:.3f}: {report}")
    assert a2a_ratio == pytest.approx(0.25, abs=1e-6)
    assert total_ratio == pytest.approx(DOCUMENTED_TOTAL_RATIO, abs=5e-4)  # docs/parallel.md §4


# --------------------------------------------------------------------------------------
# Memory: FSDP shards, sequence parallelism cuts activation memory
# --------------------------------------------------------------------------------------


def test_fsdp_shards_every_parameter_and_moment(stdit):
    setup, _ = stdit
    mesh = mesh_of((1, 8, 1))
    params = shd.place(setup.parts.params, shd.param_shardings(setup.parts.params, setup.parts.param_axes, mesh))
    total = sum(x.nbytes for x in jax.tree.leaves(setup.parts.params))
    per_device = shd.per_device_bytes(params)
    print(f"fsdp=8: {max(per_device.values()):,} of {total:,} parameter bytes per device "
          f"({max(per_device.values()) / total:.4f})")
    assert len(per_device) == 8 and max(per_device.values()) <= total / 8 * 1.05, (total, per_device)
    qkv = params["dit"]["blocks"]["attn"]["qkv"]["kernel"]  # [layers, embed, heads]
    assert qkv.sharding.spec == P(None, "fsdp", None)
    tx = make_optimizer(setup.config.train)
    opt = jax.jit(tx.init, out_shardings=shd.opt_shardings(tx, setup.parts.params, jax.tree.map(
        lambda x: x.sharding, params), mesh))(params)
    opt_total = sum(x.nbytes for x in jax.tree.leaves(opt))
    assert max(shd.per_device_bytes(opt).values()) <= opt_total / 8 * 1.05


def test_sequence_parallel_cuts_compiled_temp_memory():
    """Long clip: 32 frames of 32×32 latents, patch 1×2×2 -> 32 × 256 = 8192 tokens, batch 1, depth 1."""
    c = tiny_config()
    c.data.frames, c.data.height, c.data.width = 32, 32, 32
    c.train.batch_size = 1
    temp = {}
    for seq in (1, 4):
        mesh = make_mesh(c, devices=jax.devices()[:seq], data=1, sequence=seq)
        temp[seq] = shardcheck.analyze(c, mesh, step="grad", compiler_options=FAST).memory["temp"]
    ratio = temp[4] / temp[1]
    print(f"compiled temp memory: sequence=1 {temp[1]:,} B, sequence=4 {temp[4]:,} B, ratio {ratio:.3f}")
    assert ratio <= 0.40


def test_shardcheck_cli(capsys):
    shardcheck.main(["--config", "configs/shapes_tiny.py:quick", "--mesh", "data=2,fsdp=2,sequence=2",
                     "--config.model.depth=1", "--step", "grad", "--fast"])
    out = capsys.readouterr().out
    assert "per device" in out and "all-to-all" in out and "temp" in out
    with pytest.raises(MeshError, match="≠ 8 total devices"):
        shardcheck.main(["--config", "configs/shapes_tiny.py:quick", "--mesh", "data=3"])
