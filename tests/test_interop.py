"""PyTorch interop: export to / import from Open-Sora v1.0 and PixArt-α state_dicts.

The PyTorch module below is written from the reference spec (docs: opensora.md §1, §2), not
from our code: xformers' block-diagonal caption packing is reproduced literally, position
tables are built with numpy ``meshgrid(w, h)`` as in MAE/PixArt.
"""

from __future__ import annotations

import functools
import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax.interop import (
    CheckpointFormatError,
    CheckpointMismatchError,
    load_state_dict_into_stdit,
    read_checkpoint,
    save_safetensors,
    select_state_dict,
    state_dict_shapes,
    stdit_to_state_dict,
)
from vidjax.models.stdit import STDiT, count_params, stdit_config

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
pytestmark = pytest.mark.torch

TINY = dict(depth=2, hidden=64, heads=4, caption_channels=32, model_max_length=8, space_scale=0.5, time_scale=2 / 3)
INPUT = (4, 8, 12)  # latent T, H, W: a non-square 4×6 patch grid
B = 2

# --------------------------------------------------------------------------------------
# PyTorch reference: Open-Sora v1.0 STDiT (+ the STDiT3 options), from the spec
# --------------------------------------------------------------------------------------



def exit_code(main, argv) -> int:
    """The exit status of a command line's ``main`` run as ``python -m`` runs it (vidjax.cli.run)."""
    from vidjax import cli

    with pytest.raises(SystemExit) as e:
        cli.run("test", main, argv)
    return e.value.code

def np_sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # sin first


def np_sincos_2d(dim, gh, gw, scale):
    grid_h = np.arange(gh, dtype=np.float32) / scale
    grid_w = np.arange(gw, dtype=np.float32) / scale
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # w goes first
    return np.concatenate([np_sincos_1d(dim // 2, grid[0]), np_sincos_1d(dim // 2, grid[1])], axis=1)


def t_sinusoid(t, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos first


class RefRMSNorm(nn.Module):  # LlamaRMSNorm
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rope(x):  # rotary_embedding_torch, interleaved pairs, theta 1e4, positions along dim -2
    n, d = x.shape[-2], x.shape[-1]
    freqs = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    ang = (torch.arange(n).float()[:, None] * freqs[None]).repeat_interleave(2, dim=-1)
    pairs = x.reshape(*x.shape[:-1], d // 2, 2)
    rot = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)
    return x * ang.cos() + rot * ang.sin()


def ref_attention(q, k, v):
    """Scaled dot-product attention as the reference computes it: [..., N, D] x [..., M, D] -> [..., N, D]."""
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).float().softmax(-1).to(q.dtype)
    return attn @ v


class RefAttention(nn.Module):
    def __init__(self, C, H, qk_norm=False, use_rope=False):
        super().__init__()
        self.H, self.D, self.use_rope = H, C // H, use_rope
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        if qk_norm:
            self.q_norm, self.k_norm = RefRMSNorm(self.D), RefRMSNorm(self.D)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x):
        Bn, N, C = x.shape
        q, k, v = self.qkv(x).view(Bn, N, 3, self.H, self.D).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = rope(q), rope(k)
        return self.proj(ref_attention(q, k, v).transpose(1, 2).reshape(Bn, N, C))


class RefCrossAttention(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H, self.D = H, C // H
        self.q_linear, self.kv_linear, self.proj = nn.Linear(C, C), nn.Linear(C, 2 * C), nn.Linear(C, C)

    def forward(self, x, cond, y_lens):  # x [B, N, C]; cond packed [1, ΣL, C]
        Bx, N, C = x.shape
        q = self.q_linear(x).view(1, -1, self.H, self.D)
        k, v = self.kv_linear(cond).view(1, -1, 2, self.H, self.D).unbind(2)
        outs, start = [], 0
        for b in range(Bx):  # BlockDiagonalMask.from_seqlens([N] * B, y_lens)
            qb = q[0, b * N:(b + 1) * N].transpose(0, 1)
            kb = k[0, start:start + y_lens[b]].transpose(0, 1)
            vb = v[0, start:start + y_lens[b]].transpose(0, 1)
            outs.append(ref_attention(qb, kb, vb).transpose(0, 1).reshape(N, C))
            start += y_lens[b]
        return self.proj(torch.cat(outs).view(Bx, N, C))


class RefMlp(nn.Module):
    def __init__(self, din, hidden, dout):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(din, hidden), nn.Linear(hidden, dout)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)  # no affine


class RefBlock(nn.Module):
    def __init__(self, C, H, T, S, qk_norm, use_rope):
        super().__init__()
        self.T, self.S = T, S
        self.attn = RefAttention(C, H, qk_norm)
        self.cross_attn = RefCrossAttention(C, H)
        self.mlp = RefMlp(C, 4 * C, C)
        self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)
        self.attn_temp = RefAttention(C, H, qk_norm, use_rope)

    def forward(self, x, y, t0, y_lens, tpe):
        Bx, N, C = x.shape
        T, S = self.T, self.S
        sh1, sc1, g1, sh2, sc2, g2 = (self.scale_shift_table[None] + t0.reshape(Bx, 6, -1)).chunk(6, dim=1)
        xs = ln(x) * (1 + sc1) + sh1
        xs = self.attn(xs.reshape(Bx * T, S, C)).reshape(Bx, T * S, C)
        x = x + g1 * xs
        xt = x.reshape(Bx, T, S, C).permute(0, 2, 1, 3).reshape(Bx * S, T, C)  # B (T S) C -> (B S) T C
        if tpe is not None:
            xt = xt + tpe
        xt = self.attn_temp(xt).reshape(Bx, S, T, C).permute(0, 2, 1, 3).reshape(Bx, T * S, C)
        x = x + g1 * xt  # re-uses gate_msa
        x = x + self.cross_attn(x, y, y_lens)
        return x + g2 * self.mlp(ln(x) * (1 + sc2) + sh2)


class RefEmbedderMlp(nn.Module):  # TimestepEmbedder: mlp = Sequential(Linear, SiLU, Linear)
    def __init__(self, C):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, C), nn.SiLU(), nn.Linear(C, C))

    def forward(self, t):
        return self.mlp(t_sinusoid(t))


class RefCaptionEmbedder(nn.Module):
    def __init__(self, c_text, C, L):
        super().__init__()
        self.y_proj = RefMlp(c_text, C, C)
        self.register_buffer("y_embedding", torch.randn(L, c_text) / c_text**0.5)


class RefFinal(nn.Module):
    def __init__(self, C, out):
        super().__init__()
        self.linear = nn.Linear(C, out)
        self.scale_shift_table = nn.Parameter(torch.randn(2, C) / C**0.5)

    def forward(self, x, t):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(ln(x) * (1 + scale) + shift)


class RefSTDiT(nn.Module):
    def __init__(self, input_size, depth, hidden, heads, caption_channels, model_max_length, space_scale, time_scale,
                 in_channels=4, patch=(1, 2, 2), qk_norm=False, temporal_rope=False, fps_conditioning=False):
        super().__init__()
        C = hidden
        self.patch, self.out_channels = patch, 2 * in_channels
        self.T, self.Hp, self.Wp = (input_size[i] // patch[i] for i in range(3))
        S = self.Hp * self.Wp
        self.register_buffer("pos_embed", torch.from_numpy(np_sincos_2d(C, self.Hp, self.Wp, space_scale))
                             .float()[None])
        tpos = np.arange(self.T)[..., None] / time_scale
        self.register_buffer("pos_embed_temporal", torch.from_numpy(np_sincos_1d(C, tpos)).float()[None])
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv3d(in_channels, C, kernel_size=patch, stride=patch)
        self.t_embedder = RefEmbedderMlp(C)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.y_embedder = RefCaptionEmbedder(caption_channels, C, model_max_length)
        if fps_conditioning:
            self.fps_embedder = RefEmbedderMlp(C)
        self.blocks = nn.ModuleList([RefBlock(C, heads, self.T, S, qk_norm, temporal_rope) for _ in range(depth)])
        self.final_layer = RefFinal(C, int(np.prod(patch)) * self.out_channels)

    def forward(self, x, timestep, y, mask, fps=None):  # x [B, C, T, H, W], y [B, 1, L, C_text], mask [B, L]
        Bx = x.shape[0]
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2)  # [B, T*S, C], order (t, h, w)
        C = x.shape[-1]
        x = (x.view(Bx, self.T, -1, C) + self.pos_embed).view(Bx, -1, C)
        t = self.t_embedder(timestep)
        if fps is not None:
            t = t + self.fps_embedder(fps)
        t0 = self.t_block(t)
        y = self.y_embedder.y_proj(y)
        y = y.squeeze(1).masked_select(mask.unsqueeze(-1) != 0).view(1, -1, C)
        y_lens = mask.sum(dim=1).tolist()
        for i, block in enumerate(self.blocks):
            x = block(x, y, t0, y_lens, self.pos_embed_temporal if i == 0 else None)
        x = self.final_layer(x, t)
        pt, ph, pw = self.patch
        x = x.view(Bx, self.T, self.Hp, self.Wp, pt, ph, pw, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(Bx, self.out_channels, self.T * pt, self.Hp * ph, self.Wp * pw)
        return x.float()


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


def randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Make every parameter non-trivial (zero-initialised projections and biases included)."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            v = np.asarray(var.get_value())
            var.set_value(jnp.asarray(v + rng.normal(0, 0.05, v.shape).astype(v.dtype)))
    return model


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, *INPUT, 4)).astype(np.float32)
    t = np.array([17.0, 873.0], np.float32)
    y = rng.normal(size=(B, TINY["model_max_length"], TINY["caption_channels"])).astype(np.float32)
    mask = np.zeros((B, TINY["model_max_length"]), bool)
    mask[0, :3], mask[1, :8] = True, True  # padding in sample 0
    fps = np.array([8.0, 24.0], np.float32)
    return dict(x=x, t=t, y=y, mask=mask, fps=fps)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, t, y, mask, fps):
    return nnx.merge(graphdef, state)(x, t, y, mask, fps=fps)


def run_ours(model, inp, fps=False):
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(graphdef, state, inp["x"], inp["t"], inp["y"], inp["mask"], inp["fps"] if fps else None))


def run_ref(ref, inp, fps=False):
    with torch.no_grad():
        out = ref(torch.from_numpy(inp["x"]).permute(0, 4, 1, 2, 3), torch.from_numpy(inp["t"]),
                  torch.from_numpy(inp["y"])[:, None], torch.from_numpy(inp["mask"]).long(),
                  torch.from_numpy(inp["fps"]) if fps else None)
    return out.permute(0, 2, 3, 4, 1).numpy()


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random tiny STDiT, its export file, and its output on the shared inputs."""
    model = randomize(STDiT(stdit_config(**TINY), rngs=nnx.Rngs(0)), seed=1)
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    save_safetensors(stdit_to_state_dict(model, *INPUT), path)
    return model, path


# --------------------------------------------------------------------------------------
# Export: names, shapes and numerics against the PyTorch reference
# --------------------------------------------------------------------------------------


def test_export_loads_strictly_into_reference_and_matches(exported, inputs):
    from safetensors.torch import load_file

    model, path = exported
    state = nnx.state(model)
    assert float(jnp.abs(state["blocks"]["attn_temp"]["proj"]["kernel"][...]).min()) > 0  # non-trivial
    assert float(jnp.abs(state["final_layer"]["linear"]["kernel"][...]).max()) > 0
    ref = RefSTDiT(INPUT, **TINY)
    ref.load_state_dict(load_file(str(path)), strict=True)  # all names, shapes and buffers
    ours, theirs = run_ours(model, inputs), run_ref(ref, inputs)
    err = rel_err(ours, theirs)
    print(f"export parity (fp32, padded caption mask): rel err {err:.2e}")
    assert err <= 1e-4


def test_stdit3_options_match_reference(inputs, tmp_path):
    from safetensors.torch import load_file

    opts = dict(qk_norm=True, temporal_rope=True, fps_conditioning=True)
    model = randomize(STDiT(stdit_config(**TINY, **opts), rngs=nnx.Rngs(1)), seed=2)
    path = tmp_path / "stdit3.safetensors"
    save_safetensors(stdit_to_state_dict(model, *INPUT), path)
    ref = RefSTDiT(INPUT, **TINY, **opts)
    ref.load_state_dict(load_file(str(path)), strict=True)
    err = rel_err(run_ours(model, inputs, fps=True), run_ref(ref, inputs, fps=True))
    print(f"STDiT3 options parity: rel err {err:.2e}")
    assert err <= 1e-4


def test_export_import_round_trip_is_bit_exact(exported):
    model, path = exported
    fresh = STDiT(stdit_config(**TINY), rngs=nnx.Rngs(7))
    report = load_state_dict_into_stdit(fresh, read_checkpoint(path))
    assert report.dropped == ["pos_embed", "pos_embed_temporal"] and not report.missing
    a = jax.tree.leaves(nnx.state(model))
    b = jax.tree.leaves(nnx.state(fresh))
    assert len(a) == len(b) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b))
    # and a second export is byte-identical
    again = stdit_to_state_dict(fresh, *INPUT)
    first = read_checkpoint(path)
    assert again.keys() == first.keys() and all(np.array_equal(again[k], first[k]) for k in first)


def test_safetensors_import_needs_no_torch(exported, monkeypatch, tmp_path):
    _, path = exported
    pth = tmp_path / "x.pth"
    pth.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    assert len(read_checkpoint(path)) > 0
    with pytest.raises(CheckpointFormatError, match="needs torch"):
        read_checkpoint(pth)


# --------------------------------------------------------------------------------------
# Import: PixArt-α and Open-Sora checkpoints
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixart(tmp_path_factory):
    """A PixArt-α-shaped .pth made from the reference model: no attn_temp, Conv2d patch kernel,
    a pos_embed of another resolution, everything under ``state_dict``."""
    torch.manual_seed(0)
    ref = RefSTDiT(INPUT, **TINY)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for block in ref.blocks:  # Open-Sora initialize_temporal
            block.attn_temp.proj.weight.zero_()
            block.attn_temp.proj.bias.zero_()
    sd = {k: v.clone() for k, v in ref.state_dict().items() if "attn_temp" not in k and k != "pos_embed_temporal"}
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"][:, :, 0]  # Conv2d [C, c, 2, 2]
    sd["pos_embed"] = torch.zeros(1, 1024, TINY["hidden"])  # PixArt-512 grid
    path = tmp_path_factory.mktemp("pixart") / "PixArt-tiny.pth"
    torch.save({"state_dict": sd}, path)
    return ref, path


def test_pixart_import_matches_reference(pixart, inputs):
    ref, path = pixart
    model = STDiT(stdit_config(**TINY), rngs=nnx.Rngs(3))
    report = load_state_dict_into_stdit(model, read_checkpoint(path), allow_missing=True)
    assert report.conv2d_unsqueezed and report.dropped == ["pos_embed"]
    assert sorted({m.split(".", 2)[2] for m in report.missing}) == [
        "attn_temp.proj.bias", "attn_temp.proj.weight", "attn_temp.qkv.bias", "attn_temp.qkv.weight"]
    assert float(jnp.abs(nnx.state(model)["blocks"]["attn_temp"]["proj"]["kernel"][...]).max()) == 0
    err = rel_err(run_ours(model, inputs), run_ref(ref, inputs))
    print(f"PixArt import parity: rel err {err:.2e}")
    assert err <= 1e-4


def test_pixart_import_without_allow_missing_lists_the_keys(pixart):
    _, path = pixart
    model = STDiT(stdit_config(**TINY), rngs=nnx.Rngs(3))
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_into_stdit(model, read_checkpoint(path))
    msg = str(err.value)
    assert "8 missing keys" in msg and "blocks.{0..1}.attn_temp.qkv.weight" in msg and "--allow-missing" in msg


def test_unexpected_and_mismatched_keys_are_errors_even_with_allow_missing(exported):
    model, path = exported
    sd = read_checkpoint(path)
    sd["csize_embedder.mlp.0.weight"] = np.zeros((4, 4), np.float32)  # a PixArt-MS key
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys: csize_embedder\.mlp\.0\.weight"):
        load_state_dict_into_stdit(model, sd, allow_missing=True)
    other = nnx.eval_shape(lambda: STDiT(stdit_config(**{**TINY, "hidden": 32}), rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches.*\n.*checkpoint \(64,\) vs model \(32,\)"):
        load_state_dict_into_stdit(other, read_checkpoint(path), allow_missing=True)
    sd = read_checkpoint(path)
    del sd["blocks.1.mlp.fc2.bias"]  # not an optional key
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: blocks\.\{1\}\.mlp\.fc2\.bias"):
        load_state_dict_into_stdit(model, sd, allow_missing=True)


def test_checkpoint_selection_rules():
    w = {"a": np.ones(2)}
    assert select_state_dict({"ema": w, "state_dict": {"a": np.zeros(2)}, "step": 3})["a"][0] == 1  # ema first
    assert select_state_dict({"state_dict": w, "epoch": 1})["a"][0] == 1
    assert select_state_dict({"ema": {"a": np.zeros(2)}, "state_dict": w}, "state_dict")["a"][0] == 1
    with pytest.raises(CheckpointFormatError, match="not a tensor"):
        select_state_dict({"a": np.ones(2), "epoch": 3})
    with pytest.raises(CheckpointFormatError, match="no 'ema' entry"):
        select_state_dict({"state_dict": w}, "ema")


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointFormatError, match="unknown checkpoint format"):
        read_checkpoint(tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointFormatError, match="not a readable PyTorch checkpoint") as err:
        read_checkpoint(tmp_path / "bad.pth")
    assert "unsafe" not in str(err.value)  # random bytes: no flag would help, so none is advised
    import argparse

    import torch

    # a pickled object that a weights-only load refuses (as training checkpoints with their args often hold)
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointFormatError, match="python -m vidjax.convert .* --unsafe-pickle"):
        read_checkpoint(tmp_path / "objects.pth")


# --------------------------------------------------------------------------------------
# XL/2: the published sizes, without allocating the model
# --------------------------------------------------------------------------------------


def test_xl2_counts_and_reference_table():
    model = nnx.eval_shape(lambda: STDiT(stdit_config("STDiT-XL/2"), rngs=nnx.Rngs(0)))
    assert count_params(model) == 759_620_768
    shapes = state_dict_shapes(model, 16, 32, 32)  # 16×256² video through the 8× VAE
    assert len(shapes) == 550
    assert sum(int(np.prod(s)) for s in shapes.values()) == 760_425_632
    table = {
        "pos_embed": (1, 256, 1152), "pos_embed_temporal": (1, 16, 1152),
        "x_embedder.proj.weight": (1152, 4, 1, 2, 2), "x_embedder.proj.bias": (1152,),
        "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.2.weight": (1152, 1152),
        "t_block.1.weight": (6912, 1152), "t_block.1.bias": (6912,),
        "y_embedder.y_proj.fc1.weight": (1152, 4096), "y_embedder.y_proj.fc2.weight": (1152, 1152),
        "y_embedder.y_embedding": (120, 4096),
        "blocks.27.scale_shift_table": (6, 1152),
        "blocks.0.attn.qkv.weight": (3456, 1152), "blocks.0.attn.proj.weight": (1152, 1152),
        "blocks.5.cross_attn.q_linear.weight": (1152, 1152), "blocks.5.cross_attn.kv_linear.weight": (2304, 1152),
        "blocks.5.cross_attn.kv_linear.bias": (2304,), "blocks.5.cross_attn.proj.weight": (1152, 1152),
        "blocks.9.mlp.fc1.weight": (4608, 1152), "blocks.9.mlp.fc2.weight": (1152, 4608),
        "blocks.27.attn_temp.qkv.weight": (3456, 1152), "blocks.27.attn_temp.proj.bias": (1152,),
        "final_layer.scale_shift_table": (2, 1152), "final_layer.linear.weight": (32, 1152),
    }
    assert {k: shapes[k] for k in table} == table


# --------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------

TINY_SETS = ["--model", "STDiT-S/2", "--set", "depth=2", "--set", "hidden=64", "--set", "heads=4",
             "--set", "caption_channels=32", "--set", "model_max_length=8", "--set", "space_scale=0.5",
             "--set", f"time_scale={2 / 3!r}"]


@pytest.mark.parametrize("module", ["vidjax.export", "vidjax.convert"])
def test_cli_help(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0 and f"python -m {module}" in capsys.readouterr().out


def test_convert_cli(pixart, inputs, tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from vidjax.convert import main

    ref, pth = pixart
    out = tmp_path / "stdit.safetensors"
    assert main([str(pth), "--out", str(out), "--allow-missing", "--input-size", *map(str, INPUT), *TINY_SETS]) == 0
    assert "Conv2d -> Conv3d" in capsys.readouterr().out
    converted = RefSTDiT(INPUT, **TINY)
    converted.load_state_dict(load_file(str(out)), strict=True)  # complete: attn_temp written, proj zero
    assert rel_err(run_ref(converted, inputs), run_ref(ref, inputs)) <= 1e-5
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["opensora_kwargs"]["hidden_size"] == 64 and meta["num_tensors"] == len(converted.state_dict())

    # clear errors: missing file, wrong format, mismatched config, missing keys without --allow-missing
    cases = [([str(tmp_path / "nope.pth")], "no such checkpoint file"),
             ([str(out.with_suffix(".json"))], "unknown checkpoint format"),
             ([str(pth), "--allow-missing", *TINY_SETS, "--set", "hidden=32"], "shape mismatches"),
             ([str(pth), *TINY_SETS], "--allow-missing"),
             ([str(pth), *TINY_SETS, "--set", "widht=3"], "widht")]
    for args, message in cases:
        assert exit_code(main, [*args, "--out", str(tmp_path / "x.safetensors")]) == 2
        assert message in capsys.readouterr().err


def test_export_cli(exported, inputs, tmp_path, capsys, monkeypatch):
    import json

    import ml_collections
    from safetensors.torch import load_file

    import vidjax.export

    model, _ = exported
    holder = types.SimpleNamespace(dit=model)  # a TextToVideo stand-in
    config = ml_collections.ConfigDict({"model": {"size": ""}})
    monkeypatch.setattr(vidjax.export, "restore_model", lambda workdir, step, ema: (config, holder, 40))
    out = tmp_path / "model.safetensors"
    assert vidjax.export.main(["--workdir", str(tmp_path), "--ema", "--out", str(out),
                               "--input-size", *map(str, INPUT)]) == 0
    ref = RefSTDiT(INPUT, **TINY)
    ref.load_state_dict(load_file(str(out)), strict=True)
    assert rel_err(run_ours(model, inputs), run_ref(ref, inputs)) <= 1e-4
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["step"] == 40 and meta["ema"] is True and meta["opensora_kwargs"]["input_size"] == list(INPUT)
    capsys.readouterr()
    assert exit_code(vidjax.export.main, ["--workdir", str(tmp_path), "--out", "model.pth"]) == 2
    assert "must be a .safetensors" in capsys.readouterr().err


def test_export_cli_missing_workdir(tmp_path, capsys):
    pytest.importorskip("vidjax.checkpoint")
    from vidjax.export import main

    assert exit_code(main, ["--workdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "no checkpoints folder" in capsys.readouterr().err


def test_export_cli_from_a_training_workdir(tmp_path, inputs):
    """The real path: an orbax workdir written by vidjax.checkpoint, restored and exported."""
    import importlib.util
    from pathlib import Path

    from safetensors.torch import load_file

    checkpoint = pytest.importorskip("vidjax.checkpoint")
    from vidjax.export import main
    from vidjax.models.t2v import build_model

    spec = importlib.util.spec_from_file_location("shapes_tiny", Path(__file__).parents[1] / "configs/shapes_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.seed = 0
    config.data.update(frames=INPUT[0], height=INPUT[1], width=INPUT[2])
    config.text.update(dim=TINY["caption_channels"], max_length=TINY["model_max_length"])
    config.model.update(depth=2, hidden=64, heads=4, patch=(1, 2, 2), learn_sigma=True, space_scale=0.5,
                        time_scale=2 / 3)
    config.vae = {"type": "raw"}
    model = build_model(config, nnx.Rngs(0), latent_channels=3)  # raw pixels are the latents
    randomize(model, seed=5)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))  # buffers: the null caption
    ema = jax.tree.map(lambda a: a * 0.5, params)
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(3, params=params, ema=ema, opt={"count": np.zeros(())}, rest=rest, data_iter=None, config=config)
    ckpt.close()

    out = tmp_path / "model.safetensors"
    assert main(["--workdir", str(tmp_path), "--ema", "--out", str(out)]) == 0
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, ema)
    nnx.update(model, state)  # the EMA weights were exported
    ref = RefSTDiT(INPUT, in_channels=3, **TINY)
    ref.load_state_dict(load_file(str(out)), strict=True)
    rgb = {**inputs, "x": inputs["x"][..., :3]}
    assert rel_err(run_ours(model.dit, rgb), run_ref(ref, rgb)) <= 1e-4
