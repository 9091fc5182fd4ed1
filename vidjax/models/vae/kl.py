"""The image VAE of Stable Diffusion (diffusers ``AutoencoderKL``) and its per-frame video wrapper.

Shapes: images ``x: [N, H, W, C]``, videos ``x: [B, T, H, W, C]``, latents ``z: [.., h, w, L]`` with
``h = H / f``, ``f = 2 ** (len(block_out_channels) - 1)`` (8 for SD / SDXL), ``L = latent_channels``.

Architecture (diffusers names): ``conv_in``, down blocks of ResNets with a stride-2 conv
(padded right/bottom only), a mid block ResNet -> single-head attention -> ResNet,
GroupNorm + SiLU + ``conv_out`` to mean and log-variance, ``quant_conv`` (1×1); the decoder
mirrors it with ``layers_per_block + 1`` ResNets per up block and nearest-neighbour 2× upsampling.

Sections: (1) config, (2) building blocks, (3) encoder / decoder / AutoencoderKL,
(4) diagonal Gaussian posterior, (5) diffusers weights, (6) the video wrapper.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange, repeat
from flax import nnx

from vidjax.models.layers import attention, linear
from vidjax.models.vae.convert import (
    Path,
    export_state_dict,
    join_path,
    load_state_dict,
    read_safetensors,
    resolve_file,
    split_key,
)

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    """The fields of a diffusers ``AutoencoderKL`` ``config.json`` that shape the network.

    The defaults are ``sd-vae-ft-ema`` / the SDXL VAE (the same architecture).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: str = "float32"  # compute dtype; parameters stay float32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], **overrides) -> AutoencoderKLConfig:
        """From a diffusers ``config.json`` dict; rejects block types and activations we do not build."""
        n = len(config.get("block_out_channels", cls.block_out_channels))
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = list(config.get(key, [kind] * n))
            if types != [kind] * n:
                raise ValueError(f"AutoencoderKL {key}={types}: only {kind} blocks are supported")
        if config.get("act_fn", "silu") != "silu":
            raise ValueError(f"AutoencoderKL act_fn={config['act_fn']!r}: only 'silu' is supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in config.items() if k in names}
        kw.update(overrides)
        kw["block_out_channels"] = tuple(kw.get("block_out_channels", cls.block_out_channels))
        return cls(**kw)


SD_VAE = AutoencoderKLConfig()  # stabilityai/sd-vae-ft-ema; also the SDXL VAE used by Open-Sora v1.2

# --------------------------------------------------------------------------------------
# 2. Building blocks (x: [N, H, W, C])
# --------------------------------------------------------------------------------------


def conv2d(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, *, stride: int = 1, padding: Any = None,
           dtype=None) -> nnx.Conv:
    """``nn.Conv2d`` with torch's symmetric ``kernel // 2`` padding unless ``padding`` is given."""
    pad = kernel // 2
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride,
                    padding=((pad, pad), (pad, pad)) if padding is None else padding, dtype=dtype, rngs=rngs)


def group_norm(channels: int, groups: int, rngs: nnx.Rngs, *, eps: float = 1e-6, dtype=None) -> nnx.GroupNorm:
    """torch ``GroupNorm``: statistics per sample and group over every non-batch axis (time too, for video)."""
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class ResnetBlock2D(nnx.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``, with a 1×1 ``conv_shortcut`` when C changes."""

    def __init__(self, cin: int, cout: int, groups: int, rngs: nnx.Rngs, *, dtype=None):
        self.norm1 = group_norm(cin, groups, rngs, dtype=dtype)
        self.conv1 = conv2d(cin, cout, 3, rngs, dtype=dtype)
        self.norm2 = group_norm(cout, groups, rngs, dtype=dtype)
        self.conv2 = conv2d(cout, cout, 3, rngs, dtype=dtype)
        self.conv_shortcut = conv2d(cin, cout, 1, rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the h·w positions of each image, with a residual.

    x: [N, H, W, C] -> [N, H, W, C]; run through ``layers.attention`` as [N, 1, H·W, 1, C].
    """

    def __init__(self, channels: int, groups: int, rngs: nnx.Rngs, *, dtype=None):
        self.group_norm = group_norm(channels, groups, rngs, dtype=dtype)
        self.to_q, self.to_k, self.to_v, self.to_out = (
            linear(channels, channels, ("embed", "heads"), rngs, dtype=dtype) for _ in range(4))

    def __call__(self, x: Array) -> Array:
        N, H, W, C = x.shape
        h = rearrange(self.group_norm(x), "n h w c -> n 1 (h w) 1 c")
        o = attention(self.to_q(h), self.to_k(h), self.to_v(h), axis="spatial")  # [N, 1, HW, 1, C]
        return x + self.to_out(rearrange(o, "n 1 (h w) 1 c -> n h w c", h=H))


class MidBlock2D(nnx.Module):
    """``resnets[0]``, then (``attentions[0]``, ``resnets[1]``); attention is optional."""

    def __init__(self, channels: int, groups: int, rngs: nnx.Rngs, *, add_attention: bool = True, dtype=None):
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, groups, rngs, dtype=dtype) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(channels, groups, rngs, dtype=dtype)] if add_attention else [])

    def __call__(self, x: Array) -> Array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nnx.Module):
    """ResNets then (unless last) a stride-2 3×3 conv padded by one pixel on the right and bottom."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, rngs: nnx.Rngs, *, downsample: bool,
                 dtype=None):
        self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs, dtype=dtype)
                                 for i in range(layers)])
        self.downsample = (conv2d(cout, cout, 3, rngs, stride=2, padding=((0, 1), (0, 1)), dtype=dtype)
                           if downsample else None)

    def __call__(self, x: Array) -> Array:
        for block in self.resnets:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)  # [N, H/2, W/2, C]


class UpDecoderBlock2D(nnx.Module):
    """ResNets then (unless last) nearest 2× upsampling and a 3×3 conv."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, rngs: nnx.Rngs, *, upsample: bool,
                 dtype=None):
        self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs, dtype=dtype)
                                 for i in range(layers)])
        self.upsample = conv2d(cout, cout, 3, rngs, dtype=dtype) if upsample else None

    def __call__(self, x: Array) -> Array:
        for block in self.resnets:
            x = block(x)
        if self.upsample is not None:
            x = self.upsample(repeat(x, "n h w c -> n (h a) (w b) c", a=2, b=2))  # [N, 2H, 2W, C]
        return x


# --------------------------------------------------------------------------------------
# 3. Encoder, decoder, AutoencoderKL
# --------------------------------------------------------------------------------------


class Encoder(nnx.Module):
    """x: [N, H, W, C_in] -> moments [N, H/f, W/f, 2L] (mean and log-variance, before ``quant_conv``)."""

    def __init__(self, cfg: AutoencoderKLConfig, rngs: nnx.Rngs):
        ch, g, dt = cfg.block_out_channels, cfg.norm_num_groups, cfg.compute_dtype
        self.conv_in = conv2d(cfg.in_channels, ch[0], 3, rngs, dtype=dt)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, rngs,
                               downsample=i < len(ch) - 1, dtype=dt) for i in range(len(ch))])
        self.mid_block = MidBlock2D(ch[-1], g, rngs, add_attention=cfg.mid_block_add_attention, dtype=dt)
        self.conv_norm_out = group_norm(ch[-1], g, rngs, dtype=dt)
        self.conv_out = conv2d(ch[-1], 2 * cfg.latent_channels, 3, rngs, dtype=dt)

    def __call__(self, x: Array) -> Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """z: [N, h, w, L] -> x: [N, h·f, w·f, C_out]."""

    def __init__(self, cfg: AutoencoderKLConfig, rngs: nnx.Rngs):
        ch, g, dt = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups, cfg.compute_dtype
        self.conv_in = conv2d(cfg.latent_channels, ch[0], 3, rngs, dtype=dt)
        self.mid_block = MidBlock2D(ch[0], g, rngs, add_attention=cfg.mid_block_add_attention, dtype=dt)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, rngs,
                             upsample=i < len(ch) - 1, dtype=dt) for i in range(len(ch))])
        self.conv_norm_out = group_norm(ch[-1], g, rngs, dtype=dt)
        self.conv_out = conv2d(ch[-1], cfg.out_channels, 3, rngs, dtype=dt)

    def __call__(self, z: Array) -> Array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """diffusers ``AutoencoderKL`` on single images, channels-last; no latent scaling here.

    ``encode_moments(x: [N, H, W, C]) -> (mean, logvar)`` each [N, H/f, W/f, L];
    ``decode(z: [N, h, w, L]) -> [N, h·f, w·f, C]``. Outputs are float32.
    """

    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        L, dt = cfg.latent_channels, cfg.compute_dtype
        self.encoder = Encoder(cfg, rngs)
        self.decoder = Decoder(cfg, rngs)
        self.quant_conv = conv2d(2 * L, 2 * L, 1, rngs, dtype=dt) if cfg.use_quant_conv else None
        self.post_quant_conv = conv2d(L, L, 1, rngs, dtype=dt) if cfg.use_post_quant_conv else None

    def encode_moments(self, x: Array) -> tuple[Array, Array]:
        h = self.encoder(x.astype(self.cfg.compute_dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return split_moments(h)

    def decode(self, z: Array) -> Array:
        z = z.astype(self.cfg.compute_dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)


# --------------------------------------------------------------------------------------
# 4. Diagonal Gaussian posterior (shared by the temporal VAE)
# --------------------------------------------------------------------------------------


def split_moments(moments: Array) -> tuple[Array, Array]:
    """[..., 2L] -> mean, logvar [..., L] in float32, logvar clamped to [-30, 20] as in diffusers / Open-Sora."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)


def gaussian_sample(mean: Array, logvar: Array, rng: Array) -> Array:
    """``mean + std · ε``."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def gaussian_kl(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis -> [B]."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(-1)


# --------------------------------------------------------------------------------------
# 5. diffusers weights (config.json + diffusion_pytorch_model.safetensors)
# --------------------------------------------------------------------------------------

_DIFFUSERS_RENAMES = {  # diffusers module name -> ours (the rest of the path is identical)
    "downsamplers.0.conv": "downsample",
    "upsamplers.0.conv": "upsample",
    "to_out.0": "to_out",
    # attention blocks saved before diffusers 0.14
    "query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out",
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def diffusers_key(name: str) -> Path:
    """A diffusers name -> our path, e.g. ``encoder.down_blocks.0.downsamplers.0.conv.weight`` ->
    ``("encoder", "down_blocks", 0, "downsample", "kernel")``.

    A ``weight`` is our conv / linear ``kernel`` unless it belongs to a norm (``scale``).
    """
    module, leaf = name.rsplit(".", 1)
    dotted = f".{module}."
    for old, new in _DIFFUSERS_RENAMES.items():
        dotted = dotted.replace(f".{old}.", f".{new}.")
    module = dotted[1:-1]
    parent = module.rsplit(".", 1)[-1]
    if leaf == "weight":
        leaf = "scale" if parent.startswith("norm") or parent in ("group_norm", "conv_norm_out") else "kernel"
    return split_key(module) + (leaf,)


def diffusers_name(path: Path) -> str:
    """Inverse of :func:`diffusers_key` (current diffusers names)."""
    module = join_path(path[:-1])
    for old, new in (("downsample", "downsamplers.0.conv"), ("upsample", "upsamplers.0.conv"), ("to_out", "to_out.0")):
        if module.endswith(f".{old}"):
            module = module[: -len(old)] + new
    return f"{module}.{_LEAF[path[-1]]}"


def load_diffusers_vae(path: str, *, dtype: str = "float32", **overrides) -> AutoencoderKL:
    """Build an :class:`AutoencoderKL` from a diffusers folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) without torch. ``overrides`` replace config fields."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = AutoencoderKLConfig.from_diffusers(json.load(f), dtype=dtype, **overrides)
    model = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))  # no random init: every tensor is loaded
    weights = resolve_file(path, ("diffusion_pytorch_model.safetensors", "model.safetensors"))
    load_state_dict(model, read_safetensors(weights), diffusers_key, what=weights)
    return model


def diffusers_state_dict(model: AutoencoderKL) -> dict:
    """Our weights under diffusers names and torch layouts (for ``AutoencoderKL.load_state_dict``)."""
    return export_state_dict(model, diffusers_name)


# --------------------------------------------------------------------------------------
# 6. The video wrapper
# --------------------------------------------------------------------------------------


def map_chunks(fn: Callable[[Array, Array | None], Array], x: Array, size: int | None,
               rng: Array | None = None) -> Array:
    """``fn`` over consecutive ``size``-long slices of x's leading axis, as one ``lax.map`` body.

    Peak activation memory is that of one chunk, whatever ``x.shape[0]``; a ragged tail is zero-padded
    and cropped (use only for functions that treat the leading axis independently).
    ``fn(chunk, key)`` gets its own key per chunk when ``rng`` is given, else None.
    """
    n = x.shape[0]
    if size is None or size >= n:
        return fn(x, rng)
    chunks = -(-n // size)
    x = jnp.pad(x, [(0, chunks * size - n)] + [(0, 0)] * (x.ndim - 1))
    keys = None if rng is None else jax.random.split(rng, chunks)
    out = jax.lax.map(lambda a: fn(*a), (rearrange(x, "(k m) ... -> k m ...", m=size), keys))
    return rearrange(out, "k m ... -> (k m) ...")[:n]


class VideoAutoencoderKL(nnx.Module):
    """Per-frame image VAE for video, with the latent scaling (Open-Sora ``VideoAutoencoderKL``).

    ``encode(x: [B, T, H, W, C] in [-1, 1]) -> z: [B, T, H/f, W/f, L]`` = ``(latent - shift) · scale``
    (the posterior mean, or a sample with ``sample=True, rng=key``). ``decode(z) -> [B, T, H, W, C]``.
    Frames of the whole batch go through the VAE ``micro_batch_size`` at a time (one compiled body).
    """

    def __init__(self, cfg: AutoencoderKLConfig | None, *, micro_batch_size: int | None = 4,
                 rngs: nnx.Rngs | None = None, module: AutoencoderKL | None = None):
        self.module = module if module is not None else AutoencoderKL(cfg, rngs=rngs or nnx.Rngs(0))
        self.cfg = self.module.cfg
        self.micro_batch_size = micro_batch_size
        self.latent_channels = self.cfg.latent_channels
        self.downsample = (1, self.cfg.downsample_factor, self.cfg.downsample_factor)

    @classmethod
    def from_pretrained(cls, path: str, *, micro_batch_size: int | None = 4, dtype: str = "float32",
                        **overrides) -> VideoAutoencoderKL:
        """Load a diffusers-format folder (``config.json`` + safetensors)."""
        return cls(None, micro_batch_size=micro_batch_size, module=load_diffusers_vae(path, dtype=dtype, **overrides))

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        """Each stride-2 conv (padded right/bottom by one) halves a size rounding down, so any size encodes to
        ``H // f`` (Open-Sora v1.2's ``get_latent_size``; 240×426 -> 30×53) and decodes to ``f·(H // f)``."""
        f = self.cfg.downsample_factor
        return T, H // f, W // f

    def encode_moments(self, x: Array) -> tuple[Array, Array]:
        """x: [B, T, H, W, C] -> unscaled (mean, logvar) each [B, T, h, w, L], for KL training."""
        B = x.shape[0]
        frames = rearrange(x, "b t h w c -> (b t) h w c")
        moments = map_chunks(lambda c, _: jnp.concatenate(self.module.encode_moments(c), -1), frames,
                             self.micro_batch_size)
        mean, logvar = jnp.split(rearrange(moments, "(b t) h w c -> b t h w c", b=B), 2, axis=-1)
        return mean, logvar

    def encode(self, x: Array, *, sample: bool = False, rng: Array | None = None) -> Array:
        B = x.shape[0]
        if sample and rng is None:
            raise ValueError("encode(sample=True) needs rng")
        shift = self.cfg.shift_factor or 0.0

        def one(frames: Array, key: Array | None) -> Array:
            mean, logvar = self.module.encode_moments(frames)
            z = gaussian_sample(mean, logvar, key) if sample else mean
            return (z - shift) * self.cfg.scaling_factor

        z = map_chunks(one, rearrange(x, "b t h w c -> (b t) h w c"), self.micro_batch_size, rng if sample else None)
        return rearrange(z, "(b t) h w c -> b t h w c", b=B)

    def decode(self, z: Array, *, num_frames: int | None = None) -> Array:
        """z: [B, T, h, w, L] -> [B, T, h·f, w·f, C] (``num_frames`` is accepted for interface symmetry)."""
        B = z.shape[0]
        shift = self.cfg.shift_factor or 0.0
        latents = rearrange(z, "b t h w c -> (b t) h w c")
        x = map_chunks(lambda c, _: self.module.decode(c / self.cfg.scaling_factor + shift), latents,
                       self.micro_batch_size)
        return rearrange(x, "(b t) h w c -> b t h w c", b=B)


__all__ = ["AutoencoderKLConfig", "SD_VAE", "AutoencoderKL", "VideoAutoencoderKL", "ResnetBlock2D", "AttentionBlock",
           "load_diffusers_vae", "diffusers_key", "diffusers_name", "diffusers_state_dict", "split_moments",
           "gaussian_sample", "gaussian_kl", "map_chunks", "group_norm"]
