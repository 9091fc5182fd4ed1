"""Training input from packed shards (``python -m vidjax.data pack``) with grain.

The training loop calls::

    ds = make_packed_dataset(path, batch_size=B, seed=seed,
                             shard_index=jax.process_index(), shard_count=jax.process_count(),
                             num_workers=2, tokenizer=tokenizer)   # tokenizer: adds "ids" / "mask"
    it = iter(ds)            # grain DatasetIterator: it.get_state() / it.set_state(state) for exact resume
    batch = to_global(next(it), mesh)   # global jax.Arrays split over the mesh's batch axes

``path`` is a pack output folder (with ``packed.csv``) or its TFDS version folder. Batches are numpy dicts
with the keys of :mod:`vidjax.data.loader`'s batches:
  * raw shards: ``"video"`` float32 ``[B, T, H, W, 3]`` in [-1, 1] and ``"caption"`` (str ``[B]``);
  * latent shards: ``"latent"`` float32 ``[B, T', H', W', C]``, ``"y"`` float32 ``[B, L, D]``, ``"mask"``
    bool ``[B, L]`` and ``"caption"``.
Every batch comes from one bucket ``(frames, height, width)``; with several buckets, batches are drawn
from the buckets in proportion to their sizes. Each process reads only its ``shard_index``-th share
of every bucket (``shard_count`` shares), shuffled with ``seed`` (a fresh order every epoch). With
``num_workers > 0`` worker processes decode and batch ahead of the consumer (grain ``mp_prefetch``);
the iterator state still resumes exactly. With ``num_epochs`` set and several buckets, the data ends when the
first bucket runs out (grain's ``mix``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import grain
import numpy as np

from vidjax.data.pipeline.pack import VERSION
from vidjax.data.pipeline.table import read_table
from vidjax.data.pipeline.video import read_frames
from vidjax.errors import InputError, MissingFileError


def _resolve(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(TFDS version folder, records table or None) of a pack output folder or a TFDS folder."""
    path = Path(path)
    if (path / "dataset_info.json").is_file():
        table = path.parent.parent / "packed.csv"
        return path, table if table.is_file() else None
    if (path / "packed.csv").is_file():
        found = sorted(path.glob(f"*/{VERSION}/dataset_info.json"))
        if len(found) != 1:
            raise InputError(f"{path}: expected one packed TFDS dataset (*/{VERSION}/dataset_info.json), "
                             f"found {len(found)}")
        return found[0].parent, path / "packed.csv"
    raise MissingFileError(f"{path}: not a packed dataset (no packed.csv or dataset_info.json)")


def open_packed(path: str | os.PathLike, split: str = "train"):
    """The packed dataset's random-access source (a ``tfds.data_source``) and each record's bucket ``[N, 3]``."""
    import tensorflow_datasets as tfds

    ddir, table = _resolve(path)
    src = tfds.builder_from_directory(str(ddir)).as_data_source(split=split)
    if table is not None:
        rows = read_table(table)
        buckets = np.array([(r["num_frames"], r["height"], r["width"]) for r in rows], np.int64).reshape(-1, 3)
        if len(buckets) != len(src):
            raise InputError(f"{table}: {len(buckets)} rows but the dataset has {len(src)} records")
    else:  # no table: read the sizes from the records themselves
        buckets = np.array([(src[i]["num_frames"], src[i]["height"], src[i]["width"]) for i in range(len(src))],
                           np.int64).reshape(-1, 3)
    return src, buckets


class _Subset:
    """Records ``indices`` of ``source`` (a grain random-access source)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def packed_captions(path: str | os.PathLike) -> list[str]:
    """Every record's caption, from the pack's table (for a frozen text encoder's cache before training)."""
    _, table = _resolve(path)
    if table is None:
        raise MissingFileError(f"{path}: no packed.csv next to the TFDS dataset, so its captions are unknown")
    return [str(r["text"]) for r in read_table(table)]


def decode_record(rec: dict) -> dict:
    """A stored record -> an example: ``video`` uint8 ``[T, H, W, 3]`` (or ``latent``, ``y``, ``mask``) and
    ``caption`` str."""
    caption = rec["caption"]
    out = {"caption": caption.decode() if isinstance(caption, bytes) else str(caption)}
    if "video" in rec:  # uint8 here; to_float32 scales it after batching (4x less to pass between processes)
        out["video"] = read_frames(bytes(rec["video"]), range(int(rec["num_frames"])))
    else:
        out["latent"] = np.asarray(rec["latent"], np.float32)
        out["y"] = np.asarray(rec["y"], np.float32)
        out["mask"] = np.asarray(rec["mask"], bool)
    return out


def make_packed_dataset(path: str | os.PathLike, *, batch_size: int, seed: int, shard_index: int = 0,
                        shard_count: int = 1, split: str = "train", num_workers: int = 0, num_threads: int = 2,
                        prefetch: int = 2, num_epochs: int | None = None,
                        tokenizer: Callable[[list[str]], tuple] | None = None) -> grain.IterDataset:
    """Shuffled, per-process-sharded, batched packed clips (see the module docstring).

    ``tokenizer`` (texts -> ``(ids [B, L], mask [B, L])``, as :mod:`vidjax.data.loader` takes) adds ``ids`` and
    ``mask`` to raw-clip batches, the keys the training step reads; it runs in this process, after the workers.
    ``num_epochs=None`` repeats forever. A bucket with fewer than ``batch_size`` records in this process's
    share is skipped. Returns a grain ``IterDataset``; ``iter()`` it and save ``get_state()`` to resume.
    """
    if batch_size < 1 or not 0 <= shard_index < shard_count:
        raise InputError(f"make_packed_dataset: batch_size {batch_size} must be >= 1 and shard_index "
                         f"{shard_index} in [0, {shard_count})")
    src, buckets = open_packed(path, split)
    parts, weights = [], []
    for b in sorted({tuple(b) for b in buckets.tolist()}):
        idx = np.flatnonzero((buckets == np.array(b)).all(1))[shard_index::shard_count]
        if len(idx) < batch_size:
            continue
        ds = grain.MapDataset.source(_Subset(src, idx)).seed(seed).shuffle()
        ds = ds.repeat(num_epochs).map(decode_record).batch(batch_size, drop_remainder=True)
        parts.append(ds)
        weights.append(len(idx))
    if not parts:
        raise InputError(f"{path}: no bucket has {batch_size} records for shard {shard_index} of {shard_count}")
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights=[w / sum(weights) for w in weights])
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (unparsed outside absl.app.run)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch))
    it = it.map(to_float32)
    if tokenizer is not None:
        it = it.map(functools.partial(_tokenize, tokenizer=tokenizer))
    return it


def _tokenize(batch: dict, tokenizer: Callable) -> dict:
    if "y" in batch:  # latent shards carry their text embeddings already
        return batch
    ids, mask = tokenizer(batch["caption"].tolist())
    return {**batch, "ids": np.asarray(ids), "mask": np.asarray(mask)}


def to_global(batch: dict, mesh) -> dict:
    """This process's batch -> global ``jax.Array`` s split over the mesh's batch axes (data × fsdp; numeric keys
    only, captions stay host-side numpy). The global batch is ``batch_size * shard_count`` long."""
    import jax

    from vidjax.parallel.sharding import batch_sharding

    return {k: v if v.dtype.kind in "USO" else
            jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in batch.items()}


def to_float32(batch: dict) -> dict:
    """A batch's uint8 ``video`` [B, T, H, W, 3] -> float32 in [-1, 1] (runs in the consuming process)."""
    if "video" in batch:
        batch = {**batch, "video": batch["video"].astype(np.float32) / 127.5 - 1.0}
    return batch
