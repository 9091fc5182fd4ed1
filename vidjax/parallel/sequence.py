"""Sequence parallelism for video transformers: DSP, Ulysses, all-gather and ring attention.

Every function here is the identity (or plain attention) when no mesh is active or when the
logical axis it splits has one shard, so model code calls them unconditionally. The mesh axis
is found through the logical table (``frames`` / ``tokens`` -> ``sequence``); model code never
names a mesh axis.

**DSP** (Dynamic Sequence Parallelism, VideoSys, arXiv 2403.10266), for STDiT's ``[B, T, S, C]``:
spatial attention, MLP and cross-attention run with T split (whole frames per chip); temporal
attention runs with S split (every frame of a position per chip). ``split_tokens`` switches
T-split -> S-split and ``split_frames`` switches back, each with **one** ``all_to_all`` of the
activation; per block that is 2 all-to-alls forward and 2 backward, each moving
``(n-1)/n`` of the local activation.

  Divisibility rule: the latent frame count T must be a multiple of the ``sequence`` size
  (a ``ValueError`` names both numbers); the position count S is zero-padded up to a multiple
  for the temporal phase and the padding dropped afterwards (positions are independent in
  temporal attention, so padding changes nothing but cost).

**Ulysses** (DeepSpeed-Ulysses, arXiv 2309.14509), for full-attention DiTs and as the
structure-unaware baseline for STDiT: q, k, v split on a token axis are exchanged for a split
on heads (one ``all_to_all`` of the stacked ``[q|k|v]``), attention runs on whole sequences,
and one ``all_to_all`` brings the output back. Needs heads divisible by the ``sequence`` size.

**All-gather** (the FastSeq half of the hybrid sequence parallelism in Open-Sora's first release): queries stay
split on the token axis, keys and values are all-gathered over the sequence group, and each chip attends its own
queries to the whole sequence; the output stays split. Two all-gathers per attention forward, two reduce-scatters
(of dK, dV) backward, no all-to-all and no head constraint. For STDiT with whole frames per chip only temporal
attention needs it.

**Ring** attention, for spatial attention when one frame is too long for a chip: S stays split,
K/V blocks travel around the ring (``ppermute``) and an online softmax merges them. ``n - 1``
K/V transfers per call, no all-to-all, no head constraint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from vidjax.errors import ConfigError
from vidjax.parallel.rules import active_mesh, axis_size, mesh_spec

Array = jax.Array
SCHEMES = ("dsp", "ulysses", "allgather", "ring")


def _seq_axis(logical: str):
    """(mesh, mesh-axis name, shards) of a logical sequence axis under the active mesh; (None, None, 1) off-mesh."""
    mesh = active_mesh()
    if mesh is None:
        return None, None, 1
    entry = mesh_spec((logical,), mesh)[0]
    if entry is None:
        return mesh, None, 1
    if not isinstance(entry, str):
        raise ValueError(f"logical axis {logical!r} maps to several mesh axes {entry}; sequence parallelism "
                         "needs exactly one")
    return mesh, entry, dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))[entry]


def sequence_shards() -> int:
    """Shards of the sequence-parallel axis under the active mesh (1 without a mesh)."""
    return _seq_axis("frames")[2]


def check_divisible(what: str, count: int, shards: int | None = None, hint: str = "") -> None:
    """One-line ``ValueError`` when ``count`` does not split into ``shards`` (default: the sequence size)."""
    shards = sequence_shards() if shards is None else shards
    if shards > 1 and count % shards:
        raise ValueError(f"sequence parallelism: {count} {what} are not divisible by mesh sequence={shards}"
                         + (f"; {hint}" if hint else ""))


# --------------------------------------------------------------------------------------
# DSP: switch the split dimension with one all-to-all
# --------------------------------------------------------------------------------------

def _dsp_specs(mesh, axis: str):
    batch = mesh_spec(("batch",), mesh)[0]
    return P(batch, axis, None, None), P(batch, None, axis, None)


def split_tokens(x: Array) -> Array:
    """[B, T, S, C] with T split -> [B, T, S', C] with S split (S' = S padded to a multiple of the shards)."""
    mesh, axis, n = _seq_axis("frames")
    if n == 1:
        return x
    if _seq_axis("tokens")[1] != axis:
        raise ValueError("DSP needs the logical axes 'frames' and 'tokens' on the same mesh axis")
    T, S = x.shape[1], x.shape[2]
    check_divisible("latent frames", T, n, "use a clip whose latent frame count is a multiple of it")
    if S % n:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, n - S % n), (0, 0)))
    frames, tokens = _dsp_specs(mesh, axis)
    fn = jax.shard_map(lambda xl: lax.all_to_all(xl, axis, split_axis=2, concat_axis=1, tiled=True),
                       mesh=mesh, in_specs=frames, out_specs=tokens)
    return fn(x)


def split_frames(x: Array, num_tokens: int) -> Array:
    """Inverse of ``split_tokens``: [B, T, S', C] with S split -> [B, T, num_tokens, C] with T split."""
    mesh, axis, n = _seq_axis("frames")
    if n == 1:
        return x
    frames, tokens = _dsp_specs(mesh, axis)
    fn = jax.shard_map(lambda xl: lax.all_to_all(xl, axis, split_axis=1, concat_axis=2, tiled=True),
                       mesh=mesh, in_specs=tokens, out_specs=frames)
    x = fn(x)
    return x[:, :, :num_tokens] if x.shape[2] != num_tokens else x


# --------------------------------------------------------------------------------------
# Attention over a split token axis: Ulysses and ring
# --------------------------------------------------------------------------------------

Attend = Callable[..., Array]  # attend(q, k, v, mask) -> o, all [B, T, S, H, D]


def _layout(layout: Sequence[str | None]):
    """(mesh, mesh axis, shards, index of the split token axis, q/k/v spec, batch spec entry)."""
    if len(layout) != 5:
        raise ValueError(f"layout {tuple(layout)}: expected 5 logical names for [B, T, S, H, D]")
    split = [i for i, name in enumerate(layout) if name in ("frames", "tokens")]
    if len(split) != 1:
        raise ValueError(f"layout {tuple(layout)}: name exactly one of 'frames' / 'tokens'")
    mesh, axis, n = _seq_axis(layout[split[0]])
    if n == 1:
        return mesh, None, 1, split[0], None, None
    return mesh, axis, n, split[0], mesh_spec(layout, mesh), mesh_spec(("batch",), mesh)[0]


def ulysses(attend: Attend, q: Array, k: Array, v: Array, mask: Array | None = None, *,
            layout: Sequence[str | None]) -> Array:
    """Attention with q, k, v [B, T, S, H, D] split on the token axis named in ``layout``.

    One all-to-all turns the stacked [q|k|v] from token-split into head-split, ``attend`` runs on
    whole sequences, one all-to-all returns the output to token-split. ``mask`` [B, S_k] is taken
    whole (it is a small boolean, not an activation).
    """
    mesh, axis, n, seq, spec, batch = _layout(layout)
    if n == 1:
        return attend(q, k, v, mask)
    heads = q.shape[3] // _shards(mesh, spec[3])
    if heads % n:
        raise ValueError(f"Ulysses: {q.shape[3]} heads ({heads} per tensor shard) are not divisible by mesh "
                         f"sequence={n}; use sequence_parallel='ring' or a head count that is a multiple of {n}")
    check_divisible("tokens" if layout[seq] == "tokens" else "latent frames", q.shape[seq], n)

    def local(q, k, v, mask):
        qkv = lax.all_to_all(jnp.stack([q, k, v]), axis, split_axis=4, concat_axis=seq + 1, tiled=True)
        o = attend(qkv[0], qkv[1], qkv[2], mask)
        return lax.all_to_all(o, axis, split_axis=seq, concat_axis=3, tiled=True)

    return _per_shard(local, mesh, spec, P(batch, None), q, k, v, mask)


def allgather_attention(attend: Attend, q: Array, k: Array, v: Array, mask: Array | None = None, *,
                        layout: Sequence[str | None]) -> Array:
    """Attention with q, k, v [B, T, S, H, D] split on the token axis named in ``layout``: K and V all-gathered
    over the sequence group, local queries against the whole sequence; ``mask`` [B, S_k] taken whole."""
    mesh, axis, n, seq, spec, batch = _layout(layout)
    if n == 1:
        return attend(q, k, v, mask)
    check_divisible("tokens" if layout[seq] == "tokens" else "latent frames", q.shape[seq], n)

    def local(q, k, v, mask):
        k, v = (lax.all_gather(a, axis, axis=seq, tiled=True) for a in (k, v))
        return attend(q, k, v, mask)

    return _per_shard(local, mesh, spec, P(batch, None), q, k, v, mask)


def _per_shard(local: Callable, mesh, spec: P, mask_spec: P, q: Array, k: Array, v: Array, mask: Array | None,
               check_vma: bool = False) -> Array:
    """``local(q, k, v, mask)`` under ``shard_map``: q, k, v and the output in ``spec``, the optional key mask
    [B, S_k] in ``mask_spec``. ``check_vma=False`` by default: the local attention may be a pallas_call, whose
    outputs carry no varying-axes type."""
    args, specs = (q, k, v), (spec, spec, spec)
    if mask is not None:
        args, specs = (*args, mask), (*specs, mask_spec)

    def run(q, k, v, *mask):
        return local(q, k, v, mask[0] if mask else None)

    return jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=check_vma)(*args)


def _shards(mesh, entry) -> int:
    if entry is None:
        return 1
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    n = 1
    for a in (entry,) if isinstance(entry, str) else entry:
        n *= sizes[a]
    return n


def ring_attention(q: Array, k: Array, v: Array, mask: Array | None = None, *, layout: Sequence[str | None],
                   scale: float | None = None) -> Array:
    """Spatial attention (over S) with q, k, v [B, T, S, H, D] split on S; exact softmax, fp32 statistics.

    Each chip keeps its queries; K/V blocks (and the key mask [B, S]) go round the ring in ``n - 1``
    ``ppermute`` steps, merged with an online softmax. Off-mesh this is ``xla_attention``'s math.
    """
    mesh, axis, n, seq, spec, batch = _layout(layout)
    if seq != 2:
        raise ValueError(f"ring attention splits the attended axis S (index 2); layout {tuple(layout)} splits {seq}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if n == 1:
        return _ring_local(q, k, v, mask, scale, None, 1)
    check_divisible("tokens per frame", q.shape[2], n, "use sequence_parallel='dsp' or pad the frame")

    def local(q, k, v, mask):
        return _ring_local(q, k, v, mask, scale, axis, n)

    return _per_shard(local, mesh, spec, P(batch, axis), q, k, v, mask, check_vma=True)


def _ring_local(q, k, v, mask, scale, axis, n):
    neg = jnp.finfo(jnp.float32).min
    qs = q * scale

    def block(carry, k, v, mask):
        m, l, o = carry
        s = jnp.einsum("btqhd,btkhd->bthqk", qs, k, preferred_element_type=jnp.float32)
        if mask is not None:
            s = jnp.where(mask[:, None, None, None, :], s, neg)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1)
        pv = jnp.einsum("bthqk,btkhd->btqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        o = o * jnp.moveaxis(corr, 3, 2)[..., None] + pv
        return m_new, l, o

    B, T, S, H, D = q.shape
    init = (jnp.full((B, T, H, S), neg, jnp.float32), jnp.zeros((B, T, H, S), jnp.float32),
            jnp.zeros((B, T, S, H, D), jnp.float32))
    carry = block(init, k, v, mask)
    if n > 1:
        perm = [(j, (j + 1) % n) for j in range(n)]

        def step(state, _):
            carry, k, v, mask = state
            k, v = lax.ppermute(k, axis, perm), lax.ppermute(v, axis, perm)
            mask = None if mask is None else lax.ppermute(mask, axis, perm)
            return (block(carry, k, v, mask), k, v, mask), None

        (carry, *_), _ = lax.scan(step, (carry, k, v, mask), None, length=n - 1)
    _, l, o = carry
    return (o / jnp.moveaxis(l, 3, 2)[..., None]).astype(q.dtype)


def parallel_attention(scheme: str | None, attend: Attend, q: Array, k: Array, v: Array, mask: Array | None,
                       layout: Sequence[str | None], scale: float | None = None) -> Array:
    """Dispatch: ``None`` (plain ``attend``), ``"ulysses"``, ``"allgather"`` or ``"ring"`` over the split axis in
    ``layout``."""
    if scheme is None:
        return attend(q, k, v, mask)
    if scheme == "ulysses":
        return ulysses(attend, q, k, v, mask, layout=layout)
    if scheme == "allgather":
        return allgather_attention(attend, q, k, v, mask, layout=layout)
    if scheme == "ring":
        return ring_attention(q, k, v, mask, layout=layout, scale=scale)
    raise ValueError(f"sequence-parallel attention {scheme!r}; expected None, 'ulysses', 'allgather' or 'ring'")


__all__ = ["SCHEMES", "allgather_attention", "check_divisible", "parallel_attention", "ring_attention",
           "sequence_shards", "split_frames", "split_tokens", "ulysses"]


# --------------------------------------------------------------------------------------
# Config checks: can the mesh's sequence axis split this clip? (training, sampling, shardcheck)
# --------------------------------------------------------------------------------------


def check_parallel(config, mesh, vae, size: tuple[int, int, int] | None = None) -> None:
    """One-line errors for a clip (``size`` = frames, height, width; default the data size) that the mesh's
    sequence axis cannot split (before anything is compiled)."""
    seq = axis_size("frames", mesh)  # the sequence-parallel degree
    if seq == 1:
        return
    d, m = config.data, config.model
    bucket = None if size is None else "x".join(map(str, size))
    size = size or (d.frames, d.height, d.width)
    lt, lh, lw = vae.latent_shape(*size)
    frames, tokens = lt // m.patch[0], (lh // m.patch[1]) * (lw // m.patch[2])
    scheme = m.get("sequence_parallel", "auto")
    if m.get("name", "stdit") == "dit":
        total = frames * tokens + (config.text.max_length if m.get("conditioning") == "token-concat" else 0)
        if total % seq:
            raise ConfigError(f"config.data.frames/height/width give {total} tokens (with the caption if "
                              f"token-concat), not divisible by mesh sequence={seq}")
    elif scheme == "ring":
        if tokens % seq:
            raise ConfigError(f"config.data.height/width give {tokens} tokens per frame, not divisible by mesh "
                              f"sequence={seq} (sequence_parallel='ring')")
    elif frames % seq:
        where = f"config.data.frames={size[0]} gives" if bucket is None else f"bucket {bucket}: {size[0]} frames give"
        raise ConfigError(f"{where} {frames} latent frames (VAE stride {vae.downsample[0]}, patch {m.patch[0]}), "
                          f"not divisible by mesh sequence={seq}")
