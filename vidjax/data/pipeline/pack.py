"""``pack``: decode, resize-crop into buckets, and write ArrayRecord shards that are also a TFDS dataset.

A bucket is ``(frames, height, width)``. Each clip goes to the bucket that fits inside it (no upscaling:
``frames <= clip frames``, ``height <= clip height``, ``width <= clip width``) with the closest aspect
ratio, then the largest area, then the most frames; a clip that fits no bucket is a reject. Its
frames ``start, start + frame_interval, ...`` are resized on the short side and center-cropped
(:func:`vidjax.data.video_io.resize_clip`, Open-Sora's transform).

Two kinds of records:
  * ``raw``: ``video`` (the bucket-sized clip as H.264 mp4 bytes), ``caption``, ``path``, ``start``,
    ``num_frames``, ``height``, ``width``, ``fps``.
  * ``latent``: ``latent`` float32 ``[T', H', W', C]`` from ``encoder`` (a jitted VAE encode,
    ``[B, T, H, W, 3]`` in [-1, 1] -> ``[B, T', H', W', C]``), ``y`` float32 ``[L, D]`` and ``mask`` bool
    ``[L]`` from ``text_encoder`` (texts -> ``(y [B, L, D], mask [B, L], ...)``), plus the same metadata.

Layout of ``out`` (``name`` defaults to ``vidjax_packed``)::

    out/packed.csv             one row per record: index (in the TFDS split), bucket, path, text, ...
    out/packed_rejects.csv     path, step, reason
    out/<name>/1.0.0/          <name>-train.array_record-0000k-of-0000n, dataset_info.json, features.json

``tfds.builder_from_directory("out/<name>/1.0.0")`` and ``tfds.data_source("<name>", split="train",
data_dir="out")`` open it without TensorFlow. Shard ``k`` holds the accepted rows among input rows
``[k * shard_size, (k + 1) * shard_size)`` in input order; each shard is written to a temporary name and
renamed, then marked done in ``out/.pack_progress/``, so a killed pack reruns only unfinished shards and
the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import einops
import numpy as np
from tqdm import tqdm

from vidjax.data.pipeline.table import (
    REJECT_COLUMNS,
    Reject,
    Row,
    fingerprint,
    read_table,
    reject_row,
    worker_pool,
    write_table,
)
from vidjax.data.pipeline.video import clip_range, read_frames
from vidjax.errors import ConfigError

STEP = "pack"
KINDS = ("raw", "latent")
DEFAULT_NAME = "vidjax_packed"
VERSION = "1.0.0"
SPLIT = "train"
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
META_COLUMNS = ("index", "path", "text", "start", "num_frames", "height", "width", "fps", "shard")

Bucket = tuple[int, int, int]


def parse_buckets(spec: str | Sequence) -> list[Bucket]:
    """``"16x256x256,16x144x256"`` or ``[(16, 256, 256), ...]`` -> list of ``(frames, height, width)``."""
    items = [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        try:
            t, h, w = (int(v) for v in (item.lower().split("x") if isinstance(item, str) else item))
        except (ValueError, TypeError):
            raise ConfigError(f"bucket {item!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 16x256x256") from None
        if min(t, h, w) < 1 or h % 2 or w % 2:
            raise ConfigError(f"bucket {item!r}: expected positive sizes with even height and width (H.264)")
        out.append((t, h, w))
    if not out:
        raise ConfigError("buckets: expected at least one FRAMESxHEIGHTxWIDTH")
    return out


def choose_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket], frame_interval: int = 1) -> Bucket:
    """The bucket a ``frames x height x width`` clip goes to (see the module docstring); :class:`Reject` if none."""
    fits = [b for b in buckets if (b[0] - 1) * frame_interval + 1 <= frames and b[1] <= height and b[2] <= width]
    if not fits:
        if all((b[0] - 1) * frame_interval + 1 > frames for b in buckets):
            raise Reject(f"{frames} frames: every bucket needs more (smallest {min(b[0] for b in buckets)} "
                         f"frames at interval {frame_interval})")
        raise Reject(f"{width}x{height} ({frames} frames) is smaller than every bucket {_names(buckets)}")
    ratio = math.log(height / width)
    return min(fits, key=lambda b: (abs(math.log(b[1] / b[2]) - ratio), -b[1] * b[2], -b[0]))


def _names(buckets: Sequence[Bucket]) -> str:
    return ",".join(f"{t}x{h}x{w}" for t, h, w in buckets)


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB (even H, W) -> yuv420p planes stacked as ``[H * 3 / 2, W]`` (BT.601, limited range,
    2x2-averaged chroma: what FFmpeg's default conversion computes, and what its decoder inverts)."""
    x = frame.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape
    cb, cr = (einops.reduce(c, "(h a) (w b) -> h w", "mean", a=2, b=2) for c in (cb, cr))
    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8).ravel() for p in (y, cb, cr)]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def encode_mp4(clip: np.ndarray, fps: float, crf: int = 12) -> bytes:
    """uint8 ``[T, H, W, 3]`` (even H, W) -> H.264 mp4 bytes, the same bytes every time.

    Unlike :func:`vidjax.data.video_io.write_video`, the output is reproducible, so a resumed pack gives the
    bytes of an uninterrupted one: libx264's assembly gave different bytes for the same frames about one call
    in twenty here (it reads memory it did not write), so it runs with ``asm=0`` and one thread, at preset
    ``veryfast`` (together about as fast as the default preset with assembly), and the RGB -> YUV conversion is
    done here in numpy.
    """
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        for f in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(f), format="yuv420p")))
        container.mux(stream.encode())
    return buf.getvalue()


def _prepare(row: Row, buckets: list[Bucket], frame_interval: int, kind: str, crf: int) -> dict:
    """One input row -> its bucket-sized clip (mp4 bytes for raw, uint8 frames for latent) and metadata."""
    from vidjax.data.video_io import resize_clip

    start, end = clip_range(row)
    t, h, w = choose_bucket(end - start, int(row["height"]), int(row["width"]), buckets, frame_interval)
    clip = resize_clip(read_frames(row["path"], range(start, start + (t - 1) * frame_interval + 1, frame_interval)),
                       h, w)
    fps = float(row["fps"]) / frame_interval
    meta = dict(path=str(row["path"]), text=str(row["text"]), start=start, num_frames=t, height=h, width=w, fps=fps)
    if kind == "raw":
        return dict(meta, video=encode_mp4(clip, fps, crf))
    return dict(meta, clip=clip)


def _prepare_one(args) -> tuple[dict | None, str | None]:
    fn, row = args
    try:
        return fn(row), None
    except Reject as e:
        return None, str(e)


def features(kind: str):
    """The TFDS ``FeaturesDict`` of a record (shapes of latents and embeddings are dynamic)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    common = dict(caption=f.Text(), path=f.Text(), start=f.Scalar(np.int32), num_frames=f.Scalar(np.int32),
                  height=f.Scalar(np.int32), width=f.Scalar(np.int32), fps=f.Scalar(np.float32))
    if kind == "raw":
        return f.FeaturesDict(dict(common, video=f.Tensor(shape=(), dtype=np.object_)))
    zlib = f.Encoding.ZLIB
    return f.FeaturesDict(dict(common, latent=f.Tensor(shape=(None, None, None, None), dtype=np.float32, encoding=zlib),
                               y=f.Tensor(shape=(None, None), dtype=np.float32, encoding=zlib),
                               mask=f.Tensor(shape=(None,), dtype=np.bool_)))


def _serializer(feats) -> Callable[[dict], bytes]:
    """record -> ``tf.train.Example`` bytes with the feature map in sorted order. TFDS's own
    ``serialize_example`` writes the map in hash order, which changes from process to process, so a
    resumed pack would not reproduce the shards of an uninterrupted one."""
    from tensorflow_datasets.core.example_serializer import ExampleSerializer

    ser = ExampleSerializer(feats.get_serialized_info())
    return lambda rec: ser.get_tf_example(feats.encode_example(rec)).SerializeToString(deterministic=True)


def _record(item: dict) -> dict:
    rec = dict(caption=item["text"], path=item["path"], start=item["start"], num_frames=item["num_frames"],
               height=item["height"], width=item["width"], fps=np.float32(item["fps"]))
    for k in ("video", "latent", "y", "mask"):
        if k in item:
            rec[k] = item[k]
    return rec


def _encode_latents(items: list[dict], encoder: Callable, text_encoder: Callable, batch_size: int) -> None:
    """Add ``latent``, ``y`` and ``mask`` to each prepared item (grouped by bucket, batched)."""
    from vidjax.data.loader import in_batches

    by_bucket: dict[Bucket, list[int]] = {}
    for i, it in enumerate(items):
        by_bucket.setdefault((it["num_frames"], it["height"], it["width"]), []).append(i)
    for idx in by_bucket.values():
        x = np.stack([items[i].pop("clip") for i in idx])
        z = in_batches(lambda b: encoder(b.astype(np.float32) / 127.5 - 1.0), x, batch_size)
        for i, zi in zip(idx, np.asarray(z, np.float32), strict=True):
            items[i]["latent"] = zi
    texts = [it["text"] for it in items]
    for s in range(0, len(texts), batch_size):
        y, mask = text_encoder(texts[s : s + batch_size])[:2]
        for j, (yi, mi) in enumerate(zip(np.asarray(y, np.float32), np.asarray(mask, bool), strict=True)):
            items[s + j]["y"], items[s + j]["mask"] = yi, mi


def dataset_dir(out: str | os.PathLike, name: str = DEFAULT_NAME) -> Path:
    """The TFDS version folder inside a pack output folder."""
    return Path(out) / name / VERSION


def _shard_path(ddir: Path, name: str, k: int, n: int) -> Path:
    return ddir / f"{name}-{SPLIT}.array_record-{k:05d}-of-{n:05d}"


def _marker(out: Path, name: str, k: int, n: int) -> Path:
    """Shard ``k``'s done marker (its records' metadata and rejects), outside the TFDS folder."""
    d = out / ".pack_progress"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}-{k:05d}-of-{n:05d}.json"


def pack(table: str | os.PathLike, out: str | os.PathLike, *, buckets: str | Sequence, kind: str = "raw",
         frame_interval: int = 1, shard_size: int = 64, name: str = DEFAULT_NAME, crf: int = 12,
         encoder: Callable | None = None, text_encoder: Callable | None = None, batch_size: int = 8,
         workers: int = 1, progress: bool = True) -> tuple[list[Row], list[Row]]:
    """Pack the clips of ``table`` into ``out`` (see the module docstring). Returns (records table, rejects).

    ``kind="latent"`` needs ``encoder`` and ``text_encoder`` (any callables with the shapes above; run in
    this process, batched by ``batch_size`` within each shard and bucket). Decoding runs in ``workers``
    processes.
    """
    if kind not in KINDS:
        raise ConfigError(f"pack kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "latent" and (encoder is None or text_encoder is None):
        raise ConfigError("pack kind 'latent' needs an encoder (VAE) and a text_encoder")
    if shard_size < 1 or frame_interval < 1:
        raise ConfigError(f"pack: shard_size ({shard_size}) and frame_interval ({frame_interval}) must be >= 1")
    from array_record.python.array_record_module import ArrayRecordWriter

    bks = parse_buckets(buckets)
    rows = read_table(table)
    out = Path(out)
    ddir = dataset_dir(out, name)
    ddir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(len(rows) / shard_size))
    key = fingerprint(STEP, rows, _names(bks), kind, frame_interval, shard_size, name, crf)
    feats = features(kind)
    serializer = _serializer(feats)
    prep = functools.partial(_prepare, buckets=bks, frame_interval=frame_interval, kind=kind, crf=crf)

    def done_info(k: int) -> dict | None:
        marker = _marker(out, name, k, n_shards)
        if marker.is_file() and _shard_path(ddir, name, k, n_shards).is_file():
            info = json.loads(marker.read_text())
            if info.get("key") == key:
                return info
        return None

    todo = [k for k in range(n_shards) if done_info(k) is None]
    bar = tqdm(total=len(rows), initial=len(rows) - sum(len(rows[k * shard_size:(k + 1) * shard_size]) for k in todo),
               desc=STEP, unit="row", disable=not progress)
    pool = worker_pool(workers) if workers > 1 and todo else None
    try:
        for k in todo:
            chunk = rows[k * shard_size:(k + 1) * shard_size]
            args = [(prep, r) for r in chunk]
            results = pool.map(_prepare_one, args) if pool is not None else map(_prepare_one, args)
            items, bad = [], []
            for r, (item, why) in zip(chunk, results, strict=True):
                if why is None:
                    items.append(item)
                else:
                    bad.append(reject_row(r.get("path", ""), STEP, why))
                bar.update()
            if kind == "latent" and items:
                _encode_latents(items, encoder, text_encoder, batch_size)
            path = _shard_path(ddir, name, k, n_shards)
            tmp = path.with_name(f".{path.name}.tmp")
            writer = ArrayRecordWriter(str(tmp), "group_size:1")
            for it in items:
                writer.write(serializer(_record(it)))
            writer.close()
            os.replace(tmp, path)
            meta = [{c: it[c] for c in META_COLUMNS if c in it} for it in items]
            _marker(out, name, k, n_shards).write_text(json.dumps({"key": key, "rows": meta, "rejects": bad}))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return _finish(out, ddir, name, n_shards, [done_info(k) for k in range(n_shards)], feats, kind, bks)


def _finish(out: Path, ddir: Path, name: str, n_shards: int, infos: list[dict], feats, kind: str,
            buckets: list[Bucket]) -> tuple[list[Row], list[Row]]:
    """Write the TFDS metadata and the records / rejects tables from the shards' done markers."""
    import tensorflow_datasets as tfds

    records, bad, lengths, index = [], [], [], 0
    for k, info in enumerate(infos):
        lengths.append(len(info["rows"]))
        for m in info["rows"]:
            records.append({"index": index, **m, "shard": k})
            index += 1
        bad += info["rejects"]
    template = tfds.core.ShardedFileTemplate(data_dir=ddir, template=TEMPLATE, dataset_name=name, split=SPLIT,
                                             filetype_suffix="array_record")
    split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=lengths, num_bytes=sum(
        _shard_path(ddir, name, k, n_shards).stat().st_size for k in range(n_shards)), filename_template=template)
    tfds.folder_dataset.write_metadata(
        data_dir=ddir, features=feats, split_infos=[split], filename_template=TEMPLATE, check_data=False,
        description=f"vidjax packed clips ({kind}), buckets {_names(buckets)}")
    write_table(out / "packed.csv", records, META_COLUMNS)
    write_table(out / "packed_rejects.csv", bad, REJECT_COLUMNS)
    return records, bad
