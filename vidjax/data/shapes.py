"""The built-in ``shapes`` dataset: procedural, captioned clips of coloured shapes in motion.

Every clip shows a shape (circle, square, triangle) of a colour (red, green, blue, yellow)
moving left, right, up or down over a plain background; the caption says exactly that
("a red circle moving right"). Everything is a deterministic function of (seed, index).
Some (shape, colour) pairs never appear in the training split (:data:`HELD_OUT`), so an
evaluation can ask for combinations the model never saw.

``generate(root, ...)`` writes real mp4 files plus ``captions.jsonl`` lines
``{"file": "train/000001.mp4", "captions": [...]}`` so training reads them back through
the same loader as real data. ``generate_mix(root, groups)`` writes a set of several sizes,
aspect ratios and lengths, with still images (PNG files of a shape of a colour, no motion,
captioned "a red circle") as 1-frame clips: the data of the bucketed three-stage run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidjax.data.video_io import save_png, write_video
from vidjax.errors import ConfigError

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
}
MOTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (24, 24, 24)
HELD_OUT: tuple[tuple[str, str], ...] = (("circle", "blue"), ("triangle", "yellow"))


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    shape: str
    colour: str
    motion: str
    size: float  # object diameter / side, pixels
    speed: float  # pixels per frame
    x0: float  # centre at frame 0
    y0: float


def caption(shape: str, colour: str, motion: str) -> str:
    return f"a {colour} {shape} moving {motion}"


def paraphrases(shape: str, colour: str, motion: str) -> list[str]:
    """All captions of one clip; training samples one of them."""
    return [caption(shape, colour, motion), f"a {colour} {shape} moves {motion}", f"{colour} {shape}, moving {motion}"]


def image_caption(shape: str, colour: str) -> str:
    return f"a {colour} {shape}"


def image_paraphrases(shape: str, colour: str) -> list[str]:
    """All captions of one still image."""
    return [image_caption(shape, colour), f"{colour} {shape}", f"a picture of a {colour} {shape}"]


def combos(split: str = "train") -> list[tuple[str, str, str]]:
    """(shape, colour, motion) triples of a split: ``train`` (seen pairs) or ``heldout``."""
    out = []
    for s in SHAPES:
        for c in COLOURS:
            if ((s, c) in HELD_OUT) == (split == "heldout"):
                out += [(s, c, m) for m in MOTIONS]
    return out


def eval_prompts(n: int = 48, split: str = "train", images: bool = False) -> list[tuple[str, str, str | None]]:
    """``n`` (shape, colour, motion) triples cycling through every combination of ``split``; with ``images``,
    (shape, colour, None) pairs of still images."""
    cs = combos(split)
    if images:
        cs = list(dict.fromkeys((s, c, None) for s, c, _ in cs))
    return [cs[i % len(cs)] for i in range(n)]


def prompt(target: tuple[str, str, str | None]) -> str:
    """The caption of an evaluation target: a clip's, or a still image's when ``motion`` is None."""
    shape, colour, motion = target
    return image_caption(shape, colour) if motion is None else caption(shape, colour, motion)


def random_spec(rng: np.random.Generator, frames: int, height: int, width: int,
                combo: tuple[str, str, str]) -> ClipSpec:
    shape, colour, motion = combo
    side = min(height, width)
    size = rng.uniform(0.34, 0.44) * side
    speed = rng.uniform(0.045, 0.065) * side * 8 / max(frames, 2)  # ~40% of the frame over the clip
    dx, dy = MOTIONS[motion]
    travel = speed * (frames - 1)
    margin = size / 2 + 1

    def start(extent, d):
        lo, hi = margin, extent - margin
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        return rng.uniform(lo, max(lo, hi))

    return ClipSpec(shape, colour, motion, size, speed, start(width, dx), start(height, dy))


def _mask(shape: str, size: float, cx: float, cy: float, height: int, width: int, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage [H, W] in [0, 1] by ``ss × ss`` supersampling."""
    ys = (np.arange(height * ss) + 0.5) / ss
    xs = (np.arange(width * ss) + 0.5) / ss
    X, Y = np.meshgrid(xs - cx, ys - cy)
    r = size / 2
    if shape == "circle":
        m = X**2 + Y**2 <= r**2
    elif shape == "square":
        m = (np.abs(X) <= r) & (np.abs(Y) <= r)
    elif shape == "triangle":  # isosceles, pointing up, bounding box size × size
        m = (Y <= r) & (Y >= -r) & (np.abs(X) <= (Y + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return m.reshape(height, ss, width, ss).mean(axis=(1, 3))


def render(spec: ClipSpec, frames: int, height: int, width: int) -> np.ndarray:
    """Draw one clip: ``[T, H, W, 3] uint8``."""
    bg = np.array(BACKGROUND, np.float32)
    fg = np.array(COLOURS[spec.colour], np.float32)
    dx, dy = MOTIONS[spec.motion]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        cx, cy = spec.x0 + dx * spec.speed * t, spec.y0 + dy * spec.speed * t
        a = _mask(spec.shape, spec.size, cx, cy, height, width)[..., None]
        out[t] = np.round(bg * (1 - a) + fg * a).astype(np.uint8)
    return out


def make_clip(seed: int, index: int, frames: int, height: int, width: int, split: str = "train"):
    """(clip [T, H, W, 3] uint8, spec) for one index; deterministic in (seed, index, split)."""
    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    cs = combos(split)
    spec = random_spec(rng, frames, height, width, cs[int(rng.integers(len(cs)))])
    return render(spec, frames, height, width), spec


def make_image(seed: int, index: int, height: int, width: int, split: str = "train"):
    """(image [1, H, W, 3] uint8, spec) of one still: a shape of a colour at a random place, no motion."""
    rng = np.random.default_rng([seed, index, 2 if split == "train" else 3])
    cs = combos(split)
    spec = random_spec(rng, 1, height, width, cs[int(rng.integers(len(cs)))])
    return render(spec, 1, height, width), spec


def generate_mix(root: str | os.PathLike, groups, *, seed: int = 0, split: str = "train", fps: int = 8,
                 progress: bool = True) -> Path:
    """Write a mixed set under ``root``: ``groups`` is a list of ``(count, frames, height, width)``; ``frames == 1``
    gives still images (PNG), more gives mp4 clips. Returns the captions path (written last, atomically).
    Lines carry ``shape``, ``colour`` and ``motion`` (None for images). The groups and seed are kept beside the
    captions (``mix_<split>.json``); a folder that holds a different mix is an error, not silently reused."""
    root = Path(root)
    cap_path = root / ("captions.jsonl" if split == "train" else f"captions_{split}.jsonl")
    recipe = {"groups": [[int(v) for v in g] for g in groups], "seed": int(seed)}
    recipe_path = root / f"mix_{split}.json"
    if cap_path.exists():
        _check_mix(cap_path, recipe_path, recipe)
        return cap_path
    lines, index = [], 0
    total = sum(int(g[0]) for g in groups)
    bar = tqdm(total=total, desc=f"generating shapes mix/{split}", disable=not progress, unit="clip")
    for count, frames, height, width in groups:
        for _ in range(int(count)):
            still = int(frames) == 1
            rel = f"{split}/{index:06d}.{'png' if still else 'mp4'}"
            if still:
                clip, spec = make_image(seed, index, height, width, split)
                captions, motion = image_paraphrases(spec.shape, spec.colour), None
            else:
                clip, spec = make_clip(seed, index, frames, height, width, split)
                captions, motion = paraphrases(spec.shape, spec.colour, spec.motion), spec.motion
            if not (root / rel).exists():
                if still:
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    save_png(root / rel, clip[0])
                else:
                    write_video(root / rel, clip, fps=fps)
            lines.append(json.dumps({"file": rel, "captions": captions, "shape": spec.shape, "colour": spec.colour,
                                     "motion": motion}))
            index += 1
            bar.update()
    bar.close()
    recipe_path.write_text(json.dumps(recipe))
    tmp = cap_path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, cap_path)
    return cap_path


def _check_mix(cap_path: Path, recipe_path: Path, recipe: dict) -> None:
    """An existing mixed set must be the one asked for (sets written before the recipe file: the clip count)."""
    if recipe_path.exists():
        held = json.loads(recipe_path.read_text())
        if held != recipe:
            raise ConfigError(f"{cap_path.parent}: holds the shapes mix {held['groups']} (seed {held['seed']}), "
                              f"but config.data.mix asks for {recipe['groups']} (seed {recipe['seed']}); "
                              "set config.data.root to a new folder or delete this one")
        return
    count = sum(1 for line in cap_path.read_text().splitlines() if line.strip())
    wanted = sum(g[0] for g in recipe["groups"])
    if count != wanted:
        raise ConfigError(f"{cap_path}: holds {count} clips, but config.data.mix asks for {wanted} "
                          f"({recipe['groups']}); set config.data.root to a new folder or delete this one")


def generate(root: str | os.PathLike, *, num_clips: int = 2000, frames: int = 8, height: int = 32, width: int = 32,
             seed: int = 0, split: str = "train", fps: int = 8, progress: bool = True) -> Path:
    """Write ``num_clips`` mp4 clips under ``root/split/`` and ``root/captions.jsonl`` (or
    ``captions_<split>.jsonl``); returns the captions path. Skips work already done."""
    root = Path(root)
    cap_path = root / ("captions.jsonl" if split == "train" else f"captions_{split}.jsonl")
    if cap_path.exists():
        return cap_path
    lines = []
    for i in tqdm(range(num_clips), desc=f"generating shapes/{split}", disable=not progress, unit="clip"):
        rel = f"{split}/{i:06d}.mp4"
        clip, spec = make_clip(seed, i, frames, height, width, split)
        if not (root / rel).exists():
            write_video(root / rel, clip, fps=fps)
        lines.append(json.dumps({"file": rel, "captions": paraphrases(spec.shape, spec.colour, spec.motion),
                                 "shape": spec.shape, "colour": spec.colour, "motion": spec.motion}))
    tmp = cap_path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, cap_path)  # written last and atomically: its presence means the set is complete
    return cap_path
