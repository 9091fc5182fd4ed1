"""Video compressors: diffusers parity of the SD VAE, memory-bounded micro-batching, Open-Sora v1.2's
causal VAE (torch conv semantics, key names, chunking, padding), the VQ-VAE and ``build_vae``."""

from pathlib import Path

import numpy as np
import pytest

import jax  # isort: skip
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vidjax.models.vae import (
    RawVAE,
    VideoAutoencoderKL,
    build_vae,
    restore_vae_weights,
    save_vae_weights,
    vae_architecture,
)
from vidjax.models.vae.convert import named_variables, read_safetensors
from vidjax.models.vae.kl import AutoencoderKLConfig, load_diffusers_vae
from vidjax.models.vae.temporal import (
    OPENSORA_SCALE,
    OPENSORA_SHIFT,
    CausalConv3d,
    OpenSoraVAE,
    TemporalVAEConfig,
    depth_to_space,
    load_opensora_state_dict,
    opensora_state_dict,
)
from vidjax.models.vae.vq import VQVAE, Codebook, VQVAEConfig

KL_TINY = dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, layers_per_block=1)  # 8x down, 8 groups
KL_2X = dict(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1)  # 2x down: cheap to compile
# compiled tests use 3 levels (32/64/64 channels, GroupNorm 32, 4x in time) to keep XLA compiles short; the key
# test builds VAE_Temporal_SD's 4-level layout with its Identity level
TEMPORAL_TINY = dict(filters=32, num_res_blocks=1, channel_multipliers=(1, 2, 2), temporal_downsample=(True, True),
                     spatial_downsample=(False, False))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def host_init(ctor, seed: int = 0):
    """``ctor()`` built abstractly (or a clone of a module) and filled from numpy: eager jax random init compiles
    one kernel per tensor shape, minutes on a shared CPU. Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2)."""
    model = nnx.clone(ctor) if isinstance(ctor, nnx.Module) else nnx.eval_shape(ctor)
    rs = np.random.RandomState(seed)
    for path, var in named_variables(model).items():
        shape, dtype = var.value.shape, var.value.dtype
        if dtype == np.dtype(bool):
            value = np.zeros(shape, bool)
        elif path[-1] == "scale":
            value = 1 + 0.1 * rs.randn(*shape)
        elif path[-1] == "kernel":
            value = rs.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = 0.1 * rs.randn(*shape)
        var.value = jnp.asarray(value, dtype)
    return model


def jitted(model, method: str, **kw):
    """``model.method`` as a jitted pure function of (state, x): one compile, state passed as an argument."""
    return jit_fn(model, lambda m, x: getattr(m, method)(x, **kw))


# LLVM -O0: halves CPU compile time for these tiny conv nets; results are compared to references anyway
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit_fn(model, f):
    """``f(model, *args)`` compiled once as a pure function of the model state (state passed as an argument)."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, *args: f(nnx.merge(graphdef, s), *args))
    return lambda *args: fn.lower(state, *args).compile(compiler_options=FAST_COMPILE)(state, *args)


# --------------------------------------------------------------------------------------
# 1. SD VAE: parity with diffusers, micro-batching, memory, bad input
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_vae(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ref = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        **KL_TINY).eval()
    with torch.no_grad():  # non-trivial norm affines, so a transposed scale/bias would show
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny_sd_vae")
    ref.save_pretrained(path)
    return ref, str(path)


@pytest.mark.torch
def test_video_kl_matches_diffusers(diffusers_vae):
    """Per-frame encode mean and decode, micro-batched (6 frames in chunks of 4), equal diffusers."""
    import torch

    ref, path = diffusers_vae
    vae = VideoAutoencoderKL.from_pretrained(path, micro_batch_size=4)
    rs = np.random.RandomState(0)
    x = rs.uniform(-1, 1, (1, 6, 32, 40, 3)).astype(np.float32)
    z = rs.randn(1, 6, 4, 5, 4).astype(np.float32)
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(x[0].transpose(0, 3, 1, 2))).latent_dist.mean.numpy()
        dec = ref.decode(torch.from_numpy(z[0].transpose(0, 3, 1, 2) / 0.18215)).sample.numpy()

    ours_z = jitted(vae, "encode")(jnp.asarray(x))
    ours_x = jitted(vae, "decode")(jnp.asarray(z))
    err_enc = rel_err(ours_z[0].transpose(0, 3, 1, 2), 0.18215 * mean)
    err_dec = rel_err(ours_x[0].transpose(0, 3, 1, 2), dec)
    print(f"parity: encode mean rel err {err_enc:.2e}, decode rel err {err_dec:.2e}")
    assert err_enc <= 1e-4 and err_dec <= 1e-4  # diffusers ran all 6 frames at once, we in chunks of 4 + 2


@pytest.mark.torch
def test_diffusers_importer_names(diffusers_vae):
    """Our export round-trips diffusers' names; pre-0.14 attention names (query/key/value/proj_attn) load too."""
    from vidjax.models.vae.kl import diffusers_key, diffusers_state_dict

    ref, path = diffusers_vae
    vae = load_diffusers_vae(path)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    exported = diffusers_state_dict(vae)
    assert set(exported) == set(sd)
    assert all(np.array_equal(exported[k], sd[k]) for k in sd)

    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in sd.items():
        for new, dep in old.items():
            if f".attentions.0.{new}." in k:
                k, v = k.replace(f".{new}.", f".{dep}."), (v[:, :, None, None] if v.ndim == 2 else v)
        legacy[k] = v
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    assert diffusers_key("encoder.mid_block.attentions.0.proj_attn.weight") == (
        "encoder", "mid_block", "attentions", 0, "to_out", "kernel")
    from vidjax.models.vae.convert import load_state_dict
    from vidjax.models.vae.kl import AutoencoderKL

    fresh = nnx.eval_shape(lambda: AutoencoderKL(AutoencoderKLConfig(**KL_TINY), rngs=nnx.Rngs(0)))
    load_state_dict(fresh, legacy, diffusers_key)
    ours, theirs = named_variables(vae), named_variables(fresh)
    assert all(np.array_equal(ours[p].value, theirs[p].value) for p in ours)


def test_micro_batched_memory_is_bounded():
    """Compiled temp memory of encode / decode at T=64 equals that at T=16 (micro_batch_size=4)."""
    cfg = AutoencoderKLConfig(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1)
    vae = nnx.eval_shape(lambda: VideoAutoencoderKL(cfg, micro_batch_size=4, rngs=nnx.Rngs(0)))  # compile only
    graphdef, state = nnx.split(vae)
    temps, outs = {}, {}
    for T in (16, 64):
        for method, shape in (("encode", (1, T, 32, 32, 3)), ("decode", (1, T, 16, 16, 4))):
            fn = jax.jit(lambda s, x, m=method: getattr(nnx.merge(graphdef, s), m)(x))
            mem = fn.lower(state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile().memory_analysis()
            temps[method, T], outs[method, T] = mem.temp_size_in_bytes, mem.output_size_in_bytes
    print("temp bytes:", temps)
    for method in ("encode", "decode"):
        assert outs[method, 64] == 4 * outs[method, 16]  # the whole clip is processed...
        assert temps[method, 64] == temps[method, 16]  # ...with the scratch memory of one micro-batch


@pytest.mark.torch
def test_sizes_not_divisible_by_8_floor_as_diffusers(diffusers_vae):
    """Open-Sora v1.2's 240p 9:16 is 240×426: each stride-2 conv rounds down (426 -> 213 -> 106 -> 53), so the
    latent is H // 8 as v1.2's ``get_latent_size`` says, equal to diffusers, and decodes to 8·(H // 8)."""
    import torch

    ref, path = diffusers_vae
    vae = VideoAutoencoderKL.from_pretrained(path, micro_batch_size=4)
    assert vae.latent_shape(5, 30, 53) == (5, 3, 6)  # 30 -> 15 -> 7 -> 3; 53 -> 26 -> 13 -> 6
    x = np.random.RandomState(1).uniform(-1, 1, (1, 2, 30, 53, 3)).astype(np.float32)
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(x[0].transpose(0, 3, 1, 2))).latent_dist.mean.numpy()
    z = jitted(vae, "encode")(jnp.asarray(x))
    assert z.shape == (1, 2, 3, 6, 4) and mean.shape == (2, 4, 3, 6)
    assert rel_err(z[0].transpose(0, 3, 1, 2), 0.18215 * mean) <= 1e-4
    assert jitted(vae, "decode")(z).shape == (1, 2, 24, 48, 3)


# --------------------------------------------------------------------------------------
# 2. Open-Sora v1.2 causal VAE and pipeline
# --------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("stride", [1, 2])
def test_causal_conv_matches_torch_front_padding(stride):
    """CausalConv3d = torch ``F.pad(x, (1, 1, 1, 1, k-1+1-s, 0))`` then ``Conv3d(stride=(s, 1, 1))``."""
    import torch
    import torch.nn.functional as F

    conv = host_init(lambda: CausalConv3d(3, 5, 3, nnx.Rngs(0), stride=(stride, 1, 1)))
    x = np.random.RandomState(1).randn(2, 8, 6, 7, 3).astype(np.float32)
    w = torch.from_numpy(np.asarray(conv.conv.kernel[...]).transpose(4, 3, 0, 1, 2).copy())
    b = torch.from_numpy(np.array(conv.conv.bias[...]))
    xt = F.pad(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)), (1, 1, 1, 1, 2 + 1 - stride, 0))
    ref = F.conv3d(xt, w, b, stride=(stride, 1, 1)).numpy().transpose(0, 2, 3, 4, 1)
    out = conv(jnp.asarray(x))
    assert out.shape == (2, 8 // stride, 6, 7, 5)
    assert rel_err(out, ref) <= 1e-5

    # depth-to-space uses Open-Sora's channel order "B (C ts hs ws) T H W -> B C (T ts) (H hs) (W ws)"
    y = np.random.RandomState(2).randn(1, 3, 2, 2, 8).astype(np.float32)  # C=4, ts=2
    yt = y.transpose(0, 4, 1, 2, 3).reshape(1, 4, 2, 3, 2, 2)  # B C ts T H W
    ref_d2s = yt.transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 6, 2, 2).transpose(0, 2, 3, 4, 1)
    np.testing.assert_array_equal(depth_to_space(jnp.asarray(y), 2, 1), ref_d2s)


def test_causal_conv_chunked_equals_full_clip():
    """Causal padding: streaming the clip in chunks (carrying k-1 frames of context) equals the full clip."""
    conv = host_init(lambda: CausalConv3d(4, 6, 3, nnx.Rngs(0)))
    x = jnp.asarray(np.random.RandomState(0).randn(1, 12, 5, 5, 4), jnp.float32)
    full = conv(x)
    chunks = [conv(x[:, :5]), conv(x[:, 3:9])[:, 2:], conv(x[:, 7:])[:, 2:]]
    assert rel_err(jnp.concatenate(chunks, 1), full) <= 1e-5
    # no leakage from the future: changing frame 8 leaves outputs 0..7 untouched
    y = conv(x.at[:, 8].add(1.0))
    np.testing.assert_array_equal(y[:, :8], full[:, :8])
    assert not np.allclose(y[:, 8], full[:, 8])


@pytest.fixture(scope="module")
def opensora_tiny():
    return host_init(lambda: OpenSoraVAE(AutoencoderKLConfig(**KL_2X), TemporalVAEConfig(**TEMPORAL_TINY),
                                         micro_batch_size=4, micro_frame_size=9, rngs=nnx.Rngs(0)))


def test_opensora_key_names_and_round_trip(tmp_path):
    """Exported names/shapes are Open-Sora v1.2's (reference §4) and load back into a fresh model."""
    temporal = TemporalVAEConfig(filters=32, num_res_blocks=2)
    model = host_init(lambda: OpenSoraVAE(AutoencoderKLConfig(**KL_TINY), temporal, rngs=nnx.Rngs(0)))
    sd = opensora_state_dict(model)
    tv = {k[len("temporal_vae."):]: v.shape for k, v in sd.items() if k.startswith("temporal_vae.")}
    assert len(tv) == 147  # VAE_Temporal(filters=32, num_res_blocks=2, ...).state_dict() has 147 tensors
    expected = {
        "encoder.conv_in.conv.weight": (32, 4, 3, 3, 3),
        "encoder.block_res_blocks.0.0.norm1.weight": (32,),
        "encoder.block_res_blocks.1.0.conv1.conv.weight": (64, 32, 3, 3, 3),
        "encoder.block_res_blocks.1.0.conv3.conv.weight": (64, 32, 1, 1, 1),
        "encoder.block_res_blocks.3.1.conv2.conv.weight": (128, 128, 3, 3, 3),
        "encoder.conv_blocks.1.conv.weight": (64, 64, 3, 3, 3),
        "encoder.conv_blocks.2.conv.weight": (64, 64, 3, 3, 3),
        "encoder.res_blocks.1.norm2.weight": (128,),
        "encoder.norm1.weight": (128,),
        "encoder.conv2.conv.weight": (8, 128, 1, 1, 1),
        "quant_conv.conv.weight": (8, 8, 1, 1, 1),
        "post_quant_conv.conv.weight": (4, 4, 1, 1, 1),
        "decoder.conv1.conv.weight": (128, 4, 3, 3, 3),
        "decoder.res_blocks.0.conv1.conv.weight": (128, 128, 3, 3, 3),
        "decoder.block_res_blocks.2.0.conv3.conv.weight": (64, 128, 1, 1, 1),
        "decoder.conv_blocks.1.conv.weight": (128, 64, 3, 3, 3),
        "decoder.conv_blocks.2.conv.weight": (256, 128, 3, 3, 3),
        "decoder.norm1.weight": (32,),
        "decoder.conv_out.conv.weight": (4, 32, 3, 3, 3),
    }
    assert {k: tv[k] for k in expected} == expected
    conv_biases = {k for k in tv if k.endswith("conv.bias")}
    assert conv_biases == {f"{p}.conv.bias" for p in (
        "encoder.conv_blocks.1", "encoder.conv_blocks.2", "encoder.conv2", "quant_conv", "post_quant_conv",
        "decoder.conv1", "decoder.conv_blocks.1", "decoder.conv_blocks.2", "decoder.conv_out")}
    assert not any(".conv_blocks.0." in k for k in tv)  # the no-downsampling level is an Identity
    assert sd["scale"].shape == sd["shift"].shape == (1, 4, 1, 1, 1)
    assert any(k.startswith("spatial_vae.module.encoder.mid_block.attentions.0.to_q") for k in sd)

    fresh = host_init(model, seed=1)
    load_opensora_state_dict(fresh, sd)
    back = opensora_state_dict(fresh)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    np.testing.assert_array_equal(fresh.scale[...], sd["scale"].ravel())  # buffers travel too
    assert OPENSORA_SHIFT == (-0.10, 0.34, 0.27, 0.98) and OPENSORA_SCALE == (3.85, 2.32, 2.33, 3.06)

    # the standalone causal VAE takes the temporal_vae.* part of a safetensors checkpoint
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    assert read_safetensors(str(tmp_path / "model.safetensors")).keys() == sd.keys()
    causal = build_vae(dict(type="causal_vae", model=dict(filters=32, num_res_blocks=2), from_pretrained=str(tmp_path)))
    k = "decoder.conv_blocks.2.conv.weight"
    np.testing.assert_array_equal(np.asarray(causal.decoder.conv_blocks[2].conv.kernel[...]).transpose(4, 3, 0, 1, 2),
                                  sd["temporal_vae." + k])
    with pytest.raises(ValueError, match="does not match"):
        load_opensora_state_dict(fresh, {k: v for k, v in sd.items() if "conv_out" not in k})


def test_temporal_chunking_and_padding_equal_direct(opensora_tiny):
    """Pipeline encode/decode (17 -> here 9-frame chunks: lax.map + remainder) equal a direct per-chunk
    computation; a short chunk is front-padded with zero frames as in the reference and cropped back."""
    vae = opensora_tiny
    T = 21  # chunks of 9, 9 and an odd remainder of 3 frames -> 3 + 3 + 1 latent frames
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, T, 4, 4, 3)), jnp.float32)

    def pipeline(m, x):
        z = m.encode(x)
        return z, m.decode(z, num_frames=T)

    def direct(m, x, z):
        """The reference's loop written out: the two full chunks side by side in the batch, the 3-frame tail
        zero-padded in front to 4 frames by hand, decodes cropped by hand."""
        tv, shift, scale = m.temporal_vae, m.shift[...], m.scale[...]
        x_z = m.spatial_vae.encode(x)
        full = rearrange(tv.encode(rearrange(x_z[:, :18], "b (n f) ... -> (b n) f ...", n=2)),
                         "(b n) f ... -> b (n f) ...", n=2)
        tail = x_z[:, 18:]
        tail = tv.encode(jnp.concatenate([jnp.zeros_like(tail[:, :1]), tail], axis=1))
        zz = z * scale + shift
        dec_full = tv.decode(rearrange(zz[:, :6], "b (n f) ... -> (b n) f ...", n=2))[:, 3:]  # 12 -> 9 frames
        dec_full = rearrange(dec_full, "(b n) f ... -> b (n f) ...", n=2)
        dec_tail = tv.decode(zz[:, 6:])[:, 1:]  # 4 -> 3 frames
        return ((jnp.concatenate([full, tail], 1) - shift) / scale,
                m.spatial_vae.decode(jnp.concatenate([dec_full, dec_tail], 1)))

    z, x_rec = jit_fn(vae, pipeline)(x)
    z_ref, x_ref = jit_fn(vae, direct)(x, z)
    assert z.shape == (1, *vae.latent_shape(T, 4, 4), 4) == (1, 7, 2, 2, 4)
    assert x_rec.shape == x.shape
    print(f"chunked vs direct: encode {rel_err(z, z_ref):.1e}, decode {rel_err(x_rec, x_ref):.1e}")
    assert rel_err(z, z_ref) <= 1e-5
    assert rel_err(x_rec, x_ref) <= 1e-5

    tv = vae.temporal_vae
    assert tv.latent_shape(7, 4, 4) == (2, 4, 4) and vae.latent_shape(17, 16, 16) == (5, 8, 8)
    recon, mean, _ = jax.eval_shape(lambda v: tv(v, rng=jax.random.key(0)), jax.ShapeDtypeStruct((1, 7, 4, 4, 4),
                                                                                                 jnp.float32))
    assert recon.shape == (1, 7, 4, 4, 4) and mean.shape == (1, 2, 4, 4, 4)  # the training pass keeps T
    with pytest.raises(ValueError, match="does not encode"):
        vae.decode(z, num_frames=24)


# --------------------------------------------------------------------------------------
# 3. VQ-VAE
# --------------------------------------------------------------------------------------


def test_codebook_ema_and_straight_through():
    cb = host_init(lambda: Codebook(4, 2, nnx.Rngs(0), decay=0.5))
    z = jnp.asarray([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.2]])
    cb.update(z, jax.random.key(0))  # first update: codes drawn from the batch, then one EMA step
    assert bool(cb.initialized[...])
    e0 = np.asarray(cb.embeddings[...])
    np.testing.assert_allclose(e0[np.lexsort(e0.T[::-1])], np.asarray(z), atol=1e-5)  # one code per vector
    codes = np.asarray(cb.codes(z))
    assert sorted(codes) == [0, 1, 2, 3]

    # EMA step by hand: N <- d N + (1-d) counts, z_avg <- d z_avg + (1-d) sums, e = z_avg / smoothed N
    N0, avg0 = np.asarray(cb.N[...]), np.asarray(cb.z_avg[...])
    onehot = np.eye(4)[codes]
    cb.update(z, jax.random.key(1))
    N = 0.5 * N0 + 0.5 * onehot.sum(0)
    avg = 0.5 * avg0 + 0.5 * onehot.T @ np.asarray(z)
    np.testing.assert_allclose(cb.N[...], N, rtol=1e-6)
    used = N >= 1
    e = avg / ((N + 1e-7) / (N.sum() + 4e-7) * N.sum())[:, None]
    np.testing.assert_allclose(np.asarray(cb.embeddings[...])[used], e[used], rtol=1e-5)

    # straight-through: forward value is the code vector, gradient w.r.t. z is the identity
    out = cb(z)
    np.testing.assert_allclose(out["embeddings"], cb.lookup(out["codes"]), atol=1e-6)
    g = jax.grad(lambda z: jnp.sum(cb(z)["embeddings"] * jnp.arange(8.0).reshape(4, 2)))(z)
    np.testing.assert_allclose(g, np.arange(8.0).reshape(4, 2))
    with pytest.raises(ValueError, match="rng"):
        cb(z, update=True)


def test_vq_vae_shapes_padding_and_gradients():
    cfg = VQVAEConfig(n_hiddens=32, n_res_layers=1, embedding_dim=8, n_codes=16, downsample=(2, 4, 4))
    vq = host_init(lambda: VQVAE(cfg, rngs=nnx.Rngs(0)))
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, 7, 16, 16, 3)), jnp.float32)  # odd T
    z, rec = jit_fn(vq, lambda m, x: (m.encode(x), m.decode(m.encode(x), num_frames=7)))(x)
    assert z.shape == (1, *vq.latent_shape(7, 16, 16), 8) == (1, 4, 4, 4, 8)
    assert rec.shape == x.shape
    with pytest.raises(ValueError, match="not divisible"):
        vq.latent_shape(8, 18, 16)

    # training pass: reconstruction gradients reach the encoder through the quantiser; the codebook
    # is EMA-updated (a Buffer), never differentiated
    small = host_init(lambda: VQVAE(VQVAEConfig(n_hiddens=16, n_res_layers=0, embedding_dim=4, n_codes=8,
                                                downsample=(2, 2, 2)), rngs=nnx.Rngs(0)))
    xs = x[:, :4, :8, :8]

    def loss(m):
        out = m(xs, update=True, rng=jax.random.key(0))
        return jnp.mean(jnp.square(out["recon"] - xs)) + out["commitment"]

    def step(m):
        grads = nnx.grad(loss)(m)
        return grads, nnx.state(m, nnx.Not(nnx.Param))

    grads, buffers = jit_fn(small, step)()
    assert float(jnp.abs(grads["encoder"]["convs"][0]["kernel"][...]).max()) > 0
    assert "codebook" not in grads
    assert bool(buffers["codebook"]["initialized"][...])
    assert not np.allclose(buffers["codebook"]["embeddings"][...], small.codebook.embeddings[...])


# --------------------------------------------------------------------------------------
# 4. The ``vae`` config entry
# --------------------------------------------------------------------------------------


def test_build_vae_entries(tmp_path):
    raw = build_vae("raw")
    x = jnp.ones((1, 3, 8, 8, 3))
    assert isinstance(raw, RawVAE) and raw.encode(x) is x and raw.decode(x) is x
    assert raw.latent_shape(3, 8, 8) == (3, 8, 8) and raw.latent_channels == 3

    sd = nnx.eval_shape(lambda: build_vae(dict(type="sd_vae", model=dict(KL_TINY), micro_batch_size=2)))
    assert sd.latent_channels == 4 and sd.micro_batch_size == 2 and sd.latent_shape(3, 64, 32) == (3, 8, 4)
    os_vae = nnx.eval_shape(lambda: build_vae(dict(type="opensora_vae", spatial=KL_TINY, temporal=TEMPORAL_TINY)))
    assert os_vae.latent_shape(51, 256, 256) == (15, 32, 32) and os_vae.latent_shape(408, 64, 64)[0] == 120
    with pytest.raises(ValueError, match="vae.type="):
        build_vae("vqgan")
    with pytest.raises(ValueError, match="unused keys"):
        build_vae(dict(type="raw", micro_frame_size=3, typo=1))

    # a trained checkpoint: weights + vae_config.json, restored by `type="checkpoint"`
    entry = dict(type="vq_vae", model=dict(n_hiddens=16, n_res_layers=1, embedding_dim=4, n_codes=8))
    trained = host_init(lambda: build_vae(entry), seed=3)
    save_vae_weights(trained, str(tmp_path / "ckpt"), entry)
    restored = build_vae(dict(type="checkpoint", path=str(tmp_path / "ckpt")))
    assert isinstance(restored, VQVAE)
    for a, b in zip(jax.tree.leaves(nnx.state(trained)), jax.tree.leaves(nnx.state(restored))):
        np.testing.assert_array_equal(a, b)
    fresh = nnx.eval_shape(lambda: build_vae(entry))  # abstract until restored
    restore_vae_weights(fresh, str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(fresh.codebook.embeddings[...], trained.codebook.embeddings[...])


def test_vae_architecture_before_and_after_stage0(tmp_path, monkeypatch):
    """Planning tools read a checkpoint entry's geometry without weights: from ``train_config`` before stage 0;
    an entry with neither a saved architecture nor a way to make one is an error naming the file."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # config paths are relative to the repository
    entry = {"type": "checkpoint", "path": str(tmp_path / "none"), "train_config": "configs/vae_shapes.py:stage0"}
    vae = vae_architecture(entry)
    assert vae.latent_shape(8, 32, 32) == (2, 4, 4) and vae.latent_channels == 16
    with pytest.raises(FileNotFoundError, match="vae_config.json"):
        build_vae({"type": "checkpoint", "path": str(tmp_path / "none")})
