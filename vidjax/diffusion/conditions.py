"""Condition frames at sampling time, in Open-Sora v1.2's syntax: image-to-video, video extension, editing.

A **mask strategy** is a string of ``;``-separated groups ``loop,ref,ref_start,target_start,length,edit_ratio``
(v1.2's ``parse_mask_strategy``; missing trailing fields default to ``0,0,0,0,1,0``):

* ``ref``: which reference of the sample (its ``--reference`` paths, ``;``-separated) supplies the frames;
* ``ref_start`` / ``target_start``: the first latent frame taken from the reference / written into the sample
  (negative: from the end);
* ``length``: latent frames copied (clipped to what both have);
* ``edit_ratio``: the mask value of those frames: 0 keeps them as given, 0 < r < 1 regenerates them from noise
  level r (an edit), 1 ignores them.

``"0"`` is image-to-video (the reference's first latent frame at the start); ``"0,0,-1,0,1"`` continues from a
clip's last latent frame; ``"0,0,0,-1,1"`` puts an image at the end. All positions are latent frames, as in v1.2
(its 51-frame clips have 15). ``align`` rounds both starts to a multiple, as v1.2's ``align`` option.
The sampler (``RectifiedFlow.sample(..., mask=)``) holds or regenerates the frames by the resulting mask.

**Loops** (v1.2's ``loop``): a long video as several clips, each after the first conditioned on the last latent
frames of the one before (``loop_i,k,-L,0,L,edit`` appended to the strategy). A prompt can change between loops:
``"|0|a red circle|2|a blue circle"`` is the first text for loops 0-1 and the second from loop 2 on.
"""

from __future__ import annotations

import numpy as np

from vidjax.errors import InputError

MASK_DEFAULT = (0, 0, 0, 0, 1, 0.0)


def parse_mask_strategy(text: str | None) -> list[tuple[int, int, int, int, int, float]]:
    """``"0,0,0,0,1,0.2;0,1,-1,-1,1"`` -> [(loop, ref, ref_start, target_start, length, edit_ratio), ...]."""
    if not text:
        return []
    groups = []
    for group in text.split(";"):
        fields = [f.strip() for f in group.split(",")]
        if not 1 <= len(fields) <= 6 or "" in fields:
            raise InputError(f"mask strategy {text!r}: {group!r} must have 1 to 6 comma-separated numbers "
                             "(loop,ref,ref_start,target_start,length,edit_ratio)")
        try:
            ints = [int(f) for f in fields[:5]]
            ratio = float(fields[5]) if len(fields) == 6 else MASK_DEFAULT[5]
        except ValueError:
            raise InputError(f"mask strategy {text!r}: {group!r} must be integers then an edit ratio, e.g. "
                             "0,0,0,0,1,0.0") from None
        loop, ref, ref_start, target_start, length = ints + list(MASK_DEFAULT[len(ints):5])
        if length < 1 or ref < 0 or loop < 0 or not 0.0 <= ratio <= 1.0:
            raise InputError(f"mask strategy {text!r}: {group!r} needs loop >= 0, ref >= 0, length >= 1 and an "
                             "edit ratio in [0, 1]")
        groups.append((loop, ref, ref_start, target_start, length, ratio))
    return groups


def _nearest(value: int, point: int, max_value: int) -> int:
    """v1.2's ``find_nearest_point``: ``value`` rounded to a multiple of ``point`` below ``max_value``."""
    t = value // point
    if value % point > point / 2 and t < max_value // point - 1:
        t += 1
    return t * point


def apply_mask_strategy(z: np.ndarray, refs: list[np.ndarray], strategy: str | None, loop: int = 0,
                        align: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One sample: ``z`` [T, h, w, C] (its noise) and ``refs`` (latents [T_r, h, w, C] of its references) ->
    (``z`` with the reference frames written in, mask [T] float32: 1 generate, else the group's edit ratio)."""
    z = np.array(z, copy=True)
    mask = np.ones(z.shape[0], np.float32)
    for g_loop, ref_id, ref_start, target_start, length, ratio in parse_mask_strategy(strategy):
        if g_loop != loop:
            continue
        if ref_id >= len(refs):
            raise InputError(f"mask strategy {strategy!r}: reference {ref_id} asked for, but the sample has "
                             f"{len(refs)} reference(s)")
        ref = refs[ref_id]
        if ref.shape[1:] != z.shape[1:]:
            raise InputError(f"mask strategy {strategy!r}: reference {ref_id} has latent frames of "
                             f"{'×'.join(map(str, ref.shape[1:]))}, the sample {'×'.join(map(str, z.shape[1:]))}")
        ref_start = ref_start + ref.shape[0] if ref_start < 0 else ref_start
        target_start = target_start + z.shape[0] if target_start < 0 else target_start
        if align:
            ref_start = _nearest(ref_start, align, ref.shape[0])
            target_start = _nearest(target_start, align, z.shape[0])
        if not (0 <= ref_start < ref.shape[0] and 0 <= target_start < z.shape[0]):
            raise InputError(f"mask strategy {strategy!r}: start {ref_start} / {target_start} is outside the "
                             f"reference's {ref.shape[0]} / the sample's {z.shape[0]} latent frames")
        n = min(length, z.shape[0] - target_start, ref.shape[0] - ref_start)
        z[target_start:target_start + n] = ref[ref_start:ref_start + n]
        mask[target_start:target_start + n] = ratio
    return z, mask


def loop_prompt(prompt: str, loop: int) -> str:
    """The text of ``loop`` in v1.2's ``"|0|text|k|text…"`` syntax (``extract_prompts_loop``); other prompts as
    they are."""
    if not prompt.startswith("|0|"):
        return prompt
    parts = prompt.split("|")[1:]
    if len(parts) % 2:
        raise InputError(f"prompt {prompt!r}: loop prompts alternate |loop|text|loop|text…")
    try:
        starts = [int(n) for n in parts[0::2]]
    except ValueError:
        raise InputError(f"prompt {prompt!r}: the numbers between '|' must be loop indices, e.g. |0|a cat|2|a dog"
                         ) from None
    if starts != sorted(set(starts)):
        raise InputError(f"prompt {prompt!r}: loop indices must increase, got {starts}")
    texts = [t.strip() for t in parts[1::2]]
    return texts[max(i for i, start in enumerate(starts) if start <= loop)]


def append_scores(prompts: list[str], aes: float | None = None, flow: float | None = None,
                  camera_motion: str | None = None) -> list[str]:
    """v1.2's score suffixes: ``"… aesthetic score: 6.5."``, ``"motion score: 10.0."``, ``"camera motion: pan
    left."``, each added unless the prompt already carries it."""
    out = []
    for p in prompts:
        if aes is not None and "aesthetic score:" not in p:
            p = f"{p} aesthetic score: {aes:.1f}."
        if flow is not None and "motion score:" not in p:
            p = f"{p} motion score: {flow:.1f}."
        if camera_motion is not None and "camera motion:" not in p:
            p = f"{p} camera motion: {camera_motion}."
        out.append(p)
    return out
