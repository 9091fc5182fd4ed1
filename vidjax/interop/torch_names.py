"""Open-Sora ``state_dict`` <-> vidjax state: the one name and layout map, for v1.0's ``STDiT`` and v1.2's ``STDiT3``.

Both directions (export and import) are generated from the same ``entries(model)`` list, so
a name or a layout rule lives in exactly one place:

=============================================  =====================================================
vidjax variable (path in ``nnx.state``)         Open-Sora / PixArt key, torch layout
=============================================  =====================================================
``x_embedder.proj.kernel`` [(pt ph pw c), C]    ``x_embedder.proj.weight`` [C, c, pt, ph, pw] (Conv3d)
``*.kernel`` [in, out]                          ``*.weight`` [out, in] (Linear)
``t_embedder.mlp.fc1`` / ``.fc2``               ``t_embedder.mlp.0`` / ``.mlp.2`` (same for fps_embedder)
``t_block``                                     ``t_block.1`` (Sequential(SiLU, Linear))
``blocks.<name>`` [depth, ...] (nnx.vmap)       ``blocks.{i}.<name>`` for i < depth
``spatial_blocks`` / ``temporal_blocks`` (v1.2)  ``spatial_blocks.{i}.<name>`` / ``temporal_blocks.{i}.<name>``
bias, ``scale_shift_table``, ``y_embedding``     same name, same layout
(recomputed, never stored)                      ``pos_embed`` [1, S, C], ``pos_embed_temporal`` [1, T, C]
(recomputed, checked; v1.2)                     ``rope.freqs`` [D/2] (rotary_embedding_torch's parameter)
=============================================  =====================================================

Loading rules (Open-Sora ``opensora/utils/ckpt_utils.py``): ``pos_embed*`` are dropped and
recomputed; a PixArt Conv2d patch kernel [C, c, ph, pw] is unsqueezed to [C, c, 1, ph, pw];
keys absent from image checkpoints (``attn_temp``, and the STDiT3 extras ``q_norm``/``k_norm``/
``fps_embedder``) may be accepted with ``allow_missing``, and are then reset to their
initialisation: temporal and fps output projections zero, qk-norm scales one.
Anything else missing, any unexpected key and any shape mismatch raises ``CheckpointMismatchError``.
v1.2's ``STDiT3`` has no optional keys: its loads are strict; ``rope.freqs``, a fixed function of the
head size, is checked against ours and dropped (absent is fine).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import jax
import numpy as np
from einops import rearrange
from flax import nnx

from vidjax.errors import InputError
from vidjax.models.stdit import STDiT
from vidjax.models.stdit3 import STDiT3

RENAMES = (  # (vidjax prefix, Open-Sora prefix), matched on whole path components
    ("t_embedder.mlp.fc1", "t_embedder.mlp.0"),
    ("t_embedder.mlp.fc2", "t_embedder.mlp.2"),
    ("fps_embedder.mlp.fc1", "fps_embedder.mlp.0"),
    ("fps_embedder.mlp.fc2", "fps_embedder.mlp.2"),
    ("t_block", "t_block.1"),
)
POS_BUFFERS = ("pos_embed", "pos_embed_temporal")
STACKED = ("blocks", "spatial_blocks", "temporal_blocks")  # nnx.vmap-stacked block lists
# module order of Open-Sora's STDiT / STDiT3 .state_dict(), for a readable export
MODULE_ORDER = ("pos_embed", "pos_embed_temporal", "rope", "x_embedder", "t_embedder", "fps_embedder", "t_block",
                "y_embedder", "blocks", "spatial_blocks", "temporal_blocks", "final_layer")
# keys an image (PixArt) or v1.0 checkpoint lacks, and the value they take when allowed to be missing
OPTIONAL_KEYS: dict[str, str] = {
    r"blocks\.\d+\.attn_temp\.proj\.(weight|bias)$": "zeros",
    r"blocks\.\d+\.attn_temp\.qkv\.(weight|bias)$": "keep",  # irrelevant while proj is zero
    r"\.(q_norm|k_norm)\.weight$": "ones",
    r"^fps_embedder\.mlp\.0\.(weight|bias)$": "keep",
    r"^fps_embedder\.mlp\.2\.(weight|bias)$": "zeros",
}


class CheckpointMismatchError(InputError):
    """The checkpoint's keys or shapes do not match the model."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Open-Sora tensor: where it lives in vidjax and how its layout differs."""

    name: str  # Open-Sora key
    path: tuple[str, ...]  # vidjax variable path
    block: int | None  # index on the stacked ``layers`` axis, for ``blocks.*``
    kind: str  # "linear" (transpose), "patch" (Conv3d kernel) or "copy"


# --------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------


def _opensora_name(path: tuple[str, ...]) -> str:
    name = ".".join(map(str, path))
    for ours, theirs in RENAMES:
        if name == ours or name.startswith(ours + "."):
            name = theirs + name[len(ours):]
    return re.sub(r"\.kernel$", ".weight", name)


def _variables(model: nnx.Module) -> dict[tuple[str, ...], nnx.Variable]:
    return {tuple(map(str, path)): var for path, var in nnx.iter_graph(model) if isinstance(var, nnx.Variable)}


def entries(model: STDiT | STDiT3) -> list[Entry]:
    """Every stored Open-Sora tensor of ``model`` except the recomputed buffers (``pos_embed*``, ``rope.freqs``)."""
    out = []
    for path in _variables(model):
        name = _opensora_name(path)
        kind = "patch" if path == ("x_embedder", "proj", "kernel") else "linear" if path[-1] == "kernel" else "copy"
        if path[0] in STACKED:
            out += [Entry(f"{path[0]}.{i}.{name[len(path[0]) + 1:]}", path, i, kind) for i in range(model.cfg.depth)]
        else:
            out.append(Entry(name, path, None, kind))
    return sorted(out, key=_order)


def _order(e: Entry) -> tuple:
    return MODULE_ORDER.index(e.name.split(".")[0]), -1 if e.block is None else e.block, e.name


def to_opensora(kind: str, a, patch: tuple[int, int, int]):
    """vidjax layout -> torch layout (numpy, jax or abstract arrays)."""
    if kind == "linear":
        return a.T
    if kind == "patch":
        pt, ph, pw = patch
        return rearrange(a, "(pt ph pw c) o -> o c pt ph pw", pt=pt, ph=ph, pw=pw)
    return a


def from_opensora(kind: str, w: np.ndarray) -> np.ndarray:
    """torch layout -> vidjax layout."""
    if kind == "linear":
        return w.T
    if kind == "patch":
        return rearrange(w, "o c pt ph pw -> (pt ph pw c) o")
    return w


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def patch_of(model: STDiT | STDiT3) -> tuple[int, int, int]:
    return tuple(model.cfg.patch_size if isinstance(model, STDiT3) else model.cfg.patch)


def rope_freqs(model: STDiT3) -> np.ndarray:
    """v1.2's ``rope.freqs`` [D/2]: ``1 / 1e4 ** (arange(0, D, 2) / D)`` in float32, D the head size."""
    d = model.cfg.hidden_size // model.cfg.num_heads
    return (1.0 / (10000 ** (np.arange(0, d, 2)[: d // 2].astype(np.float32) / d))).astype(np.float32)


def pos_buffers(model: STDiT, frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    """``pos_embed`` [1, S, C] and ``pos_embed_temporal`` [1, T', C] for a latent input of T×H×W."""
    pt, ph, pw = model.cfg.patch
    return {"pos_embed": model.pos_embed(height // ph, width // pw)[None],
            "pos_embed_temporal": model.pos_embed_temporal(frames // pt)[None]}


def stdit_to_state_dict(model: STDiT, frames: int, height: int, width: int, dtype=None) -> dict[str, np.ndarray]:
    """Open-Sora v1.0 ``STDiT.state_dict()`` of ``model``, as numpy arrays.

    ``frames, height, width``: the model's latent input size (Open-Sora's ``input_size``, e.g.
    16×32×32 for 16×256² video through the 8× VAE); it only sets the two ``pos_embed`` buffers.
    ``dtype``: cast every tensor (default: keep the variables' dtype, float32).
    """
    _check_grid(model, frames, height, width)
    variables = {path: np.asarray(var.get_value()) for path, var in _variables(model).items()}
    sd = dict(pos_buffers(model, frames, height, width))
    for e in entries(model):
        a = variables[e.path] if e.block is None else variables[e.path][e.block]
        sd[e.name] = to_opensora(e.kind, a, model.cfg.patch)
    return {k: np.ascontiguousarray(v if dtype is None else v.astype(dtype)) for k, v in sd.items()}


def stdit3_to_state_dict(model: STDiT3, dtype=None) -> dict[str, np.ndarray]:
    """Open-Sora v1.2 ``STDiT3.state_dict()`` of ``model`` as numpy arrays (``rope.freqs`` included).

    ``dtype``: cast every tensor (default: keep the variables' dtype, float32).
    """
    variables = {path: np.asarray(var.get_value()) for path, var in _variables(model).items()}
    sd = {"rope.freqs": rope_freqs(model)}
    for e in entries(model):
        a = variables[e.path] if e.block is None else variables[e.path][e.block]
        sd[e.name] = to_opensora(e.kind, a, patch_of(model))
    return {k: np.ascontiguousarray(v if dtype is None else v.astype(dtype)) for k, v in sd.items()}


def stdit3_state_dict_shapes(model: STDiT3) -> dict[str, tuple[int, ...]]:
    """Names and shapes ``stdit3_to_state_dict`` would write; works on an ``nnx.eval_shape`` model."""
    return {"rope.freqs": rope_freqs(model).shape, **_entry_shapes(model)}


def state_dict_shapes(model: STDiT, frames: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes ``stdit_to_state_dict`` would write; works on an ``nnx.eval_shape`` model."""
    _check_grid(model, frames, height, width)
    return {**{k: v.shape for k, v in pos_buffers(model, frames, height, width).items()}, **_entry_shapes(model)}


def _entry_shapes(model: STDiT) -> dict[str, tuple[int, ...]]:
    variables = {path: var.get_value() for path, var in _variables(model).items()}
    out = {}
    for e in entries(model):
        v = variables[e.path]
        a = jax.ShapeDtypeStruct(v.shape if e.block is None else v.shape[1:], v.dtype)
        out[e.name] = tuple(jax.eval_shape(lambda a, e=e: to_opensora(e.kind, a, patch_of(model)), a).shape)
    return out


def _check_grid(model: STDiT, frames: int, height: int, width: int) -> None:
    pt, ph, pw = model.cfg.patch
    if frames % pt or height % ph or width % pw:
        raise ValueError(f"input size {frames}×{height}×{width} is not divisible by the patch {model.cfg.patch}")


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImportReport:
    loaded: list[str]
    dropped: list[str]  # pos_embed*, rope.freqs (recomputed)
    missing: list[str]  # accepted with allow_missing, reset to their initialisation
    conv2d_unsqueezed: bool  # a PixArt Conv2d patch kernel was made a Conv3d one

    def summary(self) -> str:
        s = f"loaded {len(self.loaded)} tensors"
        if self.dropped:
            s += f"; dropped {', '.join(self.dropped)} (recomputed)"
        if self.conv2d_unsqueezed:
            s += "; x_embedder.proj.weight Conv2d -> Conv3d (unsqueeze(2))"
        if self.missing:
            s += f"; {len(self.missing)} absent and initialised: {group_names(self.missing)}"
        return s


def group_names(names: list[str], limit: int = 12) -> str:
    """``blocks.0.x, blocks.1.x`` -> ``blocks.{0..1}.x``: a readable list of many keys."""
    groups: dict[str, list[int]] = {}
    for n in names:
        m = re.match(r"(\w*blocks)\.(\d+)\.(.*)", n)
        key, idx = (f"{m.group(1)}.{{}}.{m.group(3)}", int(m.group(2))) if m else (n, -1)
        groups.setdefault(key, []).append(idx)
    parts = []
    for key, idx in groups.items():
        if "{}" in key:
            idx = sorted(idx)
            span = f"{idx[0]}..{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1 else \
                ",".join(map(str, idx))
            key = key.replace("{}", f"{{{span}}}")
        parts.append(key)
    more = f", … ({len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def mismatch_message(what: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """The v1.0 import report's lines for a failed strict load."""
    lines = [f"checkpoint does not match {what}:"]
    if missing:
        lines.append(f"  {len(missing)} missing keys: {group_names(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys: {group_names(unexpected)}")
    if mismatched:
        lines.append(f"  {len(mismatched)} shape mismatches (is the model size right?):")
        lines += [f"    {m}" for m in mismatched[:20]]
        lines += [f"    … {len(mismatched) - 20} more"] if len(mismatched) > 20 else []
    return "\n".join(lines)


def _is_optional(name: str) -> str | None:
    for pattern, fill in OPTIONAL_KEYS.items():
        if re.search(pattern, name):
            return fill
    return None


def _describe(model: STDiT | STDiT3) -> str:
    c = model.cfg
    if isinstance(model, STDiT3):
        return (f"STDiT3(depth={c.depth}, hidden_size={c.hidden_size}, num_heads={c.num_heads}, "
                f"patch_size={c.patch_size}, in_channels={c.in_channels}, pred_sigma={c.pred_sigma}, "
                f"caption_channels={c.caption_channels}, model_max_length={c.model_max_length}, "
                f"qk_norm={c.qk_norm}, mlp_ratio={c.mlp_ratio})")
    return (f"STDiT(depth={c.depth}, hidden={c.hidden}, heads={c.heads}, patch={c.patch}, in_channels={c.in_channels},"
            f" learn_sigma={c.learn_sigma}, caption_channels={c.caption_channels},"
            f" model_max_length={c.model_max_length}, qk_norm={c.qk_norm}, fps_conditioning={c.fps_conditioning})")


def check_state_dict(model: STDiT, state_dict: Mapping[str, np.ndarray], *,
                     allow_missing: bool = False) -> tuple[dict[str, np.ndarray], ImportReport]:
    """Apply the loading rules and check names and shapes; works on an ``nnx.eval_shape`` model.

    Returns the normalised state_dict and the report. Raises ``CheckpointMismatchError`` listing
    every missing key, unexpected key and shape mismatch.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    rope_mismatch = []
    if isinstance(model, STDiT3):  # v1.2: strict, no PixArt rules; rope.freqs is checked, then recomputed
        dropped, allow_missing = [], False
        if "rope.freqs" in sd:
            ours, theirs = rope_freqs(model), sd.pop("rope.freqs")
            if theirs.shape != ours.shape:
                rope_mismatch.append(f"rope.freqs: checkpoint {tuple(theirs.shape)} vs model {ours.shape}")
            elif not np.allclose(theirs.astype(np.float32), ours, rtol=1e-2):
                rope_mismatch.append("rope.freqs: values differ from the rotary frequencies 1e4 ** (-2i / head size)")
            dropped.append("rope.freqs")
    else:
        dropped = [k for k in POS_BUFFERS if sd.pop(k, None) is not None]
    w = sd.get("x_embedder.proj.weight")
    conv2d = isinstance(model, STDiT) and w is not None and w.ndim == 4
    if conv2d:
        sd["x_embedder.proj.weight"] = w[:, :, None]  # PixArt Conv2d [C, c, ph, pw] -> Conv3d [C, c, 1, ph, pw]

    shapes = _entry_shapes(model)
    missing = [n for n in shapes if n not in sd]
    unexpected = sorted(n for n in sd if n not in shapes)
    mismatched = rope_mismatch + [f"{n}: checkpoint {tuple(sd[n].shape)} vs model {shapes[n]}"
                                  for n in shapes if n in sd and tuple(sd[n].shape) != shapes[n]]
    not_allowed = [n for n in missing if not (allow_missing and _is_optional(n))]
    if unexpected or mismatched or not_allowed:
        lines = mismatch_message(_describe(model), not_allowed, unexpected, mismatched).split("\n")
        optional = [n for n in not_allowed if _is_optional(n)]
        if optional and not allow_missing:
            lines.append(f"  {len(optional)} of the missing keys are expected for an image (PixArt-α) or v1.0 "
                         "checkpoint: pass --allow-missing (allow_missing=True) to initialise them "
                         "(temporal attention output zero, so the model starts as the image model per frame).")
        raise CheckpointMismatchError("\n".join(lines))
    report = ImportReport(loaded=[n for n in shapes if n in sd], dropped=dropped, missing=missing,
                          conv2d_unsqueezed=conv2d)
    return sd, report


def _host_array(value) -> np.ndarray:
    """A writable numpy copy; zeros for an abstract (``nnx.eval_shape``) variable, which the checkpoint fills."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return np.zeros(value.shape, value.dtype)
    return np.array(value)


def load_state_dict_into_stdit(model: STDiT | STDiT3, state_dict: Mapping[str, np.ndarray], *,
                               allow_missing: bool = False) -> ImportReport:
    """Load an Open-Sora v1.0 / PixArt-α state_dict into an ``STDiT``, or a v1.2 one into an ``STDiT3``, in place.

    Raises ``CheckpointMismatchError`` listing every missing key, unexpected key and shape
    mismatch. With ``allow_missing``, keys in ``OPTIONAL_KEYS`` (temporal attention for an
    image checkpoint, STDiT3 extras) may be absent; they are reset to their initialisation.
    """
    sd, report = check_state_dict(model, state_dict, allow_missing=allow_missing)
    variables = _variables(model)
    new = {path: _host_array(var.get_value()) for path, var in variables.items()}
    for e in entries(model):
        if e.name in sd:
            value = from_opensora(e.kind, sd[e.name])
        else:
            fill = _is_optional(e.name)
            if fill == "keep":
                continue
            cur = new[e.path] if e.block is None else new[e.path][e.block]
            value = np.zeros_like(cur) if fill == "zeros" else np.ones_like(cur)
        if e.block is None:
            new[e.path] = value.astype(new[e.path].dtype)
        else:
            new[e.path][e.block] = value.astype(new[e.path].dtype)
    for path, var in variables.items():
        var.set_value(jax.numpy.asarray(new[path]))
    return report
