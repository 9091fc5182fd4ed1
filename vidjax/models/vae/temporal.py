"""Open-Sora v1.2's causal 3D VAE (``VAE_Temporal_SD``) and the full v1.2 video VAE pipeline.

Shapes: ``x: [B, T, H, W, C]``, latents ``z: [B, T', H', W', L]`` with ``T' = ceil(T / 4)``
for the v1.2 settings (two stride-2 temporal levels).

``CausalConv3d`` pads the front of the time axis by ``k - 1 + (1 - stride)`` zeros and space
symmetrically, so frame t never sees frames after t. The encoder is MAGVIT-v2-like:
ResBlocks (GroupNorm, SiLU, bias-free 3×3×3 convs) per level, stride-(2,1,1) convs between
levels; the decoder upsamples with a conv to ``2C`` channels and depth-to-space in time.
Inputs are front-padded to a multiple of the temporal factor and the decoder crops it back.
GroupNorm statistics span the whole clip, so clips are processed in fixed chunks
(``micro_frame_size`` = 17 frames -> 5 latent frames) to make results independent of length.

``spatial_downsample`` is a vidjax extension (Open-Sora keeps it all False): it lets the same
causal VAE compress pixels in space too (stride (t, 2, 2), depth-to-space in h and w), and
``patch_size`` (default 1) folds p×p pixel patches into channels before the first conv and unfolds
them after the last (as LTX-Video's VAE does), so no conv runs at full resolution: the cheap way to
train a pixel-space video VAE on a CPU. The spatial factor is ``patch_size · 2^(spatial downsamples)``.

Sections: (1) config, (2) causal conv and ResBlock, (3) encoder / decoder / TemporalVAE,
(4) the v1.2 pipeline (spatial VAE -> temporal VAE -> shift/scale), (5) Open-Sora weights.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vidjax.models.layers import Buffer
from vidjax.models.vae.convert import (
    Path,
    export_state_dict,
    join_path,
    load_state_dict,
    read_safetensors,
    resolve_file,
    split_key,
)
from vidjax.models.vae.kl import (
    SD_VAE,
    AutoencoderKLConfig,
    VideoAutoencoderKL,
    diffusers_key,
    diffusers_name,
    gaussian_sample,
    group_norm,
    split_moments,
)

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TemporalVAEConfig:
    """``VAE_Temporal`` arguments; the defaults are ``VAE_Temporal_SD`` (4 latent channels in and out)."""

    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4  # latent channels
    filters: int = 128
    num_res_blocks: int = 4
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    spatial_downsample: tuple[bool, ...] = (False, False, False)  # vidjax extension
    patch_size: int = 1  # vidjax extension: p×p pixel (un)shuffle around the encoder / decoder
    num_groups: int = 32
    dtype: str = "float32"
    # vidjax extension: per-channel latent normalisation, encode -> (mean - shift) / scale (empty: none). The VAE
    # training task measures both on its training clips (``train.latent_norm``), as Open-Sora v1.2 did for its VAE.
    shift: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()

    def __post_init__(self):
        n = len(self.channel_multipliers) - 1
        for name in ("shift", "scale"):
            v = getattr(self, name)
            if v and len(v) != self.embed_dim:
                raise ValueError(f"{name} has {len(v)} entries; expected none or embed_dim={self.embed_dim}")
        if bool(self.shift) != bool(self.scale) or any(s <= 0 for s in self.scale):
            raise ValueError("shift and scale come together, and every scale must be positive")
        if len(self.temporal_downsample) != n or len(self.spatial_downsample) != n:
            raise ValueError(f"temporal_downsample / spatial_downsample need {n} entries "
                             f"(one per level transition of channel_multipliers={self.channel_multipliers})")
        if self.patch_size < 1:
            raise ValueError(f"patch_size={self.patch_size} must be a positive integer")

    @property
    def time_factor(self) -> int:
        return 2 ** sum(map(bool, self.temporal_downsample))

    @property
    def space_factor(self) -> int:
        return self.patch_size * 2 ** sum(map(bool, self.spatial_downsample))

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


# --------------------------------------------------------------------------------------
# 2. Causal conv and ResBlock (x: [B, T, H, W, C])
# --------------------------------------------------------------------------------------


class CausalConv3d(nnx.Module):
    """3D conv, zero-padded by ``k_t - 1 + (1 - s_t)`` frames in front (none behind) and ``k // 2`` in space.

    x: [B, T, H, W, C_in] -> [B, T_out, H / s_h, W / s_w, C_out]; T_out = T for stride 1, T / 2 for
    stride 2 (T even). The kernel lives in ``.conv`` ([kt, kh, kw, C_in, C_out]) like Open-Sora's.
    """

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int], rngs: nnx.Rngs, *,
                 stride: tuple[int, int, int] = (1, 1, 1), bias: bool = True, dtype=None):
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"CausalConv3d needs odd spatial kernels, got {(kt, kh, kw)}")
        self.time_pad = kt - 1 + (1 - stride[0])
        padding = ((self.time_pad, 0), (kh // 2, kh // 2), (kw // 2, kw // 2))
        self.conv = nnx.Conv(cin, cout, (kt, kh, kw), strides=stride, padding=padding, use_bias=bias, dtype=dtype,
                             rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if jax.default_backend() == "cpu" and self.conv.kernel_size[0] > 1:
            return self._folded(x)
        return self.conv(x)

    def _folded(self, x: Array) -> Array:
        """The same convolution as ``kt`` time taps stacked into channels and one 2D conv per output frame.

        XLA's CPU 3D convolution (forward and gradients) runs 5-10× slower per FLOP than its 2D one,
        which makes training the causal VAE on CPU impractical; on accelerators ``self.conv`` runs as is.
        """
        conv = self.conv
        kernel = conv.kernel[...]
        b = conv.bias[...] if conv.bias is not None else None
        dt = conv.dtype or jnp.result_type(x, kernel)
        x, kernel = x.astype(dt), kernel.astype(dt)
        kt, kh, kw, cin, cout = kernel.shape
        st, sh, sw = (conv.strides,) * 3 if isinstance(conv.strides, int) else conv.strides
        x = jnp.pad(x, [(0, 0), (self.time_pad, 0)] + [(0, 0)] * 3)
        T = (x.shape[1] - kt) // st + 1
        taps = jnp.concatenate([x[:, j : j + st * (T - 1) + 1 : st] for j in range(kt)], axis=-1)  # [B,T,H,W,kt·C]
        B, _, H, W, _ = taps.shape
        w2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)  # channel order (tap, C)
        y = jax.lax.conv_general_dilated(taps.reshape(B * T, H, W, kt * cin), w2, (sh, sw),
                                         ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=conv.precision)
        y = y.reshape(B, T, *y.shape[1:])
        return y if b is None else y + b.astype(dt)


class Identity(nnx.Module):
    """A level without downsampling (keeps Open-Sora's ``conv_blocks`` indices)."""

    def __call__(self, x: Array) -> Array:
        return x


class ResBlock(nnx.Module):
    """``shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))``; convs bias-free, 1×1×1 ``conv3`` shortcut."""

    def __init__(self, cin: int, cout: int, groups: int, rngs: nnx.Rngs, *, dtype=None):
        self.norm1 = group_norm(cin, groups, rngs, eps=1e-5, dtype=dtype)
        self.conv1 = CausalConv3d(cin, cout, 3, rngs, bias=False, dtype=dtype)
        self.norm2 = group_norm(cout, groups, rngs, eps=1e-5, dtype=dtype)
        self.conv2 = CausalConv3d(cout, cout, 3, rngs, bias=False, dtype=dtype)
        self.conv3 = CausalConv3d(cin, cout, 1, rngs, bias=False, dtype=dtype) if cin != cout else None

    def __call__(self, x: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.conv3 is None else self.conv3(x)) + h


def depth_to_space(x: Array, ts: int, ss: int) -> Array:
    """[B, T, H, W, (C ts ss ss)] -> [B, T·ts, H·ss, W·ss, C] (Open-Sora's channel order ``(C ts hs ws)``)."""
    return rearrange(x, "b t h w (c ts hs ws) -> b (t ts) (h hs) (w ws) c", ts=ts, hs=ss, ws=ss)


# --------------------------------------------------------------------------------------
# 3. Encoder, decoder, TemporalVAE
# --------------------------------------------------------------------------------------


class Encoder(nnx.Module):
    """x: [B, T, H, W, C] (T a multiple of the time factor) -> moments [B, T/ft, H/fs, W/fs, 2·latent_embed_dim]."""

    def __init__(self, cfg: TemporalVAEConfig, rngs: nnx.Rngs):
        g, dt, n = cfg.num_groups, cfg.compute_dtype, len(cfg.channel_multipliers)
        width = [cfg.filters * m for m in cfg.channel_multipliers]
        self.patch_size = cfg.patch_size
        self.conv_in = CausalConv3d(cfg.in_out_channels * cfg.patch_size**2, cfg.filters, 3, rngs, bias=False,
                                    dtype=dt)
        prev = cfg.filters
        self.block_res_blocks, self.conv_blocks = nnx.List(), nnx.List()
        for i in range(n):
            self.block_res_blocks.append(nnx.List([ResBlock(prev if j == 0 else width[i], width[i], g, rngs, dtype=dt)
                                                   for j in range(cfg.num_res_blocks)]))
            prev = width[i]
            if i < n - 1:
                ts, ss = 1 + cfg.temporal_downsample[i], 1 + cfg.spatial_downsample[i]
                self.conv_blocks.append(CausalConv3d(prev, prev, 3, rngs, stride=(ts, ss, ss), dtype=dt)
                                        if ts > 1 or ss > 1 else Identity())
        self.res_blocks = nnx.List([ResBlock(prev, prev, g, rngs, dtype=dt) for _ in range(cfg.num_res_blocks)])
        self.norm1 = group_norm(prev, g, rngs, eps=1e-5, dtype=dt)
        self.conv2 = CausalConv3d(prev, 2 * cfg.latent_embed_dim, 1, rngs, dtype=dt)

    def __call__(self, x: Array) -> Array:
        p = self.patch_size
        if p > 1:  # space-to-depth, the inverse of depth_to_space(x, 1, p)
            x = rearrange(x, "b t (h hs) (w ws) c -> b t h w (c hs ws)", hs=p, ws=p)
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)  # [B, T/ts, H/ss, W/ss, C]
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(jax.nn.silu(self.norm1(x)))


class Decoder(nnx.Module):
    """z: [B, T', H', W', latent_embed_dim] -> [B, T'·ft, H'·fs, W'·fs, C] (before cropping)."""

    def __init__(self, cfg: TemporalVAEConfig, rngs: nnx.Rngs):
        g, dt, n = cfg.num_groups, cfg.compute_dtype, len(cfg.channel_multipliers)
        width = [cfg.filters * m for m in cfg.channel_multipliers]
        self.strides = [(1 + t, 1 + s) for t, s in zip(cfg.temporal_downsample, cfg.spatial_downsample)]
        prev = width[-1]
        self.conv1 = CausalConv3d(cfg.latent_embed_dim, prev, 3, rngs, dtype=dt)
        self.res_blocks = nnx.List([ResBlock(prev, prev, g, rngs, dtype=dt) for _ in range(cfg.num_res_blocks)])
        blocks, convs = [None] * n, [None] * (n - 1)
        for i in reversed(range(n)):  # built deepest first, stored by level like Open-Sora
            blocks[i] = nnx.List([ResBlock(prev if j == 0 else width[i], width[i], g, rngs, dtype=dt)
                                  for j in range(cfg.num_res_blocks)])
            prev = width[i]
            if i > 0:
                ts, ss = self.strides[i - 1]
                convs[i - 1] = (CausalConv3d(prev, prev * ts * ss * ss, 3, rngs, dtype=dt)
                                if ts > 1 or ss > 1 else Identity())
        self.block_res_blocks, self.conv_blocks = nnx.List(blocks), nnx.List(convs)
        self.norm1 = group_norm(prev, g, rngs, eps=1e-5, dtype=dt)
        self.patch_size = cfg.patch_size
        self.conv_out = CausalConv3d(prev, cfg.in_out_channels * cfg.patch_size**2, 3, rngs, dtype=dt)

    def __call__(self, z: Array) -> Array:
        x = self.conv1(z)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                ts, ss = self.strides[i - 1]
                x = depth_to_space(self.conv_blocks[i - 1](x), ts, ss)  # [B, T·ts, H·ss, W·ss, C]
        x = self.conv_out(jax.nn.silu(self.norm1(x)))
        return depth_to_space(x, 1, self.patch_size) if self.patch_size > 1 else x


class TemporalVAE(nnx.Module):
    """Open-Sora ``VAE_Temporal``: a causal 3D KL-VAE.

    ``encode(x: [B, T, C_in video/latent frames]) -> z: [B, ceil(T/ft), H/fs, W/fs, L]`` (mean, or a
    posterior sample), after front-padding T to a multiple of ``ft`` with zeros.
    ``decode(z, num_frames=T) -> [B, T, H, W, C]``, cropping the front padding.
    """

    def __init__(self, cfg: TemporalVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.compute_dtype
        self.encoder = Encoder(cfg, rngs)
        self.quant_conv = CausalConv3d(2 * cfg.latent_embed_dim, 2 * cfg.embed_dim, 1, rngs, dtype=dt)
        self.post_quant_conv = CausalConv3d(cfg.embed_dim, cfg.latent_embed_dim, 1, rngs, dtype=dt)
        self.decoder = Decoder(cfg, rngs)
        self.latent_channels = cfg.embed_dim
        self.downsample = (cfg.time_factor, cfg.space_factor, cfg.space_factor)

    def time_padding(self, T: int) -> int:
        return -T % self.cfg.time_factor

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        self._check_resolution(H, W)
        fs = self.cfg.space_factor
        return (T + self.time_padding(T)) // self.cfg.time_factor, H // fs, W // fs

    def _check_resolution(self, H: int, W: int) -> None:
        fs = self.cfg.space_factor
        if H % fs or W % fs:
            raise ValueError(f"resolution {H}×{W} is not divisible by {fs}, the causal VAE's spatial factor")

    def encode_moments(self, x: Array) -> tuple[Array, Array]:
        """x: [B, T, H, W, C] -> (mean, logvar) each [B, T', H', W', L], float32."""
        self._check_resolution(*x.shape[2:4])
        x = jnp.pad(x.astype(self.cfg.compute_dtype), [(0, 0), (self.time_padding(x.shape[1]), 0)] + [(0, 0)] * 3)
        return split_moments(self.quant_conv(self.encoder(x)))

    def encode(self, x: Array, *, sample: bool = False, rng: Array | None = None) -> Array:
        mean, logvar = self.encode_moments(x)
        if sample and rng is None:
            raise ValueError("encode(sample=True) needs rng")
        z = gaussian_sample(mean, logvar, rng) if sample else mean
        if self.cfg.scale:
            z = (z - jnp.asarray(self.cfg.shift)) / jnp.asarray(self.cfg.scale)
        return z

    def decode(self, z: Array, *, num_frames: int | None = None) -> Array:
        """z: [B, T', H', W', L] -> [B, num_frames, H, W, C]; ``num_frames`` defaults to ``T'·ft``."""
        full = z.shape[1] * self.cfg.time_factor
        num_frames = full if num_frames is None else num_frames
        if not full - self.cfg.time_factor < num_frames <= full:
            raise ValueError(f"{z.shape[1]} latent frames decode to {full - self.cfg.time_factor + 1}..{full} "
                             f"frames, not num_frames={num_frames}")
        if self.cfg.scale:
            z = z * jnp.asarray(self.cfg.scale) + jnp.asarray(self.cfg.shift)
        return self._decode_raw(z, num_frames)

    def _decode_raw(self, z: Array, num_frames: int) -> Array:
        x = self.decoder(self.post_quant_conv(z.astype(self.cfg.compute_dtype)))
        return x[:, x.shape[1] - num_frames:].astype(jnp.float32)

    def __call__(self, x: Array, *, rng: Array | None = None) -> tuple[Array, Array, Array]:
        """Training pass: x -> (reconstruction [B, T, H, W, C], mean, logvar); samples the posterior if ``rng``.
        Works on the raw latents (no shift / scale)."""
        mean, logvar = self.encode_moments(x)
        z = mean if rng is None else gaussian_sample(mean, logvar, rng)
        return self._decode_raw(z, x.shape[1]), mean, logvar


# --------------------------------------------------------------------------------------
# 4. The Open-Sora v1.2 pipeline: spatial VAE -> temporal VAE -> (z - shift) / scale
# --------------------------------------------------------------------------------------

OPENSORA_SHIFT = (-0.10, 0.34, 0.27, 0.98)
OPENSORA_SCALE = (3.85, 2.32, 2.33, 3.06)


class OpenSoraVAE(nnx.Module):
    """``OpenSoraVAE_V1_2`` (``VideoAutoencoderPipeline``): 4×8×8 compression, 4 channels.

    ``encode(x: [B, T, H, W, 3] in [-1, 1]) -> z: [B, T', H/8, W/8, 4]``: per-frame spatial VAE
    (micro-batched, ×0.18215), then the temporal VAE on each ``micro_frame_size``-frame chunk
    (17 -> 5 latent frames; a shorter remainder is its own chunk), then ``(z - shift) / scale``.
    ``decode(z, num_frames=T)`` inverts it chunk by chunk. ``sample=True`` draws both posteriors
    as Open-Sora's encode does; the default is the deterministic mean.
    """

    def __init__(self, spatial: AutoencoderKLConfig = SD_VAE, temporal: TemporalVAEConfig | None = None, *,
                 micro_batch_size: int | None = 4, micro_frame_size: int | None = 17,
                 shift: tuple[float, ...] = OPENSORA_SHIFT, scale: tuple[float, ...] = OPENSORA_SCALE,
                 rngs: nnx.Rngs):
        temporal = temporal or TemporalVAEConfig()
        if temporal.in_out_channels != spatial.latent_channels:
            raise ValueError("the temporal VAE's in_out_channels must equal the spatial VAE's latent_channels")
        if micro_frame_size is not None and micro_frame_size < 1:
            raise ValueError(f"micro_frame_size={micro_frame_size} must be positive (or None: the whole clip)")
        self.spatial_vae = VideoAutoencoderKL(spatial, micro_batch_size=micro_batch_size, rngs=rngs)
        self.temporal_vae = TemporalVAE(temporal, rngs=rngs)
        self.micro_frame_size = micro_frame_size
        self.shift = Buffer(jnp.broadcast_to(jnp.asarray(shift, jnp.float32), (temporal.embed_dim,)))
        self.scale = Buffer(jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (temporal.embed_dim,)))
        self.latent_channels = temporal.embed_dim
        tf, sf = temporal.time_factor, spatial.downsample_factor * temporal.space_factor
        self.downsample = (tf, sf, sf)

    @property
    def micro_z_frame_size(self) -> int | None:
        mfs = self.micro_frame_size
        return None if mfs is None else self.temporal_vae.latent_shape(mfs, 0, 0)[0]

    def _chunks(self, T: int, size: int | None) -> tuple[int, int]:
        """(number of full ``size``-frame chunks, remainder)."""
        return (0, T) if size is None else divmod(T, size)

    def _latent_frames(self, T: int) -> int:
        n, rest = self._chunks(T, self.micro_frame_size)
        return n * (self.micro_z_frame_size or 0) + -(-rest // self.temporal_vae.cfg.time_factor)

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        _, h, w = self.spatial_vae.latent_shape(T, H, W)
        _, h, w = self.temporal_vae.latent_shape(T, h, w)
        return self._latent_frames(T), h, w

    def _per_chunk(self, fn, x: Array, size: int | None) -> Array:
        """``fn(chunk, index, full)`` on each full ``size``-frame chunk of x's time axis (one ``lax.map``
        body, so memory does not grow with T) and on the shorter remainder; outputs concatenated in time."""
        n, rest = self._chunks(x.shape[1], size)
        outs = []
        if n:
            chunks = rearrange(x[:, : n * size], "b (n f) ... -> n b f ...", n=n)
            out = jax.lax.map(lambda a: fn(a[0], a[1], True), (chunks, jnp.arange(n)))
            outs.append(rearrange(out, "n b f ... -> b (n f) ..."))
        if rest:
            outs.append(fn(x[:, n * (size or 0):], n, False))
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)

    def encode(self, x: Array, *, sample: bool = False, rng: Array | None = None) -> Array:
        if sample and rng is None:
            raise ValueError("encode(sample=True) needs rng")
        k_spatial, k_temporal = jax.random.split(rng) if sample else (None, None)
        x_z = self.spatial_vae.encode(x, sample=sample, rng=k_spatial)  # [B, T, h, w, 4]

        def chunk(c: Array, i, full: bool) -> Array:
            key = jax.random.fold_in(k_temporal, i) if sample else None
            return self.temporal_vae.encode(c, sample=sample, rng=key)  # [B, T'_chunk, h, w, 4]

        z = self._per_chunk(chunk, x_z, self.micro_frame_size)
        return (z - self.shift[...]) / self.scale[...]

    def decode(self, z: Array, *, num_frames: int | None = None) -> Array:
        """z: [B, T', h, w, 4] -> [B, num_frames, H, W, 3]; ``num_frames`` defaults to the longest clip
        with T' latent frames (17 per full chunk of 5 latent frames, 4 per remaining latent frame)."""
        mfs, mzs = self.micro_frame_size, self.micro_z_frame_size
        n, rest = self._chunks(z.shape[1], mzs)
        if num_frames is None:
            num_frames = n * (mfs or 0) + rest * self.temporal_vae.cfg.time_factor
        if num_frames < 1 or self._latent_frames(num_frames) != z.shape[1]:
            raise ValueError(f"num_frames={num_frames} does not encode to {z.shape[1]} latent frames")
        tail = num_frames - n * (mfs or 0)  # frames of the remaining short chunk
        z = z * self.scale[...] + self.shift[...]

        def chunk(c: Array, i, full: bool) -> Array:
            return self.temporal_vae.decode(c, num_frames=mfs if full else tail)

        x_z = self._per_chunk(chunk, z, mzs)  # [B, num_frames, h, w, 4]
        return self.spatial_vae.decode(x_z)


# --------------------------------------------------------------------------------------
# 5. Open-Sora weights (hpcai-tech/OpenSora-VAE-v1.2 ``model.safetensors`` or a ``.pt`` state_dict)
# --------------------------------------------------------------------------------------


def temporal_key(name: str) -> Path:
    """A ``VAE_Temporal`` name (``encoder.block_res_blocks.1.0.conv1.conv.weight``) -> our path.

    Our modules keep Open-Sora's attribute names, so only the leaf changes: a conv ``weight`` is our
    ``kernel``, a GroupNorm (``norm*``) ``weight`` our ``scale``.
    """
    module, leaf = name.rsplit(".", 1)
    if leaf == "weight":
        leaf = "scale" if module.rsplit(".", 1)[-1].startswith("norm") else "kernel"
    return split_key(module) + (leaf,)


def temporal_name(path: Path) -> str:
    return f"{join_path(path[:-1])}.{'bias' if path[-1] == 'bias' else 'weight'}"


def opensora_key(name: str) -> Path | None:
    """An ``OpenSoraVAE_V1_2`` state_dict name -> our path in :class:`OpenSoraVAE`.

    ``spatial_vae.module.*`` are diffusers names, ``temporal_vae.*`` ``VAE_Temporal`` names,
    ``scale`` / ``shift`` the normalisation buffers (stored as [1, C, 1, 1, 1]).
    """
    if name in ("scale", "shift"):
        return (name,)
    if name.startswith("spatial_vae.module."):
        return ("spatial_vae", "module") + diffusers_key(name[len("spatial_vae.module."):])
    if name.startswith("temporal_vae."):
        return ("temporal_vae",) + temporal_key(name[len("temporal_vae."):])
    return split_key(name)  # reported as unexpected


def opensora_name(path: Path) -> str:
    if path[0] == "spatial_vae":
        return "spatial_vae.module." + diffusers_name(path[2:])
    if path[0] == "temporal_vae":
        return "temporal_vae." + temporal_name(path[1:])
    return join_path(path)


def opensora_state_dict(model: OpenSoraVAE) -> dict[str, np.ndarray]:
    """Our weights under Open-Sora v1.2 names and torch layouts (``scale`` / ``shift`` as [1, C, 1, 1, 1])."""
    sd = export_state_dict(model, opensora_name)
    for k in ("scale", "shift"):
        sd[k] = sd[k].reshape(1, -1, 1, 1, 1)
    return sd


def load_opensora_state_dict(model: OpenSoraVAE | TemporalVAE, state_dict: dict[str, np.ndarray]) -> None:
    """Load an Open-Sora v1.2 VAE state_dict into the pipeline, or its ``temporal_vae.*`` part into a
    standalone :class:`TemporalVAE`."""
    if isinstance(model, TemporalVAE):
        sub = {k[len("temporal_vae."):]: v for k, v in state_dict.items() if k.startswith("temporal_vae.")}
        load_state_dict(model, sub or state_dict, temporal_key, what="Open-Sora temporal VAE state_dict")
    else:
        load_state_dict(model, state_dict, opensora_key, what="Open-Sora v1.2 VAE state_dict")


def load_opensora_vae(path: str, *, micro_batch_size: int | None = 4, micro_frame_size: int | None = 17,
                      dtype: str = "float32", spatial: AutoencoderKLConfig | None = None,
                      temporal: TemporalVAEConfig | None = None) -> OpenSoraVAE:
    """Build the v1.2 VAE (``spatial`` / ``temporal`` default to the published sizes) and load ``model.safetensors``
    (a file or the HF folder), or a torch ``.pt``."""
    model = nnx.eval_shape(lambda: OpenSoraVAE(  # abstract: every tensor comes from the checkpoint
        dataclasses.replace(spatial or SD_VAE, dtype=dtype), dataclasses.replace(temporal or TemporalVAEConfig(),
                                                                                dtype=dtype),
        micro_batch_size=micro_batch_size, micro_frame_size=micro_frame_size, rngs=nnx.Rngs(0)))
    if path.endswith((".pt", ".pth")):
        import torch  # only for legacy pickled checkpoints

        sd = torch.load(path, map_location="cpu")
        sd = {k: v.float().numpy() for k, v in sd.get("state_dict", sd).items()}
    else:
        sd = read_safetensors(resolve_file(path, ("model.safetensors",)))
    load_opensora_state_dict(model, sd)
    return model


__all__ = ["TemporalVAEConfig", "CausalConv3d", "ResBlock", "TemporalVAE", "OpenSoraVAE", "OPENSORA_SHIFT",
           "OPENSORA_SCALE", "depth_to_space", "temporal_key", "temporal_name", "opensora_key", "opensora_name",
           "opensora_state_dict", "load_opensora_state_dict", "load_opensora_vae"]
