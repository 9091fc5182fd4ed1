"""Training input pipeline: caption file + videos -> shuffled, batched clips through grain.

    records --probe--> good records (corrupt / short clips skipped and listed)
            --VideoSource--> {"video": uint8 [T, H, W, 3], "caption": str}
            --grain: seed, shuffle, repeat, random_map(to_model), batch--> numpy batches

A batch is ``{"video": float32 [B, T, H, W, 3] in [-1, 1], "ids": int32 [B, L], "mask": bool [B, L]}``
(with a frozen T5 / CLIP encoder ``"y": float32 [B, L, C]`` from the embedding cache instead of ``"ids"``).
With latent precompute (:func:`encode_clips`, ``config.data.cache_latents``) the frozen VAE encodes
every clip once, the source holds latents, and batches carry ``"latent": float32 [B, T', H', W', C]``
instead of ``"video"``: the training step then skips the encoder.
The iterator state is a small dict that orbax saves next to the model, so a resumed run
continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import numpy as np
from tqdm import tqdm

from vidjax.data.captions import Record
from vidjax.data.video_io import VideoReadError, read_video, resize_clip

log = logging.getLogger(__name__)


def prepare_records(config, progress: bool = True) -> list[Record]:
    """The caption records of ``config.data``: its caption file, or the built-in ``shapes`` set (generated into
    ``data.root`` when absent)."""
    from vidjax.data import shapes
    from vidjax.data.captions import load_captions

    d = config.data
    if d.captions:
        return load_captions(d.captions, d.get("video_root") or None)
    if d.get("mix"):  # several sizes, lengths and still images: [(count, frames, height, width), ...]
        return load_captions(shapes.generate_mix(d.root, [tuple(g) for g in d.mix], seed=d.seed, progress=progress))
    cap = shapes.generate(d.root, num_clips=d.num_clips, frames=d.frames, height=d.height, width=d.width,
                          seed=d.seed, progress=progress)
    return load_captions(cap)


def probe_records(records: list[Record], frames: int, frame_interval: int = 1, report: str | Path | None = None,
                  keep_decoded: bool = False, progress: bool = True, max_cache_bytes: int = 2 << 30,
                  sizes: list | None = None):
    """Decode every clip once; drop unreadable or too-short ones and list them.

    With ``keep_decoded`` the decoded clips are kept for the loader, unless they outgrow
    ``max_cache_bytes`` (real datasets): then the loader decodes from disk instead.
    Returns (good records, decoded clips or None, skipped [(path, reason)]). The list of
    skipped clips is written to ``report`` (one ``path<TAB>reason`` per line) and logged.
    """
    need = (frames - 1) * frame_interval + 1
    good, clips, skipped, cached = [], [], [], 0
    for r in tqdm(records, desc="checking clips", disable=not progress, unit="clip", leave=False):
        try:
            clip = read_video(r.path)
            if len(clip) < need:
                raise VideoReadError(f"{r.path}: {len(clip)} frames, need {need}")
        except VideoReadError as e:
            skipped.append((str(r.path), str(e)))
            continue
        good.append(r)
        if sizes is not None:
            sizes.append(tuple(int(v) for v in clip.shape[:3]))
        if keep_decoded:
            clips.append(clip)
            cached += clip.nbytes
            if cached > max_cache_bytes:
                log.info("decoded clips exceed %d bytes: the loader will decode from disk", max_cache_bytes)
                keep_decoded, clips = False, []
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text("".join(f"{p}\t{why}\n" for p, why in skipped))
    if skipped:
        log.warning("skipped %d unreadable or short clips (listed in %s): %s", len(skipped), report,
                    ", ".join(Path(p).name for p, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    if not good:
        raise VideoReadError("no readable clips: every clip in the caption file failed to decode")
    return good, (clips if keep_decoded else None), skipped


class VideoSource:
    """Random-access source: index -> {"video": uint8 [T_file, H_file, W_file, 3], "captions": tuple},
    or {"latent": float32 [T', H', W', C], "captions": tuple} when built from precomputed latents."""

    def __init__(self, records: list[Record], clips: list[np.ndarray] | None = None, latents: bool = False):
        if latents and clips is None:
            raise ValueError("VideoSource(latents=True) needs the precomputed latents as `clips`")
        self.records, self.clips, self.key = records, clips, "latent" if latents else "video"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        clip = self.clips[i] if self.clips is not None else read_video(r.path)
        return {self.key: clip, "captions": r.captions}


def window(clip: np.ndarray, start: int, frames: int, height: int, width: int, frame_interval: int = 1) -> np.ndarray:
    """``frames`` frames of ``clip`` from ``start``, every ``frame_interval``-th, resized: uint8 [T, H, W, 3]."""
    return resize_clip(clip[start : start + (frames - 1) * frame_interval + 1 : frame_interval], height, width)


def in_batches(fn: Callable, x: np.ndarray, batch_size: int, desc: str | None = None):
    """``fn`` over ``x [N, ...]`` in batches of exactly ``batch_size`` (the last one padded with copies of its
    last row, so one compiled shape serves them all): its host-side outputs (any pytree), concatenated over N."""
    outs = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=desc is None, unit="batch", leave=False):
        b = x[i : i + batch_size]
        n = len(b)
        if n < batch_size:
            b = np.concatenate([b, np.repeat(b[-1:], batch_size - n, 0)])
        outs.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], jax.device_get(fn(b))))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def random_crop(clip: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray | None:
    """A random ``height × width`` crop of ``clip [T, H, W, 3]`` at its own scale; None if a side is too small."""
    H, W = clip.shape[1:3]
    if H < height or W < width:
        return None
    y, x = int(rng.integers(0, H - height + 1)), int(rng.integers(0, W - width + 1))
    return clip[:, y : y + height, x : x + width]


def make_transform(frames: int, height: int, width: int, text_fn: Callable, frame_interval: int = 1,
                   crop_prob: float = 0.0):
    """(record, rng) -> model example: a random window of frames, resized, and a random caption through
    ``text_fn(texts) -> {name: array [B, ...]}`` (token ids, or a frozen encoder's cached embeddings).

    With ``crop_prob > 0`` that fraction of windows is a random ``height × width`` crop at the clip's own scale
    instead of the whole frame resized (a VAE trained on small windows then also sees the object sizes of larger
    buckets); the draws are made only then, so ``crop_prob = 0`` keeps the random stream unchanged.
    """

    span = (frames - 1) * frame_interval + 1

    def to_model(ex: dict, rng: np.random.Generator) -> dict:
        if "latent" in ex:  # precomputed: the one window encode_clips took (same random stream as a clip)
            rng.integers(0, 1)
            out = {"latent": np.asarray(ex["latent"], np.float32)}
        else:
            start = int(rng.integers(0, len(ex["video"]) - span + 1))
            clip = None
            if crop_prob > 0 and rng.random() < crop_prob:
                clip = random_crop(ex["video"][start : start + span : frame_interval], height, width, rng)
            if clip is None:
                clip = window(ex["video"], start, frames, height, width, frame_interval)
            out = {"video": clip.astype(np.float32) / 127.5 - 1.0}
        text = ex["captions"][int(rng.integers(len(ex["captions"])))]
        return {**out, **{k: v[0] for k, v in text_fn([text]).items()}}

    return to_model


def encode_clips(encode: Callable, clips: list[np.ndarray], frames: int, height: int, width: int,
                 frame_interval: int = 1, batch_size: int = 16, progress: bool = True) -> list[np.ndarray]:
    """Latent precompute: ``encode`` (a jitted ``vae.encode``, [B, T, H, W, 3] in [-1, 1] -> latents) applied
    once to the first window of ``frames`` frames of every decoded clip, at the training resolution.

    Exact for clips that are exactly one window long (``shapes``); a longer clip keeps only its first window.
    Returns one float32 latent [T', H', W', C] per clip.
    """
    span = (frames - 1) * frame_interval + 1
    if any(len(c) > span for c in clips):
        log.warning("latent precompute: clips longer than %d frames contribute only their first window", span)
    x = np.stack([window(c, 0, frames, height, width, frame_interval) for c in clips])
    z = in_batches(lambda b: encode(b.astype(np.float32) / 127.5 - 1.0), x, batch_size,
                   desc="encoding latents" if progress else None)
    return list(z.astype(np.float32))


def make_dataset(source: VideoSource, transform, *, batch_size: int, seed: int, shard_index: int = 0,
                 shard_count: int = 1, num_threads: int = 2) -> grain.IterDataset:
    """Infinite, shuffled, per-process-sharded batches (each process loads only its share)."""
    ds = grain.MapDataset.source(source)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.seed(seed).shuffle().repeat().random_map(transform)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
    return ds.batch(batch_size, drop_remainder=True)
