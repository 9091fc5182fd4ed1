"""A VideoGPT-style VQ-VAE: 3D-conv encoder/decoder with axial attention, EMA codebook, straight-through.

Shapes: ``x: [B, T, H, W, C]`` in [-1, 1]; latents ``z: [B, T/dt, H/ds, W/ds, D]`` (codebook vectors),
codes ``[B, T/dt, H/ds, W/ds]`` ints. The default ``downsample=(2, 4, 4)`` is what Open-Sora's first
version used (``hpcai-tech/vqvae``). As a compressor for diffusion, ``encode`` returns the quantised
embeddings and ``decode`` maps continuous vectors back to video without re-quantising.

Differences from VideoGPT: GroupNorm instead of BatchNorm (no batch statistics to carry through
the train step) and flax ``SAME`` transposed convs; so it is trained here, not loaded.

Sections: (1) config, (2) convs and the residual stack, (3) codebook, (4) the model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vidjax.models.layers import Buffer, attention, linear
from vidjax.models.vae.kl import group_norm

Array = jax.Array

# --------------------------------------------------------------------------------------
# 1. Config
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    in_channels: int = 3
    n_hiddens: int = 240
    n_res_layers: int = 4
    downsample: tuple[int, int, int] = (2, 4, 4)  # (t, h, w), powers of two
    embedding_dim: int = 256
    n_codes: int = 2048
    num_groups: int = 8  # must divide n_hiddens and n_hiddens // 2
    attn_heads: int = 2
    axial_attention: bool = True
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dtype: str = "float32"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


# --------------------------------------------------------------------------------------
# 2. Convs and the residual stack (x: [B, T, H, W, C])
# --------------------------------------------------------------------------------------


def same_pad_conv3d(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, *, stride=(1, 1, 1), bias: bool = True,
                    dtype=None) -> nnx.Conv:
    """VideoGPT's ``SamePadConv3d``: total padding ``k - s`` per axis, the odd pixel in front."""
    pads = tuple(((kernel - s) // 2 + (kernel - s) % 2, (kernel - s) // 2) for s in stride)
    return nnx.Conv(cin, cout, (kernel,) * 3, strides=tuple(stride), padding=pads, use_bias=bias, dtype=dtype,
                    rngs=rngs)


class AxialAttention(nnx.Module):
    """Multi-head attention along one axis (``"t"``, ``"h"`` or ``"w"``) of x: [B, T, H, W, C]."""

    def __init__(self, dim: int, heads: int, axis: str, rngs: nnx.Rngs, *, dtype=None):
        self.heads, self.axis = heads, axis
        self.w_qs, self.w_ks, self.w_vs = (linear(dim, dim, ("embed", "heads"), rngs, bias=False, dtype=dtype)
                                           for _ in range(3))
        self.fc = linear(dim, dim, ("heads", "embed"), rngs, dtype=dtype)

    def __call__(self, x: Array) -> Array:
        B, T, H, W, _ = x.shape
        to_seq = {  # [B, groups, attended axis, heads, d]
            "t": ("b t h w (n d) -> b t (h w) n d", "b t (h w) n d -> b t h w (n d)", "temporal"),
            "h": ("b t h w (n d) -> b (t w) h n d", "b (t w) h n d -> b t h w (n d)", "spatial"),
            "w": ("b t h w (n d) -> b (t h) w n d", "b (t h) w n d -> b t h w (n d)", "spatial"),
        }[self.axis]
        q, k, v = (rearrange(f(x), to_seq[0], n=self.heads) for f in (self.w_qs, self.w_ks, self.w_vs))
        o = attention(q, k, v, axis=to_seq[2])
        return self.fc(rearrange(o, to_seq[1], t=T, h=H, w=W))


class AttentionResidualBlock(nnx.Module):
    """``x + attn(relu(norm(conv1(relu(norm(conv3(relu(norm(x)))))))))`` with axial attention over t, h, w."""

    def __init__(self, dim: int, cfg: VQVAEConfig, rngs: nnx.Rngs):
        g, dt = cfg.num_groups, cfg.compute_dtype
        self.norm1 = group_norm(dim, g, rngs, eps=1e-5, dtype=dt)
        self.conv1 = same_pad_conv3d(dim, dim // 2, 3, rngs, bias=False, dtype=dt)
        self.norm2 = group_norm(dim // 2, g, rngs, eps=1e-5, dtype=dt)
        self.conv2 = same_pad_conv3d(dim // 2, dim, 1, rngs, bias=False, dtype=dt)
        self.norm3 = group_norm(dim, g, rngs, eps=1e-5, dtype=dt)
        self.attn = (nnx.List([AxialAttention(dim, cfg.attn_heads, a, rngs, dtype=dt) for a in "wht"])
                     if cfg.axial_attention else nnx.List())

    def __call__(self, x: Array) -> Array:
        h = self.conv1(jax.nn.relu(self.norm1(x)))
        h = jax.nn.relu(self.norm3(self.conv2(jax.nn.relu(self.norm2(h)))))
        if len(self.attn):
            h = sum(a(h) for a in self.attn)
        return x + h


class ResStack(nnx.Module):
    """Residual blocks then norm + ReLU."""

    def __init__(self, cfg: VQVAEConfig, rngs: nnx.Rngs):
        self.blocks = nnx.List([AttentionResidualBlock(cfg.n_hiddens, cfg, rngs) for _ in range(cfg.n_res_layers)])
        self.norm = group_norm(cfg.n_hiddens, cfg.num_groups, rngs, eps=1e-5, dtype=cfg.compute_dtype)

    def __call__(self, x: Array) -> Array:
        for block in self.blocks:
            x = block(x)
        return jax.nn.relu(self.norm(x))


def _strides(downsample: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """One stride tuple per halving step: (2, 4, 4) -> [(2, 2, 2), (1, 2, 2)]."""
    steps = [int(math.log2(d)) for d in downsample]
    if any(2**s != d for s, d in zip(steps, downsample)):
        raise ValueError(f"downsample={downsample} must be powers of two")
    return [tuple(2 if s > i else 1 for s in steps) for i in range(max(steps))]


class Encoder(nnx.Module):
    """x: [B, T, H, W, C] -> [B, T/dt, H/ds, W/ds, n_hiddens]."""

    def __init__(self, cfg: VQVAEConfig, rngs: nnx.Rngs):
        dt, n = cfg.compute_dtype, cfg.n_hiddens
        self.convs = nnx.List([same_pad_conv3d(cfg.in_channels if i == 0 else n, n, 4, rngs, stride=s, dtype=dt)
                               for i, s in enumerate(_strides(cfg.downsample))])
        self.conv_last = same_pad_conv3d(n, n, 3, rngs, dtype=dt)
        self.res_stack = ResStack(cfg, rngs)

    def __call__(self, x: Array) -> Array:
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.res_stack(self.conv_last(x))


class Decoder(nnx.Module):
    """h: [B, T', H', W', n_hiddens] -> [B, T'·dt, H'·ds, W'·ds, C] with stride-2 transposed convs."""

    def __init__(self, cfg: VQVAEConfig, rngs: nnx.Rngs):
        strides = _strides(cfg.downsample)
        n = cfg.n_hiddens
        self.res_stack = ResStack(cfg, rngs)
        self.convts = nnx.List([
            nnx.ConvTranspose(n, cfg.in_channels if i == len(strides) - 1 else n, (4, 4, 4), strides=s,
                              padding="SAME", dtype=cfg.compute_dtype, rngs=rngs) for i, s in enumerate(strides)])

    def __call__(self, h: Array) -> Array:
        h = self.res_stack(h)
        for i, convt in enumerate(self.convts):
            h = convt(h)
            if i < len(self.convts) - 1:
                h = jax.nn.relu(h)
        return h


# --------------------------------------------------------------------------------------
# 3. Codebook with EMA updates
# --------------------------------------------------------------------------------------


class Codebook(nnx.Module):
    """Nearest-neighbour quantiser; its vectors are EMA buffers, not gradients.

    ``__call__(z: [..., D], update=True, rng=key)`` also updates the codebook (VideoGPT):
    on the first update the codes are drawn from the batch; then
    ``N <- d·N + (1-d)·counts``, ``z_avg <- d·z_avg + (1-d)·sums``, ``embeddings = z_avg / N``
    (Laplace-smoothed), and codes with ``N < 1`` are restarted at random batch vectors.
    """

    def __init__(self, n_codes: int, dim: int, rngs: nnx.Rngs, *, decay: float = 0.99):
        self.n_codes, self.dim, self.decay = n_codes, dim, decay
        init = jax.random.normal(rngs.params(), (n_codes, dim))
        self.embeddings = Buffer(init)
        self.z_avg = Buffer(init)
        self.N = Buffer(jnp.zeros((n_codes,)))
        self.initialized = Buffer(jnp.zeros((), bool))

    def codes(self, z: Array) -> Array:
        """z: [..., D] -> [...] int32, the nearest codebook entry."""
        e = self.embeddings[...]
        flat = z.reshape(-1, self.dim).astype(jnp.float32)
        d = jnp.sum(flat**2, 1, keepdims=True) - 2 * flat @ e.T + jnp.sum(e**2, 1)[None]
        return jnp.argmin(d, axis=1).reshape(z.shape[:-1]).astype(jnp.int32)

    def lookup(self, codes: Array) -> Array:
        return jnp.take(self.embeddings[...], codes, axis=0)

    def _random_rows(self, flat: Array, rng: Array) -> Array:
        """n_codes rows drawn from flat (tiled with a little noise when there are too few)."""
        M = flat.shape[0]
        if M < self.n_codes:
            k_noise, rng = jax.random.split(rng)
            flat = jnp.tile(flat, (-(-self.n_codes // M), 1))
            flat = flat + jax.random.normal(k_noise, flat.shape) * (0.01 / self.dim**0.5)
        return flat[jax.random.permutation(rng, flat.shape[0])[: self.n_codes]]

    def update(self, z: Array, rng: Array) -> None:
        """One EMA step on the (stop-gradient) encoder outputs z: [..., D]; mutates the buffers."""
        flat = jax.lax.stop_gradient(z).reshape(-1, self.dim).astype(jnp.float32)
        k_init, k_restart = jax.random.split(rng)
        first = ~self.initialized[...]
        init = self._random_rows(flat, k_init)
        e = jnp.where(first, init, self.embeddings[...])
        z_avg = jnp.where(first, init, self.z_avg[...])
        N = jnp.where(first, 1.0, self.N[...])
        self.embeddings.value = e

        onehot = jax.nn.one_hot(self.codes(z), self.n_codes, dtype=jnp.float32).reshape(-1, self.n_codes)
        d = self.decay
        N = d * N + (1 - d) * onehot.sum(0)
        z_avg = d * z_avg + (1 - d) * onehot.T @ flat
        n = N.sum()
        weights = (N + 1e-7) / (n + self.n_codes * 1e-7) * n
        e = z_avg / weights[:, None]
        used = (N >= 1)[:, None]
        e = jnp.where(used, e, self._random_rows(flat, k_restart))

        self.N.value, self.z_avg.value, self.embeddings.value = N, z_avg, e
        self.initialized.value = jnp.ones((), bool)

    def __call__(self, z: Array, *, update: bool = False, rng: Array | None = None) -> dict[str, Array]:
        """z: [..., D] -> dict(embeddings (straight-through), codes, commitment (unweighted MSE), perplexity)."""
        if update:
            if rng is None:
                raise ValueError("a codebook update needs rng (initialisation and dead-code restarts)")
            self.update(z, rng)
        codes = self.codes(z)
        e = self.lookup(codes).astype(z.dtype)
        commitment = jnp.mean(jnp.square(z - jax.lax.stop_gradient(e)))
        probs = jax.nn.one_hot(codes.reshape(-1), self.n_codes).mean(0)
        perplexity = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
        return dict(embeddings=z + jax.lax.stop_gradient(e - z), codes=codes, commitment=commitment,
                    perplexity=perplexity)


# --------------------------------------------------------------------------------------
# 4. The model
# --------------------------------------------------------------------------------------


class VQVAE(nnx.Module):
    """VideoGPT VQ-VAE. ``encode(x) -> z`` quantised vectors [B, T', H', W', D]; ``decode(z) -> x``.

    T is front-padded with zeros to a multiple of ``downsample[0]`` and cropped back in ``decode``
    (``num_frames``), like the causal VAE. ``__call__`` is the training pass.
    """

    def __init__(self, cfg: VQVAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.compute_dtype
        self.encoder = Encoder(cfg, rngs)
        self.pre_vq_conv = same_pad_conv3d(cfg.n_hiddens, cfg.embedding_dim, 1, rngs, dtype=dt)
        self.codebook = Codebook(cfg.n_codes, cfg.embedding_dim, rngs, decay=cfg.ema_decay)
        self.post_vq_conv = same_pad_conv3d(cfg.embedding_dim, cfg.n_hiddens, 1, rngs, dtype=dt)
        self.decoder = Decoder(cfg, rngs)
        self.latent_channels = cfg.embedding_dim
        self.downsample = tuple(cfg.downsample)

    def latent_shape(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        dt, dh, dw = self.cfg.downsample
        if H % dh or W % dw:
            raise ValueError(f"resolution {H}×{W} is not divisible by the VQ-VAE's spatial factor {dh}×{dw}")
        return -(-T // dt), H // dh, W // dw

    def encode_continuous(self, x: Array) -> Array:
        """x: [B, T, H, W, C] -> pre-quantisation vectors [B, T', H', W', D]."""
        self.latent_shape(*x.shape[1:4])
        pad = -x.shape[1] % self.cfg.downsample[0]
        x = jnp.pad(x.astype(self.cfg.compute_dtype), [(0, 0), (pad, 0)] + [(0, 0)] * 3)
        return self.pre_vq_conv(self.encoder(x)).astype(jnp.float32)

    def encode_codes(self, x: Array) -> Array:
        return self.codebook.codes(self.encode_continuous(x))

    def encode(self, x: Array, *, sample: bool = False, rng: Array | None = None) -> Array:
        """Quantised embeddings (deterministic; ``sample`` / ``rng`` are accepted for the common interface)."""
        return self.codebook.lookup(self.encode_codes(x))

    def decode(self, z: Array, *, num_frames: int | None = None) -> Array:
        """z: [B, T', H', W', D] (any vectors) -> [B, num_frames, H, W, C]; default ``T'·dt`` frames."""
        x = self.decoder(self.post_vq_conv(z.astype(self.cfg.compute_dtype))).astype(jnp.float32)
        full = x.shape[1]
        num_frames = full if num_frames is None else num_frames
        if not full - self.cfg.downsample[0] < num_frames <= full:
            raise ValueError(f"{z.shape[1]} latent frames cannot decode to num_frames={num_frames}")
        return x[:, full - num_frames:]

    def __call__(self, x: Array, *, update: bool = False, rng: Array | None = None) -> dict[str, Array]:
        """Training pass -> dict(recon [B, T, H, W, C], commitment (weighted), perplexity, codes).

        The reconstruction gradient reaches the encoder through the straight-through estimator;
        ``update=True`` (with ``rng``) takes an EMA step on the codebook buffers.
        """
        z = self.encode_continuous(x)
        vq = self.codebook(z, update=update, rng=rng)
        recon = self.decode(vq["embeddings"], num_frames=x.shape[1])
        return dict(recon=recon, commitment=self.cfg.commitment_weight * vq["commitment"],
                    perplexity=vq["perplexity"], codes=vq["codes"])


__all__ = ["VQVAEConfig", "VQVAE", "Codebook", "AxialAttention", "same_pad_conv3d"]
