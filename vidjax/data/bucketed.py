"""Bucketed training batches: images and videos of many sizes, one bucket per batch (Open-Sora v1.1+).

    records + native sizes (probe) --BucketConfig.assign--> a bucket per clip (or dropped)
            --BucketSampler--> global batches, one bucket each, at that bucket's batch size; this process's rows
            --BucketedBatches--> {"video": float32 [b, T, H, W, 3] in [-1, 1] | "latent": [b, T', H', W', C],
                                  text inputs ...}

``config.data.bucket_config`` holds Open-Sora's table ``{resolution: {num_frames: (keep_prob, batch_size)}}``
(vidjax.data.buckets); ``config.data.resolutions`` may add named sizes (``{"64px": [(64, 64), (48, 96)]}``);
``config.data.bucket_batch`` says whether the batch sizes are global (``"global"``, the default) or per device
(``"per_device"``, Open-Sora's convention: multiplied by the data-parallel size).

Each clip is assigned once per run, from the run's seed (v1.2 redraws the keep probabilities every epoch; one draw
lets the frozen VAE encode each clip once at its bucket's size, ``data.cache_latents``). An image is the 1-frame
bucket and passes through the VAE like a 1-frame video, as in v1.2.

The iterator's state is the sampler's ``{"epoch", "position"}``; the checkpoint stores it (grain's handler calls
``get_state`` / ``set_state``), so a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from vidjax.data.buckets import Assignment, BucketConfig, BucketSampler, crop_to_bucket
from vidjax.data.captions import Record
from vidjax.data.loader import in_batches
from vidjax.data.video_io import read_video
from vidjax.errors import ConfigError

log = logging.getLogger(__name__)


def bucket_config_of(config, data_shards: int = 1) -> BucketConfig:
    """The parsed ``config.data.bucket_config`` with global batch sizes (checked to split over the data axes)."""
    d = config.data
    bucket_config = d.bucket_config.to_dict() if hasattr(d.bucket_config, "to_dict") else d.bucket_config
    table = BucketConfig.parse(bucket_config, "config.data.bucket_config", d.get("resolutions") or None)
    mode = d.get("bucket_batch", "global")
    if mode not in ("global", "per_device"):
        raise ConfigError(f"config.data.bucket_batch={mode!r}; expected 'global' or 'per_device'")
    if mode == "per_device":
        table = table.scaled(data_shards)
    for res, frames in table.resolutions:
        for fb in frames:
            if fb.batch_size and fb.batch_size % data_shards:
                raise ConfigError(f"config.data.bucket_config[{res!r}][{fb.num_frames}]: batch size "
                                  f"{fb.batch_size} does not split over the {data_shards} data-parallel devices")
    return table


def size_problem(vae, patch: Sequence[int], t: int, h: int, w: int, pads: bool = False) -> str | None:
    """Why the VAE (``latent_shape``, ``downsample``) and the model's patch cannot take a t×h×w clip, else None.

    ``pads``: the model zero-pads latents to a multiple of its patch and crops its output back (STDiT3, as
    Open-Sora v1.2 does for 240×426: latent 30×53, 27 patches wide), so only the VAE must take the size.
    """
    try:
        lt = vae.latent_shape(t, h, w)[0]
    except ValueError as e:  # the VAE's own reason (e.g. a causal VAE's spatial factor)
        return str(e)
    if pads:
        return None
    sh, sw = vae.downsample[1] * patch[1], vae.downsample[2] * patch[2]
    if h % sh or w % sw:
        return f"frame size {h}×{w} is not a multiple of {sh}×{sw} pixels (the VAE's stride × the model's patch)"
    if lt % patch[0]:
        return f"{t} frames give {lt} latent frames, not divisible by the temporal patch {patch[0]}"
    return None


def check_bucket_sizes(table: BucketConfig, vae, patch: Sequence[int], pads: bool = False) -> None:
    """One-line error naming a bucket whose clip size :func:`size_problem` rejects."""
    for key, (t, h, w) in table.shapes():
        problem = size_problem(vae, patch, t, h, w, pads)
        if problem:
            raise ConfigError(f"bucket {'/'.join(map(str, key))}: {problem}; change config.data.resolutions")


class BucketedBatches:
    """This process's batches (dicts of numpy arrays), endless, one bucket per batch; checkpointable.

    Args:
        sampler: the :class:`BucketSampler` (global batches, this process's rows).
        load: ``(row, assignment, rng) -> {"video" | "latent": array, "captions": tuple}`` of one clip at its bucket.
        text_fn: captions -> text inputs ``{name: [b, ...]}`` (vidjax.models.t2v.TextInputs.for_loader).
        assignments: per row its :class:`Assignment`.
        seed: the per-example randomness (window start, caption choice) is ``default_rng([seed, epoch, position,
            row])``: the same batch gets the same examples however often it is made.
        prefetch: batches prepared ahead in a thread.
    """

    def __init__(self, sampler: BucketSampler, load: Callable, text_fn: Callable, assignments: Sequence[Assignment],
                 seed: int, prefetch: int = 2):
        self.sampler, self.load, self.text_fn, self.assignments = sampler, load, text_fn, assignments
        self.seed, self.prefetch = seed, max(int(prefetch), 0)
        self._pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        self._queue: collections.deque = collections.deque()
        self._state = sampler.state_dict()  # the state before the next batch to hand out

    # -- making one batch --
    def _make(self, epoch: int, position: int, batch) -> dict:
        examples = []
        for row in batch.indices.tolist():
            rng = np.random.default_rng([self.seed, epoch, position, row])
            ex = self.load(row, self.assignments[row], rng)
            captions = ex.pop("captions")
            ex["caption"] = captions[int(rng.integers(len(captions)))]
            examples.append(ex)
        key = "latent" if "latent" in examples[0] else "video"
        out = {key: np.stack([e[key] for e in examples]).astype(np.float32)}
        out.update(self.text_fn([e["caption"] for e in examples]))
        return out

    def _submit(self) -> None:
        state = self.sampler.state_dict()
        batch = next(self.sampler)
        epoch = state["epoch"] + (state["position"] >= self.sampler.batches_per_epoch)
        position = 0 if state["position"] >= self.sampler.batches_per_epoch else state["position"]
        job = (self._pool.submit(self._make, epoch, position, batch) if self._pool
               else _Done(self._make(epoch, position, batch)))
        self._queue.append((job, self.sampler.state_dict()))

    # -- iterator protocol + grain's checkpoint handler --
    def __iter__(self) -> BucketedBatches:
        return self

    def __next__(self) -> dict:
        while len(self._queue) < self.prefetch + 1:
            self._submit()
        job, after = self._queue.popleft()
        self._state = after
        return job.result()

    def get_state(self) -> bytes:
        return json.dumps(self._state).encode()

    def set_state(self, state: bytes) -> None:
        self._queue.clear()  # prepared batches of the old position are discarded
        self._state = json.loads(state)
        self.sampler.load_state_dict(self._state)

    def start_prefetch(self) -> None:  # grain's handler calls it after a restore; batches are made on demand
        pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def clip_loader(records: Sequence[Record], clips: Sequence[np.ndarray] | None, frame_interval: int = 1):
    """``load`` for :class:`BucketedBatches` from decoded clips (or the files): a random window at the bucket's frame
    count, resized and centre-cropped to its size, in [-1, 1]."""

    def load(row: int, a: Assignment, rng: np.random.Generator) -> dict:
        clip = clips[row] if clips is not None else read_video(records[row].path)
        span = (a.num_frames - 1) * frame_interval + 1
        start = int(rng.integers(0, len(clip) - span + 1))
        video = crop_to_bucket(clip, a, frame_interval, start)
        return {"video": video.astype(np.float32) / 127.5 - 1.0, "captions": records[row].captions}

    return load


def encode_buckets(encode: Callable, clips: Sequence[np.ndarray], assignments: Sequence[Assignment | None],
                   frame_interval: int = 1, batch_size: int = 16, progress: bool = True) -> list[np.ndarray | None]:
    """Latent precompute for buckets: each assigned clip's first window at its bucket's size, through ``encode``
    (a jitted ``vae.encode``; one compile per bucket shape). Returns float32 latents per row (None: unassigned)."""
    groups: dict[tuple, list[int]] = {}
    for row, a in enumerate(assignments):
        if a is not None:
            groups.setdefault((a.num_frames, *a.size), []).append(row)
    out: list[np.ndarray | None] = [None] * len(assignments)
    for shape, rows in tqdm(sorted(groups.items()), desc="encoding latents per bucket", disable=not progress,
                            unit="bucket", leave=False):
        x = np.stack([crop_to_bucket(clips[r], assignments[r], frame_interval, 0) for r in rows])
        z = in_batches(lambda b: encode(b.astype(np.float32) / 127.5 - 1.0), x, min(batch_size, len(rows)))
        for r, latent in zip(rows, np.asarray(z, np.float32), strict=True):
            out[r] = latent
        log.info("latent precompute: %d clips of %s -> %s", len(rows), "x".join(map(str, shape)), z.shape[1:])
    return out


def latent_loader(records: Sequence[Record], latents: Sequence[np.ndarray | None]):
    """``load`` for :class:`BucketedBatches` from precomputed latents."""

    def load(row: int, a: Assignment, rng: np.random.Generator) -> dict:
        return {"latent": latents[row], "captions": records[row].captions}

    return load


__all__ = ["BucketedBatches", "bucket_config_of", "check_bucket_sizes", "size_problem", "clip_loader",
           "encode_buckets", "latent_loader"]
