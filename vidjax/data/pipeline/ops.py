"""``score`` / ``filter``: an operator registry and recipes that chain operators over a clips table.

Each operator declares the columns it reads (``inputs``) and the column it writes (``output``; ``None``
for a pure filter). A score operator adds its column; a filter operator drops a row (it goes to the
rejects table with the reason, e.g. ``duration 0.8 < min 2``). A recipe is a list of operator specs
``{"op": name, param: value, ...}`` applied in order, from a ``.json`` or ``.yaml`` file (a list, or
``{"ops": [...]}``)::

    - {op: motion, samples: 8}             # flow: mean Farneback optical-flow magnitude
    - {op: blur}                           # blur: variance of the Laplacian (low = blurry)
    - {op: brightness}                     # brightness: mean luma, 0-255
    - {op: duration, min: 2.0}             # seconds
    - {op: resolution, min_height: 256}
    - {op: aspect, min: 0.5, max: 1.0}     # height / width
    - {op: range, column: flow, min: 0.5}  # any numeric column
    - {op: aesthetic, clip: clip-vit-large-patch14/, mlp: sac+logos+ava1-l14-linearMSE.pth}
    - {op: clip_match, clip: clip-vit-base-patch32/}
    - {op: ocr, model: text_detection_DB_TD500_resnet18.onnx}

Model scorers (``aesthetic``, ``clip_match``, ``ocr``) load local weights; when a path is absent the
recipe stops before any work with one line naming it (no made-up scores). New operators register
with :func:`register`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vidjax.data.pipeline.table import Reject, Row, read_table, run_step
from vidjax.data.pipeline.video import clip_range, read_frames, sample_indices
from vidjax.errors import ConfigError, MissingFileError

OPERATORS: dict[str, type[Operator]] = {}


def register(cls: type[Operator]) -> type[Operator]:
    """Class decorator: make an :class:`Operator` subclass available to recipes under ``cls.name``."""
    OPERATORS[cls.name] = cls
    return cls


class Frames:
    """Lazily decoded frames of one row's clip range, cached by frame index: uint8 ``[H, W, 3]`` each."""

    def __init__(self, row: Row):
        self.path = row["path"]
        self.start, self.end = clip_range(row)
        self.cache: dict[int, np.ndarray] = {}

    def get(self, indices: list[int]) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]``."""
        missing = sorted(set(indices) - set(self.cache))
        if missing:
            self.cache.update(zip(missing, read_frames(self.path, missing), strict=True))
        return np.stack([self.cache[i] for i in indices])

    def sample(self, n: int) -> np.ndarray:
        """``n`` frames spread evenly over the clip (first and last included): ``[n, H, W, 3]``."""
        return self.get(sample_indices(self.start, self.end, min(n, self.end - self.start)))


class Operator:
    """One step of a recipe: ``apply(row, frames)`` returns the output value or raises :class:`Reject`."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    output: ClassVar[str | None] = None

    def __init__(self, **params: Any):
        self.params = params

    def apply(self, row: Row, frames: Frames) -> Any:
        raise NotImplementedError

    def _param(self, key: str, default: Any = None, kind: Callable = float) -> Any:
        v = self.params.get(key, default)
        try:
            return None if v is None else kind(v)
        except (TypeError, ValueError):
            raise ConfigError(f"operator {self.name}: {key}={v!r} is not a {kind.__name__}") from None


def _gray(frame: np.ndarray, short_side: int | None = None) -> np.ndarray:
    import cv2

    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if short_side is not None and min(g.shape) != short_side:
        s = short_side / min(g.shape)
        g = cv2.resize(g, (max(1, round(g.shape[1] * s)), max(1, round(g.shape[0] * s))), interpolation=cv2.INTER_AREA)
    return g


@register
class Motion(Operator):
    """``flow``: mean optical-flow magnitude (Farneback, OpenCV) between ``samples`` pairs of consecutive frames
    spread over the clip, in pixels per frame at a short side of ``size`` pixels (Open-Sora's ``flow`` column
    comes from UniMatch; this is its CPU stand-in)."""

    name, inputs, output = "motion", ("path", "start", "end", "num_frames"), "flow"

    def apply(self, row: Row, frames: Frames) -> float:
        import cv2

        n, size = self._param("samples", 8, int), self._param("size", 128, int)
        if frames.end - frames.start < 2:
            raise Reject("motion: needs at least 2 frames")
        firsts = sample_indices(frames.start, frames.end - 1, min(n, frames.end - frames.start - 1))
        a, b = frames.get(firsts), frames.get([i + 1 for i in firsts])
        mags = []
        for fa, fb in zip(a, b, strict=True):
            flow = cv2.calcOpticalFlowFarneback(_gray(fa, size), _gray(fb, size), None, 0.5, 3, 15, 3, 5, 1.2, 0)
            mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
        return float(np.mean(mags))


@register
class Blur(Operator):
    """``blur``: variance of the Laplacian of the grey frames (mean over ``samples`` frames); low = blurry."""

    name, inputs, output = "blur", ("path", "start", "end", "num_frames"), "blur"

    def apply(self, row: Row, frames: Frames) -> float:
        import cv2

        clip = frames.sample(self._param("samples", 3, int))
        return float(np.mean([cv2.Laplacian(_gray(f), cv2.CV_64F).var() for f in clip]))


@register
class Brightness(Operator):
    """``brightness``: mean luma (0-255) over ``samples`` frames."""

    name, inputs, output = "brightness", ("path", "start", "end", "num_frames"), "brightness"

    def apply(self, row: Row, frames: Frames) -> float:
        return float(np.mean([_gray(f).mean() for f in frames.sample(self._param("samples", 3, int))]))


class _Bounds(Operator):
    """A filter that keeps rows whose ``column`` lies in ``[min, max]``."""

    column: ClassVar[str]

    def _check(self, row: Row, column: str, lo: float | None, hi: float | None) -> None:
        v = row.get(column)
        if v is None:
            raise Reject(f"{self.name}: no {column} value")
        if lo is not None and float(v) < lo:
            raise Reject(f"{self.name}: {column} {float(v):.4g} < min {lo:g}")
        if hi is not None and float(v) > hi:
            raise Reject(f"{self.name}: {column} {float(v):.4g} > max {hi:g}")

    def apply(self, row: Row, frames: Frames) -> None:
        self._check(row, self.column, self._param("min"), self._param("max"))


@register
class Duration(_Bounds):
    """Keep clips lasting ``min`` to ``max`` seconds."""

    name, inputs, column = "duration", ("duration",), "duration"


@register
class Aspect(_Bounds):
    """Keep clips whose aspect ratio (height / width) is in ``[min, max]``."""

    name, inputs, column = "aspect", ("aspect_ratio",), "aspect_ratio"


@register
class Resolution(_Bounds):
    """Keep clips with ``min_height <= height <= max_height`` and the same for width and ``pixels`` (H x W)."""

    name, inputs = "resolution", ("height", "width")

    def apply(self, row: Row, frames: Frames) -> None:
        row = {**row, "pixels": int(row["height"]) * int(row["width"])}
        for col in ("height", "width", "pixels"):
            self._check(row, col, self._param(f"min_{col}"), self._param(f"max_{col}"))


@register
class Range(_Bounds):
    """Keep rows whose numeric ``column`` (e.g. ``flow``, ``aes``, ``match``, ``ocr``) is in ``[min, max]``."""

    name, inputs = "range", ()

    def apply(self, row: Row, frames: Frames) -> None:
        column = self.params.get("column")
        if not isinstance(column, str):
            raise ConfigError("operator range: expected a 'column' name")
        self._check(row, column, self._param("min"), self._param("max"))


def _existing(op: str, key: str, value: Any) -> str:
    if not value:
        raise ConfigError(f"operator {op}: the '{key}' path (local weights) is required")
    if not Path(value).exists():
        raise MissingFileError(f"operator {op}: {key} weights not found: {value}")
    return str(value)


@functools.cache
def _clip_model(path: str):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    torch.set_num_threads(1)
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)


def _image_embeds(path: str, images: np.ndarray):
    import torch

    model, proc = _clip_model(path)
    with torch.no_grad():
        x = model.get_image_features(**proc(images=list(images), return_tensors="pt"))
    x = x if isinstance(x, torch.Tensor) else x.pooler_output
    return x / x.norm(dim=-1, keepdim=True)


@functools.cache
def _aesthetic_mlp(path: str, dim: int):
    """LAION's aesthetic predictor head (``sac+logos+ava1-l14-linearMSE``): Linear layers at indices 0, 2, 4, 6, 7."""
    import torch
    from torch import nn

    mlp = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    mlp.load_state_dict(state)
    return mlp.eval()


@register
class Aesthetic(Operator):
    """``aes``: LAION aesthetic score (CLIP image embedding -> MLP) of the first, middle and last frames, averaged
    (Open-Sora v1.1+). ``clip``: a CLIP model directory; ``mlp``: the predictor head (.pth or .safetensors)."""

    name, inputs, output = "aesthetic", ("path", "start", "end", "num_frames"), "aes"

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.clip, self.mlp = _existing(self.name, "clip", params.get("clip")), _existing(self.name, "mlp",
                                                                                           params.get("mlp"))

    def apply(self, row: Row, frames: Frames) -> float:
        import torch

        emb = _image_embeds(self.clip, frames.sample(3))
        with torch.no_grad():
            return float(_aesthetic_mlp(self.mlp, emb.shape[-1])(emb).mean())


@register
class ClipMatch(Operator):
    """``match``: cosine similarity of the CLIP embeddings of the middle frame and the caption (Open-Sora's
    ``match`` column). ``clip``: a CLIP model directory."""

    name, inputs, output = "clip_match", ("path", "start", "end", "num_frames", "text"), "match"

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.clip = _existing(self.name, "clip", params.get("clip"))

    def apply(self, row: Row, frames: Frames) -> float:
        import torch

        model, proc = _clip_model(self.clip)
        image = _image_embeds(self.clip, frames.sample(1))
        with torch.no_grad():
            t = model.get_text_features(**proc(text=[str(row["text"])], return_tensors="pt", padding=True,
                                               truncation=True))
        t = t if isinstance(t, torch.Tensor) else t.pooler_output
        return float((image * (t / t.norm(dim=-1, keepdim=True))).sum())


@functools.cache
def _db_detector(path: str, size: int):
    import cv2

    det = cv2.dnn_TextDetectionModel_DB(path)
    det.setBinaryThreshold(0.3).setPolygonThreshold(0.5).setMaxCandidates(200).setUnclipRatio(2.0)
    det.setInputParams(1.0 / 255.0, (size, size), (122.67891434, 116.66876762, 104.00698793), True)
    return det


@register
class OCR(Operator):
    """``ocr``: the number of text boxes a DB text detector (OpenCV DNN, e.g. the OpenCV-zoo
    ``text_detection_DB_TD500_resnet18`` ONNX) finds in the middle frame (Open-Sora counts DBNet++ boxes)."""

    name, inputs, output = "ocr", ("path", "start", "end", "num_frames"), "ocr"

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.model = _existing(self.name, "model", params.get("model"))

    def apply(self, row: Row, frames: Frames) -> int:
        import cv2

        frame = cv2.cvtColor(frames.sample(1)[0], cv2.COLOR_RGB2BGR)
        boxes, _ = _db_detector(self.model, self._param("size", 736, int)).detect(frame)
        return len(boxes)


def build_ops(recipe: list[dict]) -> list[Operator]:
    """Operator instances for a recipe (validates names and params, and that model weights exist)."""
    ops = []
    for i, spec in enumerate(recipe):
        if not isinstance(spec, dict) or not isinstance(spec.get("op"), str):
            raise ConfigError(f"recipe item {i}: expected {{op: name, ...}}, got {spec!r}")
        params = {k: v for k, v in spec.items() if k != "op"}
        if spec["op"] not in OPERATORS:
            known = ", ".join(sorted(OPERATORS))
            raise ConfigError(f"recipe item {i}: unknown operator {spec['op']!r}; known: {known}")
        ops.append(OPERATORS[spec["op"]](**params))
    return ops


def load_recipe(path: str | os.PathLike) -> list[dict]:
    """A recipe file (.json, .yaml/.yml): a list of operator specs, or ``{"ops": [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: recipe file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"{path}: expected a .json or .yaml recipe")
    data = data.get("ops") if isinstance(data, dict) else data
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of {{op: name, ...}} (or {{ops: [...]}})")
    return data


@functools.cache
def _ops_for(recipe_json: str) -> list[Operator]:
    return build_ops(json.loads(recipe_json))


def _apply(row: Row, recipe_json: str) -> list[Row]:
    out = dict(row)
    frames = Frames(row)
    for op in _ops_for(recipe_json):
        missing = [c for c in op.inputs if c not in out and c not in ("start", "end")]
        if missing:
            raise Reject(f"{op.name}: missing columns {missing}")
        value = op.apply(out, frames)
        if op.output is not None:
            out[op.output] = value
    return [out]


def score(table: str | os.PathLike, out: str | os.PathLike, recipe: list[dict], *,
          rejects: str | os.PathLike | None = None, step: str = "score", workers: int = 1,
          progress: bool = True) -> tuple[list[Row], list[Row]]:
    """Apply the recipe to every row of ``table``: score columns added, filtered rows rejected."""
    if not recipe:
        raise ConfigError(f"{step}: empty recipe (give --recipe FILE or --op NAME)")
    build_ops(recipe)  # fail on a bad recipe or missing weights before any work
    recipe_json = json.dumps(recipe, sort_keys=True)
    return run_step(step, read_table(table), functools.partial(_apply, recipe_json=recipe_json), out,
                    settings=recipe_json, rejects=rejects, workers=workers, progress=progress)
