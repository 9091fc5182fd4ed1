"""Open-Sora v1.2's buckets: named resolutions, aspect-ratio tables, clip assignment and a one-bucket-per-batch sampler.

A bucket config maps a resolution name to frame buckets, each with a keep probability and a batch size::

    {"144p": {1: (1.0, 475), 51: (1.0, 51), 102: ((1.0, 0.33), 27)}, "240p": {1: (0.3, 297), 51: (0.4, 20)}}

* ``(keep_prob, batch_size)``: the clip is kept at this resolution with probability ``keep_prob``.
* ``((keep_prob, frame_keep_prob), batch_size)``: the frame bucket itself is only considered with probability
  ``frame_keep_prob``; if it is skipped the clip tries the next shorter frame bucket.
* ``batch_size`` alone (an int): ``keep_prob`` 1.
* ``(0.0, None)``: a disabled entry (v1.2 writes these); it still stops the frame search, so a clip that reaches it
  is rejected at this resolution and falls to the next smaller one, as in v1.2.

Assignment (:meth:`BucketConfig.assign`) follows ``opensora/datasets/bucket.py`` of v1.2.0 rule for rule:

1. resolutions are tried from the most pixels to the fewest; one whose pixel count exceeds the clip's ``H·W`` by
   more than 1/0.8 is skipped (the clip must cover at least 80% of it);
2. an image (``num_frames == 1``) goes to the resolution's 1-frame bucket if a draw passes its keep probability;
3. a video tries the frame buckets from the longest down, skipping the 1-frame bucket; a pair-form entry first
   draws against ``frame_keep_prob`` (skip if the draw is greater); the first bucket with ``T > t · frame_interval``
   (strictly greater, so a 51-frame clip does not fill the 51-frame bucket) is taken, then a draw against
   ``keep_prob`` decides whether the clip stays at this resolution or moves on to the next;
4. the aspect-ratio bucket is the table entry whose ratio (``H / W``) is closest to the clip's, first on ties.

Randomness: every draw comes from ``numpy.random.default_rng(seed + clip_index · num_buckets + bucket_id)``, a fresh
generator per (clip, resolution, frame bucket), where ``bucket_id`` numbers the (resolution, frames) pairs in search
order and ``num_buckets`` counts every (resolution, frames, aspect ratio) triple. This is v1.2's own scheme
(``seed`` there is the sampler seed plus the epoch), so for the same config, seed and clip ids, vidjax assigns every
clip exactly as Open-Sora v1.2 does; and each clip's fate depends only on the seed and its own index, not on the
order in which clips are assigned or how many processes do it.

:class:`BucketSampler` then groups the assigned clips by bucket and yields global batches, each from one bucket at
that bucket's batch size, in a seeded order that changes every epoch. It is pure Python/numpy (no JAX).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from vidjax.data.video_io import resize_clip
from vidjax.errors import ConfigError

log = logging.getLogger(__name__)

# Open-Sora v1.2.0 ``opensora/datasets/aspect.py``: resolution name -> (reference pixel count, {"H/W": (H, W)}).
# The "p" names (and 2k / 4k) are Open-Sora's video tables, 17 ratios from 3:8 to 50:27 at about the named pixel
# count; the plain numbers (256 ... 2880) are PixArt's image tables with 40 ratios from 1:4 to 4:1. The order of
# the ratios inside a table is Open-Sora's (it decides ties in :func:`closest_aspect_ratio`).
ASPECT_RATIOS: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    "144p": (36864, {
        "0.38": (117, 312), "0.43": (125, 291), "0.48": (133, 277), "0.50": (135, 270), "0.53": (139, 262),
        "0.54": (141, 260), "0.56": (144, 256), "0.62": (151, 241), "0.67": (156, 234), "0.75": (166, 221),
        "1.00": (192, 192), "1.33": (221, 165), "1.50": (235, 156), "1.78": (256, 144), "1.89": (263, 139),
        "2.00": (271, 135), "2.08": (277, 132),
    }),
    "256": (65536, {
        "0.25": (128, 512), "0.26": (128, 496), "0.27": (128, 480), "0.28": (128, 464), "0.32": (144, 448),
        "0.33": (144, 432), "0.35": (144, 416), "0.4": (160, 400), "0.42": (160, 384), "0.48": (176, 368),
        "0.5": (176, 352), "0.52": (176, 336), "0.57": (192, 336), "0.6": (192, 320), "0.68": (208, 304),
        "0.72": (208, 288), "0.78": (224, 288), "0.82": (224, 272), "0.88": (240, 272), "0.94": (240, 256),
        "1.0": (256, 256), "1.07": (256, 240), "1.13": (272, 240), "1.21": (272, 224), "1.29": (288, 224),
        "1.38": (288, 208), "1.46": (304, 208), "1.67": (320, 192), "1.75": (336, 192), "2.0": (352, 176),
        "2.09": (368, 176), "2.4": (384, 160), "2.5": (400, 160), "2.89": (416, 144), "3.0": (432, 144),
        "3.11": (448, 144), "3.62": (464, 128), "3.75": (480, 128), "3.88": (496, 128), "4.0": (512, 128),
    }),
    "240p": (102240, {
        "0.38": (196, 522), "0.43": (210, 490), "0.48": (222, 462), "0.50": (226, 452), "0.53": (232, 438),
        "0.54": (236, 436), "0.56": (240, 426), "0.62": (252, 404), "0.67": (262, 393), "0.75": (276, 368),
        "1.00": (320, 320), "1.33": (370, 278), "1.50": (392, 262), "1.78": (426, 240), "1.89": (440, 232),
        "2.00": (452, 226), "2.08": (462, 222),
    }),
    "360p": (230400, {
        "0.38": (294, 784), "0.43": (314, 732), "0.48": (332, 692), "0.50": (340, 680), "0.53": (350, 662),
        "0.54": (352, 652), "0.56": (360, 640), "0.62": (380, 608), "0.67": (392, 588), "0.75": (416, 554),
        "1.00": (480, 480), "1.33": (554, 416), "1.50": (588, 392), "1.78": (640, 360), "1.89": (660, 350),
        "2.00": (678, 340), "2.08": (692, 332),
    }),
    "512": (262144, {
        "0.25": (256, 1024), "0.26": (256, 992), "0.27": (256, 960), "0.28": (256, 928), "0.32": (288, 896),
        "0.33": (288, 864), "0.35": (288, 832), "0.4": (320, 800), "0.42": (320, 768), "0.48": (352, 736),
        "0.5": (352, 704), "0.52": (352, 672), "0.57": (384, 672), "0.6": (384, 640), "0.68": (416, 608),
        "0.72": (416, 576), "0.78": (448, 576), "0.82": (448, 544), "0.88": (480, 544), "0.94": (480, 512),
        "1.0": (512, 512), "1.07": (512, 480), "1.13": (544, 480), "1.21": (544, 448), "1.29": (576, 448),
        "1.38": (576, 416), "1.46": (608, 416), "1.67": (640, 384), "1.75": (672, 384), "2.0": (704, 352),
        "2.09": (736, 352), "2.4": (768, 320), "2.5": (800, 320), "2.89": (832, 288), "3.0": (864, 288),
        "3.11": (896, 288), "3.62": (928, 256), "3.75": (960, 256), "3.88": (992, 256), "4.0": (1024, 256),
    }),
    "480p": (409920, {
        "0.38": (392, 1046), "0.43": (420, 980), "0.48": (444, 925), "0.50": (452, 904), "0.53": (466, 880),
        "0.54": (470, 870), "0.56": (480, 854), "0.62": (506, 810), "0.67": (522, 784), "0.75": (554, 738),
        "1.00": (640, 640), "1.33": (740, 555), "1.50": (784, 522), "1.78": (854, 480), "1.89": (880, 466),
        "2.00": (906, 454), "2.08": (924, 444),
    }),
    "720p": (921600, {
        "0.38": (588, 1568), "0.43": (628, 1466), "0.48": (666, 1388), "0.50": (678, 1356), "0.53": (698, 1318),
        "0.54": (706, 1306), "0.56": (720, 1280), "0.62": (758, 1212), "0.67": (784, 1176), "0.75": (832, 1110),
        "1.00": (960, 960), "1.33": (1108, 832), "1.50": (1176, 784), "1.78": (1280, 720), "1.89": (1320, 698),
        "2.00": (1358, 680), "2.08": (1386, 666),
    }),
    "1024": (1048576, {
        "0.25": (512, 2048), "0.26": (512, 1984), "0.27": (512, 1920), "0.28": (512, 1856), "0.32": (576, 1792),
        "0.33": (576, 1728), "0.35": (576, 1664), "0.4": (640, 1600), "0.42": (640, 1536), "0.48": (704, 1472),
        "0.5": (704, 1408), "0.52": (704, 1344), "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216),
        "0.72": (832, 1152), "0.78": (896, 1152), "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024),
        "1.0": (1024, 1024), "1.07": (1024, 960), "1.13": (1088, 960), "1.21": (1088, 896), "1.29": (1152, 896),
        "1.38": (1152, 832), "1.46": (1216, 832), "1.67": (1280, 768), "1.75": (1344, 768), "2.0": (1408, 704),
        "2.09": (1472, 704), "2.4": (1536, 640), "2.5": (1600, 640), "2.89": (1664, 576), "3.0": (1728, 576),
        "3.11": (1792, 576), "3.62": (1856, 512), "3.75": (1920, 512), "3.88": (1984, 512), "4.0": (2048, 512),
    }),
    "1080p": (2073600, {
        "0.38": (882, 2352), "0.43": (942, 2198), "0.48": (998, 2080), "0.50": (1018, 2036), "0.53": (1048, 1980),
        "0.54": (1058, 1958), "0.56": (1080, 1920), "0.62": (1138, 1820), "0.67": (1176, 1764), "0.75": (1248, 1664),
        "1.00": (1440, 1440), "1.33": (1662, 1246), "1.50": (1764, 1176), "1.78": (1920, 1080), "1.89": (1980, 1048),
        "2.00": (2036, 1018), "2.08": (2078, 998),
    }),
    "2k": (3686400, {
        "0.38": (1176, 3136), "0.43": (1256, 2930), "0.48": (1330, 2770), "0.50": (1358, 2716), "0.53": (1398, 2640),
        "0.54": (1412, 2612), "0.56": (1440, 2560), "0.62": (1518, 2428), "0.67": (1568, 2352), "0.75": (1662, 2216),
        "1.00": (1920, 1920), "1.33": (2218, 1664), "1.50": (2352, 1568), "1.78": (2560, 1440), "1.89": (2638, 1396),
        "2.00": (2716, 1358), "2.08": (2772, 1330),
    }),
    "2048": (4194304, {
        "0.25": (1024, 4096), "0.26": (1024, 3968), "0.27": (1024, 3840), "0.28": (1024, 3712), "0.32": (1152, 3584),
        "0.33": (1152, 3456), "0.35": (1152, 3328), "0.4": (1280, 3200), "0.42": (1280, 3072), "0.48": (1408, 2944),
        "0.5": (1408, 2816), "0.52": (1408, 2688), "0.57": (1536, 2688), "0.6": (1536, 2560), "0.68": (1664, 2432),
        "0.72": (1664, 2304), "0.78": (1792, 2304), "0.82": (1792, 2176), "0.88": (1920, 2176), "0.94": (1920, 2048),
        "1.0": (2048, 2048), "1.07": (2048, 1920), "1.13": (2176, 1920), "1.21": (2176, 1792), "1.29": (2304, 1792),
        "1.38": (2304, 1664), "1.46": (2432, 1664), "1.67": (2560, 1536), "1.75": (2688, 1536), "2.0": (2816, 1408),
        "2.09": (2944, 1408), "2.4": (3072, 1280), "2.5": (3200, 1280), "2.89": (3328, 1152), "3.0": (3456, 1152),
        "3.11": (3584, 1152), "3.62": (3712, 1024), "3.75": (3840, 1024), "3.88": (3968, 1024), "4.0": (4096, 1024),
    }),
    "2880": (8294400, {
        "0.25": (1408, 5760), "0.26": (1408, 5568), "0.27": (1408, 5376), "0.28": (1408, 5184), "0.32": (1600, 4992),
        "0.33": (1600, 4800), "0.34": (1600, 4672), "0.4": (1792, 4480), "0.42": (1792, 4288), "0.47": (1920, 4096),
        "0.49": (1920, 3904), "0.51": (1920, 3776), "0.55": (2112, 3840), "0.59": (2112, 3584), "0.68": (2304, 3392),
        "0.72": (2304, 3200), "0.78": (2496, 3200), "0.83": (2496, 3008), "0.89": (2688, 3008), "0.93": (2688, 2880),
        "1.0": (2880, 2880), "1.07": (2880, 2688), "1.12": (3008, 2688), "1.21": (3008, 2496), "1.28": (3200, 2496),
        "1.39": (3200, 2304), "1.47": (3392, 2304), "1.7": (3584, 2112), "1.82": (3840, 2112), "2.03": (3904, 1920),
        "2.13": (4096, 1920), "2.39": (4288, 1792), "2.5": (4480, 1792), "2.92": (4672, 1600), "3.0": (4800, 1600),
        "3.12": (4992, 1600), "3.68": (5184, 1408), "3.82": (5376, 1408), "3.95": (5568, 1408), "4.0": (5760, 1408),
    }),
    "4k": (8294400, {
        "0.38": (1764, 4704), "0.43": (1886, 4400), "0.48": (1996, 4158), "0.50": (2036, 4072), "0.53": (2096, 3960),
        "0.54": (2118, 3918), "0.62": (2276, 3642), "0.56": (2160, 3840), "0.67": (2352, 3528), "0.75": (2494, 3326),
        "1.00": (2880, 2880), "1.33": (3326, 2494), "1.50": (3528, 2352), "1.78": (3840, 2160), "1.89": (3958, 2096),
        "2.00": (4072, 2036), "2.08": (4156, 1994),
    }),
}

#: Open-Sora's name for each aspect ratio of the video tables (``"9:16"`` is height 9, width 16 -> key ``"0.56"``).
ASPECT_RATIO_NAMES: dict[str, str] = {
    "3:8": "0.38", "9:21": "0.43", "12:25": "0.48", "1:2": "0.50", "9:17": "0.53", "27:50": "0.54", "9:16": "0.56",
    "5:8": "0.62", "2:3": "0.67", "3:4": "0.75", "1:1": "1.00", "4:3": "1.33", "3:2": "1.50", "16:9": "1.78",
    "17:9": "1.89", "2:1": "2.00", "50:27": "2.08",
}

#: A clip must cover this fraction of a resolution's reference pixel count to be assigned to it (v1.2's ``approx``).
MIN_PIXEL_FRACTION = 0.8


def custom_tables(resolutions: Any, field: str = "data.resolutions") -> dict[str, tuple[int, dict]]:
    """Named resolutions beyond Open-Sora's: ``{name: [(H, W), ...]}``, one frame size per aspect ratio.

    The ratio key is ``f"{H / W:.2f}"`` and the reference pixel count is the area of the most nearly square size, so a
    clip goes to the resolution when it has at least 80% of that many pixels (as with Open-Sora's tables)::

        {"32px": [(32, 32)], "64px": [(64, 64), (48, 96)]}
    """
    if not resolutions:
        return {}
    if hasattr(resolutions, "to_dict"):  # an ml_collections.ConfigDict
        resolutions = resolutions.to_dict()
    if not isinstance(resolutions, Mapping):
        raise ConfigError(f"{field}: expected {{name: [(height, width), ...]}}, got {resolutions!r}")
    out = {}
    for name, sizes in resolutions.items():
        ok = isinstance(sizes, (list, tuple)) and sizes and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s)
            for s in sizes)
        if not ok:
            raise ConfigError(f"{field}[{name!r}]: expected a list of (height, width) positive ints, got {sizes!r}")
        table = {f"{h / w:.2f}": (int(h), int(w)) for h, w in sizes}
        square = min(table.values(), key=lambda hw: abs(np.log(hw[0] / hw[1])))
        out[str(name)] = (square[0] * square[1], table)
    return out


def closest_aspect_ratio(height: float, width: float, ratios: Mapping[str, Any]) -> str:
    """The key of ``ratios`` (``"H/W"`` strings such as ``"0.56"``) nearest to ``height / width``; first on ties."""
    ratio = height / width
    return min(ratios, key=lambda key: abs(float(key) - ratio))


class Assignment(NamedTuple):
    """Where one clip goes: its bucket and the frame size it is resized and cropped to."""

    resolution: str  # e.g. "240p"
    num_frames: int  # the frame bucket (1 for images)
    aspect_ratio: str  # key of ASPECT_RATIOS[resolution][1], e.g. "0.56"
    size: tuple[int, int]  # (target_h, target_w)

    @property
    def bucket(self) -> tuple[str, int, str]:
        """The bucket key ``(resolution, num_frames, aspect_ratio)``: clips with equal keys share batches."""
        return (self.resolution, self.num_frames, self.aspect_ratio)


@dataclass(frozen=True)
class FrameBucket:
    """One ``num_frames`` entry of a resolution's table.

    ``frame_keep_prob`` is None for the plain ``(keep_prob, batch_size)`` form; ``batch_size`` is None only for a
    disabled entry (``keep_prob == 0``).
    """

    num_frames: int
    keep_prob: float
    frame_keep_prob: float | None
    batch_size: int | None


def _where(field: str, res: Any, frames: Any = None) -> str:
    return f"{field}[{res!r}]" + ("" if frames is None else f"[{frames!r}]")


def _probability(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{where}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def _frame_bucket(frames: Any, entry: Any, where: str) -> FrameBucket:
    """Parse one ``num_frames: entry`` item (int, ``(p, bs)`` or ``((p, p_t), bs)``)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ConfigError(f"{where}: the frame count must be a positive int, got {frames!r}")
    if isinstance(entry, int) and not isinstance(entry, bool):
        entry = (1.0, entry)
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
        raise ConfigError(f"{where}: expected (keep_prob, batch_size), ((keep_prob, frame_keep_prob), batch_size) "
                          f"or a batch size, got {entry!r}")
    prob, batch_size = entry
    frame_keep: float | None = None
    if isinstance(prob, (tuple, list)):
        if len(prob) != 2:
            raise ConfigError(f"{where}: the keep probability pair must be (keep_prob, frame_keep_prob), got {prob!r}")
        frame_keep = _probability(prob[1], where, "frame_keep_prob")
        prob = prob[0]
    keep = _probability(prob, where, "keep_prob")
    if batch_size is None and keep == 0.0:
        return FrameBucket(frames, keep, frame_keep, None)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{where}: the batch size must be a positive int (None only with keep_prob 0), "
                          f"got {batch_size!r}")
    return FrameBucket(frames, keep, frame_keep, batch_size)


@dataclass(frozen=True)
class BucketConfig:
    """A parsed bucket table, resolutions from the most pixels to the fewest, frame buckets longest first.

    ``num_buckets`` counts every (resolution, frames, aspect ratio) triple, as v1.2's ``Bucket.num_bucket`` does; it
    enters the per-clip seed.
    """

    resolutions: tuple[tuple[str, tuple[FrameBucket, ...]], ...]
    #: resolution name -> (reference pixel count, {"H/W": (H, W)}): Open-Sora's tables plus any custom ones.
    tables: Mapping[str, tuple[int, dict[str, tuple[int, int]]]] = field(default_factory=lambda: ASPECT_RATIOS)

    @classmethod
    def parse(cls, bucket_config: Any, field: str = "bucket_config", resolutions: Any = None) -> BucketConfig:
        """Check and order ``{resolution: {num_frames: entry}}``; bad input is a one-line ConfigError naming the entry.

        ``resolutions`` adds named resolutions to Open-Sora's (:func:`custom_tables`), e.g. small sizes for CPU runs.
        Frame counts may be ints or digit strings (a config stored as JSON). Equal pixel counts (``2880`` and ``4k``)
        keep the config's order, as v1.2's stable sort does.
        """
        tables = {**ASPECT_RATIOS, **custom_tables(resolutions)}
        if not isinstance(bucket_config, Mapping) or not bucket_config:
            raise ConfigError(f"{field}: the bucket table is empty; expected "
                              f"{{resolution: {{num_frames: (keep_prob, batch_size)}}}}, got {bucket_config!r}")
        for res in bucket_config:
            if res not in tables:
                raise ConfigError(f"{_where(field, res)}: unknown resolution name; expected one of "
                                  f"{', '.join(tables)}")
        out = []
        for res in sorted(bucket_config, key=lambda name: tables[name][0], reverse=True):
            table = bucket_config[res]
            if not isinstance(table, Mapping) or not table:
                raise ConfigError(f"{_where(field, res)}: expected a non-empty "
                                  f"{{num_frames: (keep_prob, batch_size)}}, got {table!r}")
            entries = {}
            for frames, entry in table.items():
                count = int(frames) if isinstance(frames, str) and frames.isdigit() else frames
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    raise ConfigError(f"{_where(field, res, frames)}: the frame count must be a positive int")
                entries[count] = entry
            buckets = tuple(_frame_bucket(t, entries[t], _where(field, res, t)) for t in sorted(entries, reverse=True))
            out.append((res, buckets))
        return cls(tuple(out), tables)

    def scaled(self, factor: int) -> BucketConfig:
        """The same table with every batch size times ``factor`` (Open-Sora's per-GPU sizes -> global batches)."""
        return BucketConfig(tuple((res, tuple(dataclasses.replace(fb, batch_size=fb.batch_size * factor)
                                              if fb.batch_size else fb for fb in frames))
                                  for res, frames in self.resolutions), self.tables)

    def shapes(self) -> list[tuple[tuple[str, int, str], tuple[int, int, int]]]:
        """Every enabled bucket key with its clip shape ``(num_frames, height, width)``."""
        return [((res, fb.num_frames, ratio), (fb.num_frames, h, w)) for res, frames in self.resolutions
                for fb in frames if fb.batch_size for ratio, (h, w) in self.tables[res][1].items()]

    @property
    def num_buckets(self) -> int:
        return sum(len(frames) * len(self.tables[res][1]) for res, frames in self.resolutions)

    def bucket_ids(self) -> dict[tuple[str, int], int]:
        """v1.2's ``bucket_id``: (resolution, num_frames) numbered 0, 1, ... in search order."""
        pairs = [(res, fb.num_frames) for res, frames in self.resolutions for fb in frames]
        return {pair: i for i, pair in enumerate(pairs)}

    def frame_bucket(self, resolution: str, num_frames: int) -> FrameBucket:
        for res, frames in self.resolutions:
            if res == resolution:
                for fb in frames:
                    if fb.num_frames == num_frames:
                        return fb
        raise KeyError((resolution, num_frames))

    def batch_size(self, resolution: str, num_frames: int) -> int:
        """The batch size of a bucket that clips can be assigned to (never a disabled entry)."""
        batch_size = self.frame_bucket(resolution, num_frames).batch_size
        assert batch_size is not None, f"disabled bucket {resolution}/{num_frames} has no batch size"
        return batch_size

    def assign(self, num_frames: int, height: int, width: int, seed: int, clip_index: int = 0,
               frame_interval: int = 1) -> Assignment | None:
        """The bucket of one clip of ``num_frames × height × width`` (1 frame for an image), or None if dropped.

        ``seed`` plays v1.2's ``sampler seed + epoch``; ``clip_index`` is the clip's row in the dataset. See the module
        docstring for the rules and the random draws.
        """
        ids = self.bucket_ids()
        base = seed + clip_index * self.num_buckets
        pixels = height * width
        for res, frames in self.resolutions:
            if pixels < self.tables[res][0] * MIN_PIXEL_FRACTION:
                continue
            chosen = self._pick_frames(res, frames, num_frames, frame_interval, base, ids)
            if chosen is not None:
                table = self.tables[res][1]
                ratio = closest_aspect_ratio(height, width, table)
                return Assignment(res, chosen, ratio, table[ratio])
        return None

    @staticmethod
    def _pick_frames(res: str, frames: tuple[FrameBucket, ...], num_frames: int, frame_interval: int, base: int,
                     ids: dict[tuple[str, int], int]) -> int | None:
        """The frame bucket a clip takes at resolution ``res``, or None to move on to the next resolution."""
        if num_frames == 1:
            image = next((fb for fb in frames if fb.num_frames == 1), None)
            if image is None:
                return None
            # v1.2 compares against the bare keep probability; with the pair form it would compare a float to a
            # tuple and crash, so here the pair's first element (keep_prob) is used.
            if np.random.default_rng(base + ids[(res, 1)]).random() < image.keep_prob:
                return 1
            return None  # v1.2 then runs the video search, which never matches a 1-frame clip
        for fb in frames:
            rng = np.random.default_rng(base + ids[(res, fb.num_frames)])
            if fb.frame_keep_prob is not None and rng.random() > fb.frame_keep_prob:
                continue
            if num_frames > fb.num_frames * frame_interval and fb.num_frames != 1:
                # the same generator makes the resolution draw (its second draw in the pair form)
                if fb.keep_prob >= 1 or rng.random() < fb.keep_prob:
                    return fb.num_frames
                return None
        return None

    def describe(self, counts: Mapping[tuple[str, int, str], int] | None = None) -> str:
        """A text table of the configured buckets; with ``counts`` (clips per bucket key) also clips and batches."""
        lines = [f"{'resolution':>10} {'frames':>6} {'keep':>11} {'batch':>5}" +
                 ("" if counts is None else f" {'aspect':>6} {'h x w':>11} {'clips':>7} {'batches':>7}")]
        for res, frames in self.resolutions:
            for fb in frames:
                keep = f"{fb.keep_prob:g}" + ("" if fb.frame_keep_prob is None else f"/{fb.frame_keep_prob:g}")
                head = f"{res:>10} {fb.num_frames:>6} {keep:>11} {fb.batch_size if fb.batch_size else '-':>5}"
                if counts is None:
                    lines.append(head)
                    continue
                for ratio, (h, w) in self.tables[res][1].items():
                    n = counts.get((res, fb.num_frames, ratio), 0)
                    if n:
                        batches = n // fb.batch_size if fb.batch_size else 0
                        note = "" if batches else "  dropped: fewer clips than one batch"
                        lines.append(f"{head} {ratio:>6} {f'{h}x{w}':>11} {n:>7} {batches:>7}{note}")
        return "\n".join(lines)


def crop_to_bucket(clip: np.ndarray, assignment: Assignment, frame_interval: int = 1, start: int = 0) -> np.ndarray:
    """Cut a clip to its bucket: ``num_frames`` frames every ``frame_interval`` from ``start``, then resize-crop.

    Args:
        clip: uint8 ``[T, H, W, 3]`` with ``T > (num_frames - 1) · frame_interval + start`` (an image: ``T == 1``).
    Returns:
        uint8 ``[num_frames, target_h, target_w, 3]``: short side resized, centre-cropped (``video_io.resize_clip``).
    """
    last = start + (assignment.num_frames - 1) * frame_interval
    if last >= clip.shape[0]:
        raise ValueError(f"a clip of {clip.shape[0]} frames cannot fill bucket {assignment.bucket} from frame {start} "
                         f"with frame interval {frame_interval}")
    frames = clip[start : last + 1 : frame_interval]
    return resize_clip(frames, *assignment.size)


class Batch(NamedTuple):
    """One batch: this process's rows of a global batch drawn from a single bucket."""

    bucket: tuple[str, int, str]  # (resolution, num_frames, aspect_ratio)
    size: tuple[int, int]  # (target_h, target_w)
    indices: np.ndarray  # int64 [batch_size / num_processes]: clip rows in the dataset


class DroppedBucket(NamedTuple):
    """A bucket with fewer clips than one batch: it yields no batch (reported, never silently)."""

    bucket: tuple[str, int, str]
    num_clips: int
    batch_size: int


class BucketSampler:
    """Global batches, each from one bucket at that bucket's batch size, in a seeded epoch-dependent order.

    Each epoch: the clips of every bucket are shuffled (``default_rng([seed, epoch, bucket number])``) and cut into
    full batches of the bucket's batch size (the remainder waits for another epoch's shuffle); the batches of all
    buckets are then shuffled together (``default_rng([seed, epoch])``). The batch size is the GLOBAL batch: with
    ``num_processes`` P, process p gets rows ``[p·b/P, (p+1)·b/P)`` of every batch, so the processes see the same
    bucket at every step and never share a clip. (Open-Sora's sizes are per GPU; multiply by the data-parallel size.)

    The position is a small state dict (:meth:`state_dict` / :meth:`load_state_dict`): ``{"epoch", "position"}``,
    the next batch to yield; restoring it resumes with the identical batches.

    Args:
        assignments: per clip (dataset row), its :class:`Assignment` or None if dropped.
        config: the parsed bucket table (batch sizes).
        seed: shuffling seed.
        num_processes / process_index: the data-parallel split.
    """

    def __init__(self, assignments: Sequence[Assignment | None], config: BucketConfig, seed: int = 0,
                 num_processes: int = 1, process_index: int = 0):
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is outside [0, {num_processes})")
        self.config, self.seed = config, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.epoch, self.position = 0, 0
        members: dict[tuple[str, int, str], list[int]] = {}
        self.sizes: dict[tuple[str, int, str], tuple[int, int]] = {}
        for row, a in enumerate(assignments):
            if a is not None:
                members.setdefault(a.bucket, []).append(row)
                self.sizes[a.bucket] = a.size
        self.num_unassigned = sum(a is None for a in assignments)
        order = {key: i for i, key in enumerate(self._all_keys())}
        self.buckets = {key: np.asarray(members[key], dtype=np.int64) for key in sorted(members, key=order.__getitem__)}
        #: clips per bucket key, in config order.
        self.counts = {key: len(rows) for key, rows in self.buckets.items()}
        self.dropped: list[DroppedBucket] = []
        self.batch_sizes: dict[tuple[str, int, str], int] = {}
        for key, rows in self.buckets.items():
            b = config.batch_size(key[0], key[1])
            if b % num_processes:
                raise ConfigError(f"bucket_config[{key[0]!r}][{key[1]}]: batch size {b} is not a multiple of the "
                                  f"{num_processes} processes")
            self.batch_sizes[key] = b
            if len(rows) < b:
                self.dropped.append(DroppedBucket(key, len(rows), b))
        for d in self.dropped:
            log.warning("bucket %s dropped: %d clips, fewer than its batch size %d", "/".join(map(str, d.bucket)),
                        d.num_clips, d.batch_size)
        self.batches_per_epoch = sum(len(rows) // self.batch_sizes[key] for key, rows in self.buckets.items())
        if self.batches_per_epoch == 0:
            raise ConfigError(f"bucket_config: no bucket has enough clips for one batch ({len(assignments)} clips, "
                              f"{self.num_unassigned} unassigned, buckets {self.counts})")
        self._plan: tuple[int, list[tuple[tuple[str, int, str], np.ndarray]]] | None = None

    def _all_keys(self) -> list[tuple[str, int, str]]:
        return [(res, fb.num_frames, ratio) for res, frames in self.config.resolutions for fb in frames
                for ratio in self.config.tables[res][1]]

    def global_batches(self, epoch: int) -> list[tuple[tuple[str, int, str], np.ndarray]]:
        """Every global batch of ``epoch`` in order: (bucket key, int64 [batch_size] clip rows)."""
        batches = []
        for number, (key, rows) in enumerate(self.buckets.items()):
            b = self.batch_sizes[key]
            shuffled = np.random.default_rng([self.seed, epoch, number]).permutation(rows)
            batches += [(key, shuffled[i * b : (i + 1) * b]) for i in range(len(rows) // b)]
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(batches))
        return [batches[i] for i in perm]

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        """The next batch (endless: epoch after epoch); the state then points past it."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self.global_batches(self.epoch))
        key, rows = self._plan[1][self.position]
        self.position += 1
        share = len(rows) // self.num_processes
        mine = rows[self.process_index * share : (self.process_index + 1) * share]
        return Batch(key, self.sizes[key], mine)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"sampler state {dict(state)} is outside this dataset's {self.batches_per_epoch} "
                             f"batches per epoch")
        self.epoch, self.position = epoch, position

    def describe(self) -> str:
        """The bucket table with clips and batches per epoch, the dropped buckets and the unassigned clips."""
        text = self.config.describe(self.counts)
        total = sum(self.counts.values())
        return (f"{text}\n{total} clips in {len(self.counts)} buckets, {self.num_unassigned} unassigned, "
                f"{len(self.dropped)} buckets dropped, {self.batches_per_epoch} batches per epoch")


def assign_all(config: BucketConfig, shapes: Sequence[tuple[int, int, int]], seed: int,
               frame_interval: int = 1) -> list[Assignment | None]:
    """:meth:`BucketConfig.assign` for clips ``(num_frames, height, width)``, the row number as the clip index."""
    return [config.assign(t, h, w, seed, clip_index=i, frame_interval=frame_interval)
            for i, (t, h, w) in enumerate(shapes)]
