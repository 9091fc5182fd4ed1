"""``python -m vidjax.data <step> ...``: the real-video data pipeline, one table in, one table out.

    python -m vidjax.data ingest   captions.json  videos.csv  --video-root videos/ --workers 2
    python -m vidjax.data scenecut videos.csv     scenes.csv  --detector adaptive
    python -m vidjax.data score    scenes.csv     scored.csv  --recipe recipe.yaml
    python -m vidjax.data caption  scored.csv     captioned.csv --model llava_dir/ --frames 4 --append-scores
    python -m vidjax.data pack     captioned.csv  packed/     --buckets 16x256x256,16x144x256

Tables are CSV or Parquet (by suffix). Each step also writes ``<out>_rejects.<ext>`` (``path, step,
reason``) and resumes from its journal when rerun. Steps and options: ``python -m vidjax.data <step> -h``.
The same steps are Python functions in :mod:`vidjax.data.pipeline` (``ingest.ingest``,
``scenecut.scenecut``, ``ops.score``, ``caption.caption``, ``pack.pack``); training reads packed
shards with :func:`vidjax.data.packed.make_packed_dataset`.
"""

from __future__ import annotations

import argparse
import json
import sys

from vidjax import cli
from vidjax.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _step(sub, name: str, help: str, out_help: str = "output table (.csv or .parquet)") -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("input", help="input table (.csv or .parquet)")
    p.add_argument("output", help=out_help)
    p.add_argument("--rejects", default=None, help="rejects table (default <output>_rejects.<ext>)")
    _common(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vidjax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("ingest", help="caption file + video folder -> clips table with stream info")
    p.add_argument("captions", help="MSR-VTT JSON, vidjax JSON/JSONL, or a CSV/TSV/Parquet caption table")
    p.add_argument("output", help="output table (.csv or .parquet)")
    p.add_argument("--video-root", default=None, help="folder the video paths are relative to "
                   "(default: the caption file's folder)")
    p.add_argument("--rejects", default=None, help="rejects table (default <output>_rejects.<ext>)")
    p.add_argument("--no-verify", action="store_true", help="trust the container's frame count instead of "
                   "decoding every frame (faster; truncated files pass)")
    _common(p)

    p = _step(sub, "scenecut", "split videos into single-shot clips (PySceneDetect, PyAV backend)")
    p.add_argument("--detector", choices=("content", "adaptive"), default="adaptive")
    p.add_argument("--threshold", type=float, default=None, help="detector threshold (default: PySceneDetect's)")
    p.add_argument("--min-scene-len", type=int, default=8, help="shortest scene the detector reports, frames")
    p.add_argument("--min-frames", type=int, default=1, help="drop scenes shorter than this")
    p.add_argument("--cut-dir", default=None, help="write each scene as an mp4 here (default: keep start/end)")

    for name, what in (("score", "compute scores"), ("filter", "compute scores and drop rows")):
        p = _step(sub, name, f"{what} with an operator recipe (the two names run the same recipe)")
        p.add_argument("--recipe", default=None, help="recipe file (.json, .yaml): a list of {op: name, ...}")
        p.add_argument("--op", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                       help="an operator (repeatable; after the recipe's), e.g. motion:samples=8 or duration:min=2")

    p = _step(sub, "caption", "caption clips with a transformers vision-language model")
    p.add_argument("--model", required=True, help="local model directory (AutoProcessor + image-text-to-text)")
    p.add_argument("--frames", type=int, default=4, help="frames sampled per clip")
    p.add_argument("--batch-size", type=int, default=4, help="clips per generate() call")
    p.add_argument("--prompt", default=None, help="instruction (default: describe the video)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--append-scores", action="store_true",
                   help="append 'aesthetic score: x, motion score: y.' from the aes / motion columns (Open-Sora v1.2)")

    p = _step(sub, "pack", "decode, resize-crop into buckets, write ArrayRecord shards (a TFDS dataset)",
              out_help="output folder")
    p.add_argument("--buckets", required=True, help="FRAMESxHEIGHTxWIDTH list, e.g. 16x256x256,16x144x256")
    p.add_argument("--kind", choices=("raw", "latent"), default="raw")
    p.add_argument("--frame-interval", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=64, help="input rows per shard")
    p.add_argument("--name", default="vidjax_packed", help="TFDS dataset name")
    p.add_argument("--crf", type=int, default=12, help="x264 quality of raw clips")
    p.add_argument("--vae", default=None, help="latent kind: the vae config entry as JSON, "
                   "e.g. '{\"type\": \"checkpoint\", \"path\": \"runs/vae\"}'")
    p.add_argument("--text-encoder", default=None, help="latent kind: T5 / CLIP checkpoint directory")
    p.add_argument("--batch-size", type=int, default=8, help="latent kind: clips per encoder call")
    return parser


def _op_spec(text: str) -> dict:
    name, _, rest = text.partition(":")
    spec: dict = {"op": name}
    for kv in filter(None, rest.split(",")):
        k, eq, v = kv.partition("=")
        if not eq:
            raise ConfigError(f"--op {text}: expected NAME:KEY=VALUE,..., got {kv!r}")
        try:
            spec[k] = json.loads(v)
        except json.JSONDecodeError:
            spec[k] = v
    return spec


def _latent_encoders(a):
    import jax
    import numpy as np
    from flax import nnx

    from vidjax.models.text.conditioner import build_text_conditioner, model_kind
    from vidjax.models.vae import build_vae

    if a.vae is None or a.text_encoder is None:
        raise ConfigError("pack --kind latent needs --vae and --text-encoder")
    try:
        vae_cfg = json.loads(a.vae)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--vae: expected a JSON vae config entry ({e.msg})") from None
    from vidjax.parallel.mesh import make_mesh
    from vidjax.parallel.sharding import batch_sharding, batch_shards

    # the encoder runs data-parallel over every local device: the VAE replicated, each batch split across devices
    mesh = make_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    graphdef, state = nnx.split(build_vae(vae_cfg))
    state = jax.device_put(state, replicated)
    split = batch_sharding(mesh, 5)
    jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x), in_shardings=(replicated, split),
                     out_shardings=split)
    shards = batch_shards(mesh)

    def encode(x):
        n = len(x)
        x = np.asarray(x)
        if n % shards:  # pad to a multiple of the devices with copies of the last clip, then drop them
            x = np.concatenate([x, np.repeat(x[-1:], shards - n % shards, 0)])
        return np.asarray(jitted(state, x))[:n]

    cond = build_text_conditioner(dict(encoder=model_kind(a.text_encoder), path=a.text_encoder))
    return encode, lambda texts: tuple(np.asarray(v) for v in cond.encode(texts)[:2])


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    kw = dict(workers=a.workers, progress=not a.no_progress)
    if a.step == "ingest":
        from vidjax.data.pipeline.ingest import ingest

        rows, bad = ingest(a.captions, a.output, video_root=a.video_root, rejects=a.rejects, verify=not a.no_verify,
                           **kw)
    elif a.step == "scenecut":
        from vidjax.data.pipeline.scenecut import scenecut

        rows, bad = scenecut(a.input, a.output, detector=a.detector, threshold=a.threshold,
                             min_scene_len=a.min_scene_len, min_frames=a.min_frames, cut_dir=a.cut_dir,
                             rejects=a.rejects, **kw)
    elif a.step in ("score", "filter"):
        from vidjax.data.pipeline.ops import load_recipe, score

        recipe = (load_recipe(a.recipe) if a.recipe else []) + [_op_spec(s) for s in a.op]
        rows, bad = score(a.input, a.output, recipe, rejects=a.rejects, step=a.step, **kw)
    elif a.step == "caption":
        from vidjax.data.pipeline.caption import TransformersCaptioner, caption

        captioner = TransformersCaptioner(a.model, prompt=a.prompt, max_new_tokens=a.max_new_tokens)
        rows, bad = caption(a.input, a.output, captioner, frames=a.frames, batch_size=a.batch_size,
                            append_scores=a.append_scores, rejects=a.rejects, progress=not a.no_progress)
    else:
        from vidjax.data.pipeline.pack import pack

        enc = _latent_encoders(a) if a.kind == "latent" else (None, None)
        rows, bad = pack(a.input, a.output, buckets=a.buckets, kind=a.kind, frame_interval=a.frame_interval,
                         shard_size=a.shard_size, name=a.name, crf=a.crf, encoder=enc[0], text_encoder=enc[1],
                         batch_size=a.batch_size, **kw)
    print(f"{a.step}: {len(rows)} rows -> {getattr(a, 'output', '')}, {len(bad)} rejected")
    return 0


if __name__ == "__main__":
    cli.run("python -m vidjax.data", main, sys.argv[1:])
