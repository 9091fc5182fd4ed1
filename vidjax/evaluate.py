"""Does a generated clip show what its caption asks for? A deterministic, non-learned judge.

For each frame, the foreground is every pixel far from the background colour, and only the
**largest connected blob** counts (fragments don't score as objects). Then:
  * colour: the nearest palette colour to the blob's mean RGB (majority over frames);
  * shape: the blob's fill of its bounding box — square ≈ 1, circle ≈ π/4, triangle ≈ 1/2;
  * motion: the sign of the dominant axis of the blob centroid's straight-line fit over time
    (a track that moves less than ``min_travel`` pixels in total is "static", never correct).

Usage:
    python -m vidjax.evaluate --workdir runs/shapes_tiny            # sample 48 prompts and score
    python -m vidjax.evaluate --captions data/x/captions.jsonl       # score existing clips
Chance levels: colour 25%, shape 33%, motion 25%, all three ≈ 2%.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from vidjax import cli
from vidjax.cli import check_writable
from vidjax.data import shapes
from vidjax.errors import ConfigError, InputError, MissingFileError

PALETTE = {name: np.array(rgb, np.float32) for name, rgb in shapes.COLOURS.items()}
CHANCE = {"colour": 1 / len(shapes.COLOURS), "shape": 1 / len(shapes.SHAPES), "motion": 1 / len(shapes.MOTIONS),
          "all": 1 / (len(shapes.COLOURS) * len(shapes.SHAPES) * len(shapes.MOTIONS))}


def _blob(frame: np.ndarray, threshold: float):
    """Largest connected foreground component of one frame: boolean mask or None."""
    f = frame.astype(np.float32)
    bg = np.median(f.reshape(-1, 3), axis=0)
    fg = np.linalg.norm(f - bg, axis=-1) > threshold
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    if fill >= 0.88:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def detect(clip: np.ndarray, threshold: float = 60.0, min_area: int = 6, min_travel: float = 2.0) -> dict:
    """clip: uint8 [T, H, W, 3] -> {"colour", "shape", "motion"} (None where nothing was found)."""
    colours, shape_votes, track = [], [], []
    for t, frame in enumerate(clip):
        m = _blob(frame, threshold)
        if m is None or m.sum() < min_area:
            continue
        mean = frame[m].astype(np.float32).mean(0)
        colours.append(min(PALETTE, key=lambda k: float(np.linalg.norm(PALETTE[k] - mean))))
        shape_votes.append(_shape_of(m))
        ys, xs = np.nonzero(m)
        track.append((t, xs.mean(), ys.mean()))

    def vote(v):
        return max(set(v), key=v.count) if v else None

    motion = None
    if len(track) >= 2:
        tr = np.array(track)
        vx, vy = np.polyfit(tr[:, 0], tr[:, 1], 1)[0], np.polyfit(tr[:, 0], tr[:, 2], 1)[0]
        span = tr[-1, 0] - tr[0, 0]
        if max(abs(vx), abs(vy)) * span >= min_travel:
            motion = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
    return {"colour": vote(colours), "shape": vote(shape_votes), "motion": motion}


def score(clips, targets: list[tuple[str, str, str | None]]) -> dict:
    """Per-prompt verdicts and accuracies. targets: (shape, colour, motion) per clip; a still image (motion None,
    or a 1-frame clip) is scored on colour and shape only, and its "all" means both."""
    rows = []
    for clip, (shape, colour, motion) in zip(clips, targets, strict=True):
        d = detect(np.asarray(clip))
        ok = {"colour": d["colour"] == colour, "shape": d["shape"] == shape}
        if motion is not None:
            ok["motion"] = d["motion"] == motion
        ok["all"] = all(ok.values())
        rows.append({"prompt": shapes.prompt((shape, colour, motion)), "detected": d, **ok})
    n = len(rows)
    keys = [k for k in ("colour", "shape", "motion", "all") if any(k in r for r in rows) or not rows]
    summary = {k: sum(r[k] for r in rows if k in r) / max(sum(k in r for r in rows), 1) for k in keys}
    summary["n"] = n
    return {"summary": summary, "rows": rows}


def agreement(originals, reconstructions) -> dict[str, float]:
    """How often the detector reads the same colour / shape / motion from a reconstruction as from its
    original (clips uint8 [N, T, H, W, 3]): a compressor's ceiling for :func:`score` on ``shapes``."""
    pairs = [(detect(np.asarray(a)), detect(np.asarray(b))) for a, b in zip(originals, reconstructions, strict=True)]
    out = {k: sum(a[k] == b[k] for a, b in pairs) / max(len(pairs), 1) for k in ("colour", "shape", "motion")}
    out["all"] = sum(a == b for a, b in pairs) / max(len(pairs), 1)
    return out


def parse_size(text, field: str = "size") -> tuple[int, int, int]:
    """``"16x64x64"`` (or a 3-sequence) -> (frames, height, width); a one-line error otherwise."""
    parts = text.lower().split("x") if isinstance(text, str) else list(text)
    try:
        size = tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"{field}={text!r}: expected FRAMESxHEIGHTxWIDTH such as 16x64x64")
    return size  # type: ignore[return-value]


def size_label(size: tuple[int, int, int]) -> str:
    return "x".join(map(str, size))


def eval_sizes(config) -> list[tuple[int, int, int]]:
    """The clip sizes evaluation samples at: ``config.sample.buckets`` (``"FxHxW"`` strings), else the data size."""
    sizes = config.sample.get("buckets") or ()
    if not sizes:
        return [(config.data.frames, config.data.height, config.data.width)]
    return [parse_size(b, "config.sample.buckets") for b in sizes]


def evaluate_model(model, config, vae, diffusion, tokenizer, out_dir: Path | None = None, split: str = "train",
                   num_prompts: int | None = None, size: tuple[int, int, int] | None = None) -> dict:
    """Sample ``config.sample.num_prompts`` prompts covering every seen combination, and score them.

    ``size`` (frames, height, width) defaults to the data size; 1 frame asks for still images ("a red circle"),
    scored on colour and shape. Writes the clips as mp4 plus a PNG grid and ``eval.json`` to ``out_dir`` when given.
    """
    from vidjax.sample import generate, save_samples

    if size is not None:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.data.frames, config.data.height, config.data.width = (int(v) for v in size)
    targets = shapes.eval_prompts(num_prompts or config.sample.num_prompts, split, images=config.data.frames == 1)
    prompts = [shapes.prompt(t) for t in targets]
    clips = generate(model, config, vae, diffusion, tokenizer, prompts, seed=config.sample.seed)
    report = score(clips, targets)
    report["split"] = split
    if out_dir is not None:
        save_samples(out_dir, clips, prompts, fps=config.sample.fps)
        (Path(out_dir) / f"eval_{split}.json").write_text(json.dumps(report, indent=1))
    return report


def evaluate_continuation(model, config, vae, diffusion, tokenizer, out_dir: Path | None = None,
                          split: str = "heldout", num_prompts: int | None = None, cond_frames: int = 1) -> dict:
    """Continue ``shapes`` clips from their first ``cond_frames`` latent frames (Open-Sora v1.2's condition frames:
    a model trained with ``diffusion.mask_ratios``), and score only the generated frames against each clip's caption.

    The clips are ``split``'s (default the held-out (shape, colour) pairs) at the data size. Returns
    ``{"continuation": summary, "unconditioned": summary, ...}``: the same prompts sampled without reference frames
    are scored on the same frame range, so the two figures compare directly.
    """
    from vidjax.sample import generate, pixel_encoder, save_samples

    d = config.data
    n = num_prompts or config.sample.num_prompts
    # seed + 1: clips the model never saw (the training set is drawn with data.seed), also for split="train"
    made = [shapes.make_clip(d.get("seed", 0) + 1, i, d.frames, d.height, d.width, split) for i in range(n)]
    clips = np.stack([c for c, _ in made])
    targets = [(s.shape, s.colour, s.motion) for _, s in made]
    prompts = [shapes.prompt(t) for t in targets]
    latents = pixel_encoder(vae)(clips)
    lt = latents.shape[1]
    if not 1 <= cond_frames < lt:
        raise ConfigError(f"cond_frames={cond_frames}: the {d.frames}-frame clips have {lt} latent frames; "
                          f"condition on 1..{lt - 1} of them")
    mask = np.ones((n, lt), np.float32)
    mask[:, :cond_frames] = 0
    pad = vae.time_padding(d.frames) if hasattr(vae, "time_padding") else 0  # a causal VAE's front padding
    first = cond_frames * vae.downsample[0] - pad  # the first generated pixel frame
    seed = config.sample.seed
    cont = generate(model, config, vae, diffusion, tokenizer, prompts, seed=seed, reference=latents, mask=mask)
    free = generate(model, config, vae, diffusion, tokenizer, prompts, seed=seed)
    report = {"continuation": score(cont[:, first:], targets)["summary"],
              "unconditioned": score(free[:, first:], targets)["summary"],
              "split": split, "cond_latent_frames": cond_frames, "scored_frames": [first, d.frames]}
    if out_dir is not None:
        save_samples(out_dir, cont, prompts, fps=config.sample.fps)
        (Path(out_dir) / f"continuation_{split}.json").write_text(json.dumps(report, indent=1))
    return report


def evaluate_sizes(model, config, vae, diffusion, tokenizer, out_dir: Path | None = None, split: str = "train",
                   num_prompts: int | None = None, sizes=None) -> dict:
    """:func:`evaluate_model` at every size of ``sizes`` (default :func:`eval_sizes`): ``{"buckets": {"16x64x64":
    summary, ...}, "summary": ...}`` where the summary is that of the single size, or each metric's mean over the
    sizes that score it (so images count for colour / shape / all, videos also for motion)."""
    sizes = [tuple(s) for s in (sizes or eval_sizes(config))]
    if len(sizes) == 1:
        report = evaluate_model(model, config, vae, diffusion, tokenizer, out_dir, split, num_prompts, sizes[0])
        report["buckets"] = {size_label(sizes[0]): report["summary"]}
        return report
    buckets = {}
    for size in sizes:
        sub = None if out_dir is None else Path(out_dir) / size_label(size)
        buckets[size_label(size)] = evaluate_model(model, config, vae, diffusion, tokenizer, sub, split, num_prompts,
                                                   size)["summary"]
    keys = [k for k in ("colour", "shape", "motion", "all") if any(k in b for b in buckets.values())]
    summary = {k: float(np.mean([b[k] for b in buckets.values() if k in b])) for k in keys}
    summary["n"] = sum(b["n"] for b in buckets.values())
    report = {"summary": summary, "buckets": buckets, "split": split}
    if out_dir is not None:
        (Path(out_dir) / f"eval_{split}.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m vidjax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", help="a training workdir: sample its EMA model and score the samples")
    p.add_argument("--captions", help="score existing clips listed in a shapes captions.jsonl instead")
    p.add_argument("--split", default="train", choices=["train", "heldout"], help="which combinations to prompt")
    p.add_argument("--num_prompts", type=int, default=48)
    p.add_argument("--shuffle", action="store_true", help="pair clips with shuffled captions (a chance baseline)")
    p.add_argument("--continue_from", type=int, default=0, metavar="LATENT_FRAMES",
                   help="continue the split's shapes clips from their first LATENT_FRAMES latent frames (a model "
                        "trained with diffusion.mask_ratios) and score the generated frames, next to unconditioned "
                        "samples of the same prompts")
    p.add_argument("--bucket", action="append", help="a clip size FRAMESxHEIGHTxWIDTH to sample at (repeatable; "
                   "default: the run's config.sample.buckets, else its training size; 1 frame = still images)")
    a = p.parse_args(argv)
    if a.num_prompts < 1:
        raise ConfigError(f"--num_prompts={a.num_prompts}: must be a positive integer")
    if a.captions:
        from vidjax.data.video_io import read_video

        path = Path(a.captions)
        if not path.is_file():
            raise MissingFileError(f"{path}: captions file not found")
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()][: a.num_prompts]
        missing = [k for k in ("file", "shape", "colour") if rows and k not in rows[0]]
        if not rows or missing:
            raise InputError(f"{path}: expected shapes rows with file, shape, colour and motion"
                             + (f" (missing {', '.join(missing)})" if missing else " (the file has none)"))
        clips = [read_video(path.parent / r["file"]) for r in rows]
        targets = [(r["shape"], r["colour"], r.get("motion")) for r in rows]
        if a.shuffle:
            targets = [targets[i] for i in np.random.default_rng(0).permutation(len(targets))]
        report = score(clips, targets)
    elif a.workdir:
        from vidjax.checkpoint import restore_model
        from vidjax.diffusion import build_diffusion
        from vidjax.models.t2v import text_inputs
        from vidjax.models.vae import build_vae

        out = Path(a.workdir) / f"samples_{a.split}"
        check_writable(out, what="evaluation samples")
        sizes = [parse_size(b, "--bucket") for b in a.bucket] if a.bucket else None
        config, model, _ = restore_model(a.workdir, ema=True)
        if a.continue_from:
            report = evaluate_continuation(model, config, build_vae(config.vae), build_diffusion(config.diffusion),
                                           text_inputs(config), out.with_name(f"continuation_{a.split}"), a.split,
                                           a.num_prompts, a.continue_from)
            print(json.dumps(report))
            return 0
        report = evaluate_sizes(model, config, build_vae(config.vae), build_diffusion(config.diffusion),
                                text_inputs(config), out, a.split, a.num_prompts, sizes)
    else:
        p.error("give --workdir or --captions")
    print(json.dumps({**report["summary"], **({"buckets": report["buckets"]} if len(report.get("buckets", {})) > 1
                                              else {})}))
    return 0


if __name__ == "__main__":
    cli.run("vidjax.evaluate", main)
