"""Video probing and windowed decoding with PyAV for the pipeline steps.

:func:`vidjax.data.video_io.read_video` decodes a whole file; the steps here need only a stream's
info, or a few frames of a long high-resolution video (a 1280x720 clip of 132 frames is 365 MB
decoded), so they decode frame by frame and keep only the frames they asked for.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

from vidjax.data.pipeline.table import Reject

Source = str | os.PathLike | bytes


def _open(src: Source):
    if isinstance(src, bytes):
        return av.open(io.BytesIO(src))
    path = Path(src)
    if not path.is_file():
        raise Reject(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise Reject("empty file (0 bytes)")
    return av.open(str(path))


def probe_video(src: Source, verify: bool = True) -> dict:
    """Stream info: ``num_frames, fps, height, width, aspect_ratio (= height / width), duration`` (seconds).

    With ``verify`` every frame is decoded (not converted), so ``num_frames`` is the count that really
    decodes and a truncated file is caught; without it the container's frame count is trusted.
    Raises :class:`Reject` for a missing, empty, undecodable or truncated file.
    """
    try:
        with _open(src) as container:
            if not container.streams.video:
                raise Reject("no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            declared = stream.frames
            width, height = stream.codec_context.width, stream.codec_context.height
            if verify:
                count = 0
                for frame in container.decode(video=0):
                    count += 1
                    width, height = frame.width, frame.height
            else:
                count = declared
    except av.error.FFmpegError as e:
        raise Reject(f"cannot decode ({type(e).__name__}: {e})") from None
    if count == 0:
        raise Reject("no decodable frames")
    if verify and declared and count < declared - 2:
        raise Reject(f"truncated: {count} of {declared} frames decode")
    if fps <= 0 or width <= 0 or height <= 0:
        raise Reject(f"invalid stream info (fps {fps}, size {width}x{height})")
    return dict(num_frames=count, fps=fps, height=height, width=width, aspect_ratio=height / width,
                duration=count / fps)


def read_frames(src: Source, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (ascending, repeats allowed): uint8 ``[len(indices), H, W, 3]``.

    Frames before the last wanted index are decoded but not converted; decoding stops there.
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        raise ValueError("read_frames needs at least one frame index")
    got: dict[int, np.ndarray] = {}
    n = -1
    try:
        with _open(src) as container:
            for n, frame in enumerate(container.decode(video=0)):
                if n in wanted:
                    got[n] = frame.to_ndarray(format="rgb24")
                if n >= wanted[-1]:
                    break
    except av.error.FFmpegError as e:
        raise Reject(f"cannot decode ({type(e).__name__}: {e})") from None
    missing = [i for i in wanted if i not in got]
    if missing:
        raise Reject(f"frame {missing[0]} does not decode (only {n + 1} frames do)")
    return np.stack([got[int(i)] for i in indices])


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly over ``[start, end)`` (first and last included when ``n >= 2``)."""
    if end - start <= 0:
        raise ValueError(f"empty frame range [{start}, {end})")
    if n == 1:
        return [(start + end - 1) // 2]
    return [int(round(x)) for x in np.linspace(start, end - 1, n)]


def clip_range(row: dict) -> tuple[int, int]:
    """The row's frame range ``[start, end)``: its scene cut if it has one, else the whole video."""
    start = row.get("start")
    end = row.get("end")
    start = 0 if start is None else int(start)
    end = int(row["num_frames"]) if end is None else int(end)
    return start, end
