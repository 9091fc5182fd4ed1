"""Reading and writing video files with PyAV (H.264 mp4), plus PNG frame grids.

Clips are uint8 arrays ``[T, H, W, 3]`` (RGB) everywhere in vidjax.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidjax.errors import InputError


class VideoReadError(InputError):
    """A video file is missing, unreadable or empty."""


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, crf: int = 12) -> None:
    """Write ``frames: [T, H, W, 3] uint8`` as H.264 mp4 (odd sizes are padded to even by edge copy).

    The file is written to a temporary name and renamed, so a killed writer leaves no half file.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video expects [T, H, W, 3] frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
    T, H, W, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, scale: int = 1) -> None:
    """Write ``frames: [T, H, W, 3] uint8`` as a looping animated GIF (``scale`` times larger, nearest); atomic."""
    frames = np.asarray(frames, np.uint8)
    images = [Image.fromarray(f) for f in frames]
    if scale > 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   optimize=False)
    os.replace(tmp, path)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file to ``[T, H, W, 3] uint8``; raises :class:`VideoReadError`."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: video file not found")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise VideoReadError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoReadError(f"{path}: video has no frames")
    return np.stack(frames)


def frame_grid(clips: np.ndarray, max_frames: int = 16, pad: int = 2) -> np.ndarray:
    """Tile clips ``[N, T, H, W, 3]`` into one image: a row per clip, a column per frame."""
    clips = np.asarray(clips)[:, :max_frames]
    N, T, H, W, _ = clips.shape
    grid = np.full((N * (H + pad) + pad, T * (W + pad) + pad, 3), 255, np.uint8)
    for i in range(N):
        for j in range(T):
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            grid[y : y + H, x : x + W] = clips[i, j]
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray, scale: int = 1) -> None:
    img = Image.fromarray(np.asarray(image, np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def resize_clip(clip: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the short side and center-crop each frame to ``height × width`` (Open-Sora's transform)."""
    T, H, W, _ = clip.shape
    if (H, W) == (height, width):
        return clip
    s = max(height / H, width / W)
    nh, nw = max(height, round(H * s)), max(width, round(W * s))
    top, left = (nh - height) // 2, (nw - width) // 2
    out = [np.asarray(Image.fromarray(f).resize((nw, nh), Image.BICUBIC))[top : top + height, left : left + width]
           for f in clip]
    return np.stack(out)
