"""STDiT3 (Open-Sora v1.2): parity with a PyTorch STDiT3 written from v1.2's code, through the published
directory layout in both directions; the published XL/2 key set; strict loading errors; the v1.2 VAE directory.

The reference (tests/_stdit3_torch.py) keeps v1.2's module names, so its ``state_dict`` is the published one.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax.errors import InputError, MissingFileError
from vidjax.interop import (
    CheckpointMismatchError,
    from_pretrained,
    load_pretrained,
    save_stdit3_pretrained,
    stdit3_state_dict_shapes,
)
from vidjax.models.stdit3 import STDiT3, STDiT3Config, stdit3_config

torch = pytest.importorskip("torch")
ref = pytest.importorskip("_stdit3_torch")
pytestmark = pytest.mark.torch

# odd sizes: 5 heads of 8, caption 20 channels × 7 tokens, 3 input channels, a 3×5 patch grid
TINY = dict(depth=2, hidden_size=40, num_heads=5, caption_channels=20, model_max_length=7, in_channels=3,
            mlp_ratio=3.0)
B, T, H, W = 3, 3, 6, 10



def exit_code(main, argv) -> int:
    """The exit status of a command line's ``main`` run as ``python -m`` runs it (vidjax.cli.run)."""
    from vidjax import cli

    with pytest.raises(SystemExit) as e:
        cli.run("test", main, argv)
    return e.value.code

def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def inputs(seed: int = 0, h: int = H, w: int = W):
    """x [B, T, H, W, C] channels-last, padded captions (7, 4, 2 real tokens), clean frames in two samples."""
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.normal(size=(B, T, h, w, TINY["in_channels"])).astype(np.float32),
        t=np.array([900.0, 500.5, 10.0], np.float32),
        y=rng.normal(size=(B, TINY["model_max_length"], TINY["caption_channels"])).astype(np.float32),
        mask=(np.arange(TINY["model_max_length"])[None] < np.array([7, 4, 2])[:, None]).astype(np.int64),
        x_mask=np.array([[True, False, True], [False, False, True], [True, True, True]]),
        fps=np.array([24.0, 12.0, 30.0], np.float32),
        height=np.array([50.0, 50.0, 50.0], np.float32),  # the first sample's size is used, as in v1.2
        width=np.array([83.0, 83.0, 83.0], np.float32),
    )


def run_ref(model, d, x_mask=True, drop=None) -> np.ndarray:
    """The torch model on channels-last inputs; output back to [B, T, H, W, C]."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in d.items()}
    with torch.no_grad():
        out = model(t["x"].permute(0, 4, 1, 2, 3), t["t"], t["y"][:, None], mask=t["mask"],
                    x_mask=t["x_mask"] if x_mask else None, fps=t["fps"], height=t["height"], width=t["width"],
                    force_drop_ids=None if drop is None else torch.from_numpy(drop.astype(np.int64)))
    return out.permute(0, 2, 3, 4, 1).numpy()


def run_ours(model: STDiT3, d, x_mask=True, drop=None) -> np.ndarray:
    graphdef, state = nnx.split(model)
    h, w = float(d["height"][0]), float(d["width"][0])

    @jax.jit
    def fwd(state, x, t, y, mask, xm, fps, drop):
        return nnx.merge(graphdef, state)(x, t, y, mask, xm, fps, height=h, width=w, drop=drop)

    return np.asarray(fwd(state, d["x"], d["t"], d["y"], d["mask"], d["x_mask"] if x_mask else None, d["fps"],
                          None if drop is None else jnp.asarray(drop)))


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory):
    """A randomised v1.2 reference (every layer non-zero) saved in the published layout."""
    torch.manual_seed(0)
    model = ref.randomize_(ref.STDiT3(**TINY), seed=1).eval()
    path = tmp_path_factory.mktemp("stdit3") / "OpenSora-STDiT-v3"
    model.save_pretrained(path)
    return model, path


def test_import_parity_through_the_published_directory(torch_dir):
    torch_model, path = torch_dir
    # the layers v1.2 initialises to zero are randomised too
    assert float(torch_model.temporal_blocks[0].attn.proj.weight.detach().abs().min()) > 0
    ours, report = from_pretrained(path)
    assert isinstance(ours, STDiT3) and ours.cfg.hidden_size == 40 and ours.cfg.pred_sigma
    assert report.dropped == ["rope.freqs"] and len(report.loaded) == len(torch_model.state_dict()) - 1
    d = inputs()
    out = run_ours(ours, d)
    assert out.shape == (B, T, H, W, 2 * TINY["in_channels"])
    err_mask = rel_err(out, run_ref(torch_model, d))
    err_plain = rel_err(run_ours(ours, d, x_mask=False), run_ref(torch_model, d, x_mask=False))
    drop = np.array([True, False, True])
    err_null = rel_err(run_ours(ours, d, drop=drop), run_ref(torch_model, d, drop=drop))
    print(f"STDiT3 import parity: rel err x_mask {err_mask:.2e}, no mask {err_plain:.2e}, null caption "
          f"{err_null:.2e}")
    assert max(err_mask, err_plain, err_null) <= 1e-4
    # the mask and the null caption change the output (the comparisons above are not vacuous)
    assert rel_err(out, run_ours(ours, d, x_mask=False)) > 1e-2
    assert rel_err(out, run_ours(ours, d, drop=drop)) > 1e-2


def test_padding_of_sizes_not_divisible_by_the_patch(torch_dir):
    torch_model, path = torch_dir
    ours, _ = from_pretrained(path)
    d = inputs(seed=3, h=7, w=9)  # v1.2 pads H, W up to the patch and crops the output back
    out = run_ours(ours, d)
    assert out.shape == (B, T, 7, 9, 2 * TINY["in_channels"])
    assert rel_err(out, run_ref(torch_model, d)) <= 1e-4


def test_pallas_attention_matches_xla(torch_dir):
    """The Pallas kernels (interpret mode on CPU) in every STDiT3 attention: spatial, temporal with RoPE, cross."""
    _, path = torch_dir
    d = inputs(seed=4)
    xla, _ = from_pretrained(path)
    pallas, _ = from_pretrained(path, attention_impl="pallas")
    assert pallas.spatial_blocks.attn.impl == "pallas" and pallas.temporal_blocks.cross_attn.impl == "pallas"
    err = rel_err(run_ours(pallas, d), run_ours(xla, d))
    print(f"STDiT3 pallas vs xla attention: rel err {err:.1e}")
    assert err <= 1e-5


def host_random(cfg: STDiT3Config, seed: int) -> STDiT3:
    """An STDiT3 with random non-zero weights filled from numpy (no eager jax init)."""
    model = nnx.eval_shape(lambda: STDiT3(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            shape = var.get_value().shape
            var.set_value(jnp.asarray(rng.normal(0, 0.3 / max(shape[-1], 1) ** 0.25, shape).astype(np.float32)))
    return model


def test_unrolled_layers_equal_the_scan():
    """``scan_layers=False`` walks the spatial and temporal stacks block by block, with the same numbers."""
    d = inputs()
    scanned = run_ours(host_random(stdit3_config(**TINY), seed=4), d)
    unrolled = run_ours(host_random(stdit3_config(**TINY, scan_layers=False), seed=4), d)
    assert rel_err(unrolled, scanned) < 1e-6


def test_export_parity_loaded_strictly_by_the_reference(tmp_path):
    ours = host_random(stdit3_config(**TINY), seed=7)
    config = save_stdit3_pretrained(ours, tmp_path / "exported")
    assert config["model_type"] == "STDiT3" and config["hidden_size"] == 40 and config["patch_size"] == [1, 2, 2]
    torch_model = ref.STDiT3.from_pretrained(tmp_path / "exported").eval()  # load_state_dict(strict=True)
    d = inputs(seed=5)
    err = rel_err(run_ours(ours, d), run_ref(torch_model, d))
    print(f"STDiT3 export parity: rel err {err:.2e}")
    assert err <= 1e-4
    # and back: the exported directory re-imports to the same weights
    again, _ = from_pretrained(tmp_path / "exported")
    assert rel_err(run_ours(again, d), run_ours(ours, d)) == 0.0


# --------------------------------------------------------------------------------------
# The published XL/2, without allocating it
# --------------------------------------------------------------------------------------

XL2_PARAMS = 1_207_643_936  # nn.Parameters of v1.2's STDiT3-XL/2 without rope.freqs (a frozen parameter of 36)


def test_xl2_key_names_shapes_and_count():
    abstract = nnx.eval_shape(lambda: STDiT3(stdit3_config("STDiT3-XL/2"), rngs=nnx.Rngs(0)))
    ours = stdit3_state_dict_shapes(abstract)
    theirs = ref.meta_state_dict_shapes(depth=28, hidden_size=1152, patch_size=[1, 2, 2], num_heads=16)
    assert ours == theirs
    # rope.freqs 1, x_embedder 2, t_embedder 4, fps_embedder 4, t_block 2, y_embedder 5, 2 × 28 blocks × 17, final 3
    assert len(ours) == 1 + 2 + 4 + 4 + 2 + 5 + 2 * 28 * 17 + 3 == 973
    with torch.device("meta"):
        meta = ref.STDiT3(depth=28, hidden_size=1152, patch_size=[1, 2, 2], num_heads=16)
    torch_params = sum(p.numel() for n, p in meta.named_parameters() if n != "rope.freqs")
    ours_params = abstract.num_params()
    print(f"STDiT3-XL/2: {ours_params:,} parameters, {len(ours)} state_dict tensors")
    assert ours_params == torch_params == XL2_PARAMS
    assert theirs["final_layer.linear.weight"] == (32, 1152)  # pred_sigma: 2 × 4 channels × 1·2·2 patch
    assert theirs["y_embedder.y_embedding"] == (300, 4096) and theirs["rope.freqs"] == (36,)


# --------------------------------------------------------------------------------------
# Bad input: one clear error naming the tensor or file
# --------------------------------------------------------------------------------------


def _copy_dir(src, dst, edit):
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    sd = load_file(str(src / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


def test_bad_directories(torch_dir, tmp_path):
    _, path = torch_dir
    missing = _copy_dir(path, tmp_path / "missing", lambda sd: sd.pop("temporal_blocks.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: temporal_blocks\.\{1\}\.mlp\.fc2\.bias"):
        from_pretrained(missing)
    bad = _copy_dir(path, tmp_path / "shape", lambda sd: sd.update({"spatial_blocks.0.attn.q_norm.weight":
                                                                    np.ones(16, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match=r"spatial_blocks\.0\.attn\.q_norm\.weight: checkpoint "
                                                      r"\(16,\) vs model \(8,\)"):
        from_pretrained(bad)
    extra = _copy_dir(path, tmp_path / "extra", lambda sd: sd.update({"pos_embed_temporal": np.ones(3, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match="1 unexpected keys: pos_embed_temporal"):
        from_pretrained(extra)
    model = nnx.eval_shape(lambda: STDiT3(stdit3_config(**{**TINY, "depth": 3}), rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: spatial_blocks\.\{2\}"):
        load_pretrained(model, path)  # a directory into a model of another depth
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="config.json: missing"):
        from_pretrained(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(InputError, match="model_type 't5'"):
        from_pretrained(tmp_path / "other")


def test_convert_cli_on_directories(torch_dir, tmp_path, capsys):
    from vidjax.convert import main

    torch_model, path = torch_dir
    out = tmp_path / "converted"
    assert main([str(path), "--out", str(out)]) == 0
    assert "STDiT3" in capsys.readouterr().out
    again = ref.STDiT3.from_pretrained(out).eval()  # loads strictly in PyTorch
    d = inputs(seed=2)
    assert rel_err(run_ref(again, d), run_ref(torch_model, d)) == 0.0
    missing = _copy_dir(path, tmp_path / "missing", lambda sd: sd.pop("y_embedder.y_embedding"))
    assert exit_code(main, [str(missing), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "y_embedder.y_embedding" in err and "missing" in err


def test_convert_cli_one_line_error_in_a_subprocess(tmp_path):
    import subprocess

    (tmp_path / "m").mkdir()
    proc = subprocess.run([sys.executable, "-m", "vidjax.convert", str(tmp_path / "m"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "config.json" in proc.stderr


# --------------------------------------------------------------------------------------
# The v1.2 VAE directory (small spatial / temporal sizes: the published ones hold 400 MB)
# --------------------------------------------------------------------------------------


def test_vae_directory_roundtrip_and_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    from vidjax.interop import save_vae_pretrained, vae_from_pretrained
    from vidjax.models.vae.convert import named_variables
    from vidjax.models.vae.kl import AutoencoderKLConfig
    from vidjax.models.vae.temporal import OpenSoraVAE, TemporalVAEConfig

    spatial = AutoencoderKLConfig(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1)
    temporal = TemporalVAEConfig(filters=32, num_res_blocks=1, channel_multipliers=(1, 2, 2),
                                 temporal_downsample=(True, True), spatial_downsample=(False, False))
    vae = nnx.eval_shape(lambda: OpenSoraVAE(spatial, temporal, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for var in named_variables(vae).values():
        var.set_value(jnp.asarray(rng.normal(size=var.get_value().shape).astype(np.float32)))
    save_vae_pretrained(vae, tmp_path / "OpenSora-VAE-v1.2")
    loaded, report = vae_from_pretrained(tmp_path / "OpenSora-VAE-v1.2", spatial=spatial, temporal=temporal)
    ours, theirs = named_variables(vae), named_variables(loaded)
    assert len(report.loaded) == len(ours) and all(np.array_equal(ours[p].get_value(), theirs[p].get_value())
                                                   for p in ours)
    sd = load_file(str(tmp_path / "OpenSora-VAE-v1.2" / "model.safetensors"))
    assert sd["scale"].shape == (1, 4, 1, 1, 1)
    sd.pop("temporal_vae.encoder.conv_in.conv.weight")
    save_file(sd, str(tmp_path / "OpenSora-VAE-v1.2" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: temporal_vae\.encoder\.conv_in\.conv\.weight"):
        vae_from_pretrained(tmp_path / "OpenSora-VAE-v1.2", spatial=spatial, temporal=temporal)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):  # published sizes vs the tiny file
        vae_from_pretrained(tmp_path / "OpenSora-VAE-v1.2")


# --------------------------------------------------------------------------------------
# v1.2's sampler end to end: RFlowV12 + STDiT3 vs RFLOW.sample + the PyTorch STDiT3
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditioned", [False, True])
def test_rflow_v12_sampler_matches_pytorch_over_5_steps(torch_dir, conditioned):
    from vidjax.diffusion.guidance import normal
    from vidjax.diffusion.rectified_flow import RFlowV12

    torch_model, path = torch_dir
    ours, _ = from_pretrained(path)
    rng = np.random.default_rng(11)
    b, L = 2, TINY["model_max_length"]
    z = rng.normal(size=(b, T, H, W, TINY["in_channels"])).astype(np.float32)
    y = rng.normal(size=(b, L, TINY["caption_channels"])).astype(np.float32)
    mask = (np.arange(L)[None] < np.array([5, 3])[:, None]).astype(np.int64)
    frames = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.5]], np.float32) if conditioned else None  # keep / edit
    video = dict(height=240, width=426, num_frames=51)
    key = jax.random.key(3)
    rf = RFlowV12(num_sampling_steps=5, cfg_scale=7.0)

    graphdef, state = nnx.split(ours)

    @jax.jit
    def sample(state, z, cond, key):
        def model_fn(x, t, cond, drop):  # merged inside the scan body: nnx variables must not cross trace levels
            model = nnx.merge(graphdef, jax.tree.map(lambda v: v, state))
            return model(x, t, cond["y"], cond["mask"], cond.get("x_mask"), cond["fps"], height=240, width=426,
                         drop=drop)

        return rf.sample(model_fn, z, cond, key, mask=None if frames is None else jnp.asarray(frames), **video)

    cond = dict(y=jnp.asarray(y), mask=jnp.asarray(mask), fps=jnp.full((b,), 24.0))
    ours_z = np.asarray(sample(state, jnp.asarray(z), cond, key))

    # the same per-step noise for frames entering generation (v1.2 draws randn_like each step)
    noises = iter([torch.from_numpy(np.moveaxis(np.asarray(normal(k, z.shape)), -1, 1).copy())
                   for k in jax.random.split(key, 5)])
    kw = ref.model_kwargs(b, 240, 426, 51, 24, torch.bfloat16)  # v1.2 inference passes these in bf16
    y_null = torch_model.y_embedder.y_embedding[None, None].repeat(b, 1, 1, 1)
    with torch.no_grad():
        theirs = ref.rflow_sample(torch_model, torch.from_numpy(np.moveaxis(z, -1, 1).copy()),
                                  torch.from_numpy(y)[:, None], y_null, dict(kw, mask=torch.from_numpy(mask)),
                                  5, 7.0, mask=None if frames is None else torch.from_numpy(frames),
                                  noise_fn=lambda x: next(noises))
    theirs = np.moveaxis(theirs.numpy(), 1, -1)
    err = rel_err(ours_z, theirs)
    print(f"RFlowV12 5-step sample vs PyTorch ({'with' if conditioned else 'no'} condition frames): rel err {err:.2e}")
    assert err <= 1e-4
    assert rel_err(ours_z, z) > 0.1  # it moved
    if conditioned:
        np.testing.assert_array_equal(ours_z[0, 0], z[0, 0])  # the reference frame is kept exactly


# --------------------------------------------------------------------------------------
# On a mesh: the sharded train step (ZeRO-3 parameters, batch on data × fsdp, DSP on sequence)
# --------------------------------------------------------------------------------------

STAGE1_MASKS = {"random": 0.05, "intepolate": 0.005, "quarter_random": 0.005, "quarter_head": 0.005,
                "quarter_tail": 0.005, "quarter_head_tail": 0.005, "image_random": 0.025, "image_head": 0.05,
                "image_tail": 0.025, "image_head_tail": 0.025}


def sharded_train_step(model: STDiT3, mesh, video: tuple[int, int, int], *, lr: float = 1e-4):
    """(jitted step, shardings) of one AdamW step on v1.2's rflow loss with its mask ratios, as vidjax's train step
    places things: parameters by the logical-axis table with the ZeRO-3 fallback on fsdp, batch on data × fsdp.

    step(params, opt, rest, batch, key) -> (params, opt, loss, grads); batch: z [B, T, h, w, C], y, mask, fps.
    """
    import optax

    from vidjax.diffusion.rectified_flow import RFlowV12
    from vidjax.parallel import sharding as shd
    from vidjax.training.state import ModelParts

    parts = ModelParts(model, model.trainable())
    params, rest = parts.params, parts.rest
    p_sh, r_sh = parts.shardings(mesh)
    tx = optax.adamw(lr)
    o_sh = shd.opt_shardings(tx, params, p_sh, mesh)
    rf = RFlowV12(mask_ratios=STAGE1_MASKS)
    height, width, num_frames = video

    def step(params, opt, rest, batch, key):
        def loss_fn(params):
            model = parts.merge(params, rest)

            def model_fn(x, t, cond, drop):
                return model(x, t, cond["y"], cond["mask"], cond["x_mask"], cond["fps"], height=height, width=width,
                             drop=drop)

            cond = {k: batch[k] for k in ("y", "mask", "fps")}
            return rf.loss(model_fn, batch["z"], cond, key, height=height, width=width, num_frames=num_frames)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss, grads

    b_sh = {k: shd.batch_sharding(mesh, n) for k, n in (("z", 5), ("y", 3), ("mask", 2), ("fps", 1))}
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step, in_shardings=(p_sh, o_sh, r_sh, b_sh, rep), out_shardings=(p_sh, o_sh, rep, p_sh))
    return jitted, dict(params=p_sh, opt=o_sh, rest=r_sh, batch=b_sh), (parts, params, rest, tx)


@pytest.mark.parametrize("scheme", ["dsp", "ulysses", "allgather", "ring"])
def test_sharded_forward_on_8_devices_equals_one_device(devices, scheme):
    """Batch on data × fsdp, ZeRO-3 parameters, and each sequence-parallel scheme on sequence = 2 (8 CPU devices):
    DSP switches the split (one all-to-all) into and out of each temporal block, Ulysses exchanges heads for
    tokens inside every self-attention, all-gather gathers temporal K/V over the frames, ring attention passes K/V
    blocks around within frames."""
    from vidjax.parallel.mesh import make_mesh
    from vidjax.parallel.sharding import place
    from vidjax.training.state import ModelParts

    if len(devices) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    cfg = {**TINY, "hidden_size": 48, "num_heads": 4}  # heads split by 2 (Ulysses)
    plain = host_random(stdit3_config(**cfg), seed=2)
    model = host_random(stdit3_config(**cfg, sequence_parallel=scheme), seed=2)  # the same weights
    rng = np.random.default_rng(9)
    b, t, h, w = 4, 4, 8, 12  # batch / (data × fsdp), frames and the 4×6 patch grid / sequence
    d = dict(x=rng.normal(size=(b, t, h, w, 3)).astype(np.float32), t=np.array([900, 500, 10, 250], np.float32),
             y=rng.normal(size=(b, 7, 20)).astype(np.float32), mask=np.arange(7)[None] < np.array([[7], [4], [2], [5]]),
             x_mask=np.array([[True, False, True, True], [False, False, True, True]] * 2),
             fps=np.full((b,), 24.0, np.float32), height=np.full((b,), 64.0), width=np.full((b,), 96.0))
    expected = run_ours(plain, d)
    mesh = make_mesh(devices=devices[:8], data=2, fsdp=2, sequence=2)
    parts = ModelParts(model)
    p_sh, r_sh = parts.shardings(mesh)

    def fwd(params, rest, x, t, y, mask, xm, fps):
        return parts.merge(params, rest)(x, t, y, mask, xm, fps, height=64.0, width=96.0)

    with jax.set_mesh(mesh):
        params, rest = place(parts.params, p_sh), place(parts.rest, r_sh)
        args = [d[k] for k in ("x", "t", "y", "mask", "x_mask", "fps")]
        lowered = jax.jit(fwd).lower(params, rest, *args)
        out = np.asarray(lowered.compile()(params, rest, *args))
    text = lowered.as_text()
    assert {"ring": "collective_permute", "allgather": "all_gather"}.get(scheme, "all_to_all") in text
    err = rel_err(out, expected)
    print(f"8-device (data 2 × fsdp 2 × sequence 2, {scheme}) forward vs 1 device: rel err {err:.1e}")
    assert err <= 1e-5


@pytest.mark.slow
def test_sharded_train_step_on_8_devices_equals_one_device(devices):
    """One AdamW step of v1.2's masked rflow loss: gradients on 8 devices equal one device's (about 50 s)."""
    from vidjax.parallel.mesh import make_mesh

    if len(devices) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    cfg = stdit3_config(**{**TINY, "depth": 1, "hidden_size": 48, "num_heads": 4})  # heads, widths split by 2
    model = host_random(cfg, seed=3)
    rng = np.random.default_rng(0)
    b, t = 4, 4  # batch over data × fsdp = 4, latent frames over sequence = 2
    batch = dict(z=rng.normal(size=(b, t, 6, 10, 3)).astype(np.float32),
                 y=rng.normal(size=(b, 7, 20)).astype(np.float32),
                 mask=np.arange(7)[None] < np.array([7, 4, 2, 5])[:, None], fps=np.full((b,), 24.0, np.float32))
    video = (48, 80, 68)
    key = jax.random.key(5)
    results = []
    for mesh in (make_mesh(devices=devices[:1]), make_mesh(devices=devices[:8], data=2, fsdp=2, sequence=2)):
        step, sh, (_, params, rest, tx) = sharded_train_step(model, mesh, video)
        with jax.set_mesh(mesh):
            placed = jax.device_put((params, tx.init(params), rest, batch), (sh["params"], sh["opt"], sh["rest"],
                                                                            sh["batch"]))
            _, _, loss, grads = step(*placed, key)
            results.append((float(loss), jax.tree.leaves(jax.tree.map(np.asarray, grads))))
    (loss1, g1), (loss8, g8) = results
    assert abs(loss1 - loss8) <= 1e-5 * abs(loss1)
    worst = max(rel_err(a, c) for a, c in zip(g8, g1, strict=True) if np.abs(c).max() > 0)
    print(f"8-device vs 1-device train step: loss {loss8:.6f} vs {loss1:.6f}, gradients max rel err {worst:.1e}")
    assert worst <= 1e-4


@pytest.mark.slow
def test_xl2_sharded_train_step_compiles_on_8_cpu_devices(devices):
    """STDiT3-XL/2 (abstract, nothing allocated), gradient checkpointing on as in v1.2's training configs: the train
    step at 240×426 pixels, 51 frames, on latents of 16×30×54 (v1.2's are 15×30×53: the frame count is rounded up to a
    multiple of sequence = 2, the width to the patch), compiled on data=2 × fsdp=2 × sequence=2 (about 30 s).
    The fast tests above run the same code on a tiny model."""
    import time

    from vidjax.parallel.mesh import make_mesh

    if len(devices) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    abstract = nnx.eval_shape(lambda: STDiT3(stdit3_config("STDiT3-XL/2", remat="full"), rngs=nnx.Rngs(0)))
    mesh = make_mesh(devices=devices[:8], data=2, fsdp=2, sequence=2)
    step, sh, (_, params, rest, tx) = sharded_train_step(abstract, mesh, (240, 426, 51))
    b = 4

    def spec(shape, dtype, s):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    batch = dict(z=spec((b, 16, 30, 54, 4), jnp.float32, sh["batch"]["z"]),
                 y=spec((b, 300, 4096), jnp.float32, sh["batch"]["y"]),
                 mask=spec((b, 300), jnp.bool_, sh["batch"]["mask"]), fps=spec((b,), jnp.float32, sh["batch"]["fps"]))
    args = (jax.tree.map(lambda p, s: spec(p.shape, p.dtype, s), params, sh["params"]),
            jax.tree.map(lambda p, s: spec(p.shape, p.dtype, s), jax.eval_shape(tx.init, params), sh["opt"]),
            jax.tree.map(lambda p, s: spec(p.shape, p.dtype, s), rest, sh["rest"]), batch)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(*args, jax.random.key(0)).compile({"xla_backend_optimization_level": 0})
    mem = compiled.memory_analysis()
    print(f"STDiT3-XL/2 sharded train step: compiled in {time.perf_counter() - start:.0f} s; per device: arguments "
          f"{mem.argument_size_in_bytes / 2**30:.2f} GiB, temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB")
    # parameters and two Adam moments in float32, ZeRO-3 over fsdp = 2 (replicated over data), plus the batch
    assert 0.45 < mem.argument_size_in_bytes / (3 * 4 * XL2_PARAMS) < 0.55


@pytest.mark.slow
def test_xl2_sharded_sample_step_compiles_on_8_cpu_devices(devices):
    """v1.2's 30-step guided sampler around STDiT3-XL/2 (abstract) with condition frames, 240×426 at 51 frames
    (latents 16×30×54, see above), compiled on data=2 × fsdp=2 × sequence=2 in bf16."""
    import time

    from vidjax.diffusion.rectified_flow import RFlowV12
    from vidjax.parallel import sharding as shd
    from vidjax.parallel.mesh import make_mesh
    from vidjax.training.state import ModelParts

    if len(devices) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    abstract = nnx.eval_shape(lambda: STDiT3(stdit3_config("STDiT3-XL/2", dtype="bfloat16"), rngs=nnx.Rngs(0)))
    mesh = make_mesh(devices=devices[:8], data=2, fsdp=2, sequence=2)
    parts = ModelParts(abstract)
    p_sh, r_sh = parts.shardings(mesh)
    rf = RFlowV12()
    b = 4

    def sample(params, rest, z, y, mask, frames, key):
        def model_fn(x, t, cond, drop):
            model = parts.merge(jax.tree.map(lambda v: v, params), rest)
            return model(x, t, cond["y"], cond["mask"], cond["x_mask"], cond["fps"], height=240, width=426, drop=drop)

        cond = dict(y=y, mask=mask, fps=jnp.full((b,), 24.0))
        return rf.sample(model_fn, z, cond, key, height=240, width=426, num_frames=51, mask=frames)

    def spec(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    args = (jax.tree.map(lambda p, s_: spec(p.shape, p.dtype, s_), parts.params, p_sh),
            jax.tree.map(lambda p, s_: spec(p.shape, p.dtype, s_), parts.rest, r_sh),
            spec((b, 16, 30, 54, 4), jnp.float32, shd.batch_sharding(mesh, 5)),
            spec((b, 300, 4096), jnp.float32, shd.batch_sharding(mesh, 3)),
            spec((b, 300), jnp.bool_, shd.batch_sharding(mesh, 2)),
            spec((b, 16), jnp.float32, shd.batch_sharding(mesh, 2)),
            jax.random.key(0))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jax.jit(sample).lower(*args).compile({"xla_backend_optimization_level": 0})
    mem = compiled.memory_analysis()
    print(f"STDiT3-XL/2 sharded 30-step sampler: compiled in {time.perf_counter() - start:.0f} s; per device: "
          f"arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB, "
          f"temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB")
    assert 0.45 < mem.argument_size_in_bytes / (4 * XL2_PARAMS) < 0.6  # float32 parameters, ZeRO-3 over fsdp = 2


def test_opensora_v1_2_sample_config_has_v12_defaults():
    from pathlib import Path

    from vidjax.config import load_config
    from vidjax.diffusion.rectified_flow import RFlowV12

    file = Path(__file__).parents[1] / "configs/opensora_v1_2/sample.py"
    c = load_config(str(file))
    assert (c.resolution, c.aspect_ratio, c.num_frames, c.fps, c.save_fps, c.seed, c.batch_size, c.dtype) == \
        ("240p", "9:16", 51, 24, 24, 42, 1, "bf16")
    assert (c.condition_frame_length, c.align, c.aes, c.flow, c.multi_resolution) == (5, 5, 6.5, None, "STDiT2")
    assert c.model["type"] == "STDiT3-XL/2" and c.model["from_pretrained"] == "hpcai-tech/OpenSora-STDiT-v3"
    assert c.vae["micro_frame_size"] == 17 and c.text_encoder["model_max_length"] == 300
    assert c.scheduler.to_dict() == {"type": "rflow", "use_timestep_transform": True, "num_sampling_steps": 30,
                                     "cfg_scale": 7.0}
    assert c.image_size == (240, 426) and c.latent_size == (15, 30, 53)
    rf = RFlowV12(**c.rflow.to_dict())
    assert len(rf.timesteps(*c.image_size, c.num_frames)) == 30
    assert load_config(f"{file}:720p").image_size == (720, 1280)


def test_convert_cli_from_a_checkpoint_file_to_a_bf16_directory(torch_dir, tmp_path, capsys):
    """A v1.2 training checkpoint (a state_dict file) with --model STDiT3-XL/2 and size overrides."""
    from vidjax.convert import main

    torch_model, path = torch_dir
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    out = tmp_path / "bf16"
    assert main([str(path / "model.safetensors"), "--model", "STDiT3-XL/2", *sets, "--dtype", "bfloat16",
                 "--out", str(out)]) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = ref.STDiT3.from_pretrained(out).eval()  # bf16 tensors, strict
    d = inputs(seed=6)
    assert 1e-6 < rel_err(run_ref(again, d), run_ref(torch_model, d)) < 3e-2  # bf16 rounding of the weights
    xl = [str(path / "model.safetensors"), "--model", "STDiT3-XL/2", "--out", str(tmp_path / "x")]
    assert exit_code(main, xl) == 2
    assert "shape mismatches" in capsys.readouterr().err  # XL/2 sizes against the tiny file


# --------------------------------------------------------------------------------------
# STDiT3 in the training loop (model.name="stdit3"): one loop, any mesh
# --------------------------------------------------------------------------------------

def test_stdit3_trains_in_the_loop_on_an_fsdp_and_sequence_mesh(tmp_path):
    """``model.name="stdit3"`` with the shared model fields trains text-to-video through the one loop; on 8 devices
    split data 2 × fsdp 2 × sequence 2 (DSP over its temporal blocks) it computes the 8-way data-parallel losses."""
    from _helpers import losses, quick

    from configs.shapes_tiny import get_config
    from vidjax.training import run

    def config(**mesh):
        c = quick(get_config("quick"), tmp_path, **{"train.steps": 3, "train.ckpt_every": 3, "sample.num_prompts": 0,
                                                   "model.name": "stdit3"})
        c.mesh.update(mesh)
        return c

    ref = run(config(data=8), tmp_path / "dp")
    assert ref["steps"] == 3 and ref["nonfinite_steps"] == 0
    run(config(data=2, fsdp=2, sequence=2), tmp_path / "mesh")
    want, got = losses(tmp_path / "dp"), losses(tmp_path / "mesh")
    assert sorted(got) == [1, 2, 3]
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-5), (s, got[s], want[s])
    from vidjax.checkpoint import restore_model

    _, model, _ = restore_model(tmp_path / "dp")
    assert isinstance(model.dit, STDiT3) and model.dit.cfg.hidden_size == 64 and model.dit.cfg.patch_size == (2, 4, 4)


def test_stdit3_rejects_stdit_only_options():
    from configs.shapes_tiny import get_config
    from vidjax.errors import ConfigError
    from vidjax.models.t2v import stdit3_kwargs

    c = get_config("quick")
    c.model.name = "stdit3"
    assert stdit3_kwargs(c)["hidden_size"] == 64 and stdit3_kwargs(c)["num_heads"] == c.model.heads
    c.model.temporal_pos = "input"
    with pytest.raises(ConfigError, match=r"config.model.temporal_pos='input' is an STDiT \(v1.0\) option"):
        stdit3_kwargs(c)


# --------------------------------------------------------------------------------------
# Sampling a published v1.2 directory the way v1.2 does (vidjax.sample --checkpoint DIR)
# --------------------------------------------------------------------------------------

def test_sample_cli_on_a_v12_directory_is_v12s_sampler(tmp_path):
    """``vidjax.sample --checkpoint OpenSora-STDiT-v3/ --config configs/opensora_v1_2/stage1.py:sample`` builds the
    model from the directory's config.json, loads it strictly, and samples with RFlowV12 at the clip's pixel size
    (its shift): the clips equal RFlowV12.sample called directly on the same noise."""
    import os
    import subprocess
    from pathlib import Path

    from _helpers import tiny_t5_dir

    from vidjax.config import load_config
    from vidjax.diffusion.rectified_flow import RFlowV12
    from vidjax.interop import save_stdit3_pretrained
    from vidjax.models.t2v import TextToVideo, text_inputs
    from vidjax.sample import generate, imported_model

    REPO = Path(__file__).resolve().parents[1]  # noqa: N806
    t5 = tiny_t5_dir(tmp_path / "t5", ["a red circle moving left", "a blue square"], d_model=20)
    save_stdit3_pretrained(host_random(stdit3_config(**TINY), seed=3), tmp_path / "OpenSora-STDiT-v3")
    over = ['vae={"type": "raw"}', "model.dtype=float32", "data.frames=17", "data.height=16", "data.width=24",
            "diffusion.sample_steps=3"]
    c = load_config(str(REPO / "configs/opensora_v1_2/stage1.py:sample"), over)
    c, model, report = imported_model(str(tmp_path / "OpenSora-STDiT-v3"), c, text_dir=str(t5))
    assert c.model.hidden == 40 and c.text.dim == 20 and "loaded" in report.summary()
    from vidjax.diffusion import build_diffusion
    from vidjax.models.vae import build_vae

    vae, diffusion, text = build_vae(c.vae), build_diffusion(c.diffusion), text_inputs(c)
    prompt = ["a red circle moving left"]
    got = generate(model, c, vae, diffusion, text, prompt, steps=3, seed=5)
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(5), 0), (1, 17, 16, 24, 3))
    cond = {k: jnp.asarray(v) for k, v in text(prompt).items()}
    graphdef, state = nnx.split(model)

    @jax.jit
    def direct(state, noise, cond):
        fn = lambda x, t, cc, drop: nnx.merge(graphdef, jax.tree.map(lambda v: v, state))(x, t, cc, drop)  # noqa
        return RFlowV12(num_sampling_steps=3, cfg_scale=7.0).sample(
            fn, noise, cond, jax.random.fold_in(jax.random.key(6), 0), height=16, width=24, num_frames=17)

    want = direct(state, noise, cond)
    want = np.asarray(jnp.clip((want + 1) * 127.5, 0, 255).round().astype(jnp.uint8))
    assert np.abs(got.astype(int) - want).max() <= 1
    assert isinstance(model, TextToVideo)
    r = subprocess.run([sys.executable, "-m", "vidjax.sample", "--checkpoint", str(tmp_path / "OpenSora-STDiT-v3"),
                        "--config", "configs/opensora_v1_2/stage1.py:sample", *[f"--config.{o}" for o in over],
                        "--text", str(t5), "--prompt", prompt[0], "--aes", "6.5", "--height", "15", "--width", "21",
                        "--out", str(tmp_path / "o.mp4")],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    assert r.returncode == 0, r.stderr[-2000:]
    # a size the patch does not divide (v1.2's 240×426 gives 53 latent columns): zero-padded, cropped back
    assert (tmp_path / "o.mp4").is_file() and "17x15x21, checkpoint OpenSora-STDiT-v3" in r.stdout


def test_sample_cli_with_v12_vae_directory_at_a_size_neither_divides(tmp_path):
    """The three published directories through ``vidjax.sample`` (a tiny STDiT3, a tiny ``OpenSora-VAE-v1.2`` and a
    tiny T5) at a size like v1.2's 240×426: the spatial VAE floors 15×21 to a 7×10 latent (v1.2's
    ``get_latent_size``), STDiT3 pads it to its 2×2 patch and crops back, and the clip decodes at 14×20."""
    import os
    import subprocess
    from pathlib import Path

    from _helpers import tiny_t5_dir

    from vidjax.interop import save_stdit3_pretrained, save_vae_pretrained
    from vidjax.models.vae.kl import AutoencoderKLConfig
    from vidjax.models.vae.temporal import OpenSoraVAE, TemporalVAEConfig

    REPO = Path(__file__).resolve().parents[1]  # noqa: N806
    spatial = dict(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1)
    temporal = dict(filters=16, num_res_blocks=1, channel_multipliers=(1, 2, 2), temporal_downsample=(True, True),
                    spatial_downsample=(False, False), num_groups=8)
    vae = OpenSoraVAE(AutoencoderKLConfig(**spatial), TemporalVAEConfig(**temporal), rngs=nnx.Rngs(0))
    save_vae_pretrained(vae, tmp_path / "OpenSora-VAE-v1.2")
    model = host_random(stdit3_config(**{**TINY, "in_channels": 4}), seed=3)  # the VAE's 4 latent channels
    save_stdit3_pretrained(model, tmp_path / "OpenSora-STDiT-v3")
    t5 = tiny_t5_dir(tmp_path / "t5", ["a red circle moving left"], d_model=20)
    vae_entry = dict(type="opensora_vae", micro_frame_size=17, spatial=spatial, temporal=temporal)
    over = [f"vae={vae_entry!r}", "model.dtype=float32", "diffusion.sample_steps=2"]
    r = subprocess.run([sys.executable, "-m", "vidjax.sample", "--checkpoint", str(tmp_path / "OpenSora-STDiT-v3"),
                        "--config", "configs/opensora_v1_2/stage1.py:sample", *[f"--config.{o}" for o in over],
                        "--vae", str(tmp_path / "OpenSora-VAE-v1.2"), "--text", str(t5), "--prompt",
                        "a red circle moving left", "--num_frames", "17", "--height", "15", "--width", "21",
                        "--out", str(tmp_path / "o.mp4")],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "17x14x20" in r.stdout and "asked 15x21, the VAE decodes 14x20" in r.stdout, r.stdout
    from vidjax.data.video_io import read_video

    assert read_video(tmp_path / "o.mp4").shape == (17, 14, 20, 3)
