"""``scenecut``: split each video into single-shot clips with PySceneDetect (PyAV backend).

Detectors: ``content`` (``ContentDetector``, HSV + edge change between frames, default threshold 27)
or ``adaptive`` (``AdaptiveDetector``, the change relative to its neighbours; Open-Sora v1.1's choice
with ``adaptive_threshold=3.0``). Each input row becomes one row per scene with ``start, end``
(frame indices, ``[start, end)``), ``num_frames``, ``duration`` and ``scene`` (its number). Later steps
decode that range directly (no re-encoding). With ``cut_dir`` each scene is written as its own mp4
instead, and its row points at that file.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

from vidjax.data.pipeline.table import Reject, Row, read_table, run_step
from vidjax.data.pipeline.video import clip_range, read_frames
from vidjax.errors import ConfigError

STEP = "scenecut"
DETECTORS = ("content", "adaptive")


def detect_scenes(path: str | os.PathLike, detector: str = "adaptive", threshold: float | None = None,
                  min_scene_len: int = 8) -> list[tuple[int, int]]:
    """Scenes of a video as frame ranges ``[(start, end), ...]`` covering every frame (one range if no cut)."""
    import av
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv
    from scenedetect.video_stream import VideoOpenFailure

    if detector == "content":
        det = ContentDetector(min_scene_len=min_scene_len, **({} if threshold is None else {"threshold": threshold}))
    elif detector == "adaptive":
        det = AdaptiveDetector(min_scene_len=min_scene_len,
                               **({} if threshold is None else {"adaptive_threshold": threshold}))
    else:
        raise ConfigError(f"scenecut detector {detector!r}: expected one of {', '.join(DETECTORS)}")
    try:
        # suppress_output: keep FFmpeg's log callback quiet (the default one prints every x264 summary)
        video = VideoStreamAv(str(path), suppress_output=True)
        manager = SceneManager()
        manager.add_detector(det)
        manager.detect_scenes(video, show_progress=False)
        scenes = [(a.frame_num, b.frame_num) for a, b in manager.get_scene_list()]
    except (av.error.FFmpegError, OSError, VideoOpenFailure) as e:
        raise Reject(f"scene detection failed ({type(e).__name__}: {e})") from None
    return scenes


def _scenecut(row: Row, detector: str, threshold: float | None, min_scene_len: int, min_frames: int,
              cut_dir: str | None) -> list[Row]:
    start, end = clip_range(row)
    scenes = detect_scenes(row["path"], detector, threshold, min_scene_len)
    if not scenes:
        scenes = [(0, int(row["num_frames"]))]
    fps = float(row["fps"])
    out = []
    for k, (a, b) in enumerate(scenes):
        a, b = max(a, start), min(b, end)
        if b - a < min_frames:
            continue
        r = {**row, "start": a, "end": b, "num_frames": b - a, "duration": (b - a) / fps, "scene": k}
        if cut_dir is not None:
            from vidjax.data.video_io import write_video

            clip_path = Path(cut_dir) / f"{Path(row['path']).stem}_{a:06d}_{b:06d}.mp4"
            if not clip_path.is_file():
                write_video(clip_path, read_frames(row["path"], range(a, b)),
                            fps=Fraction(fps).limit_denominator(1001))
            r.update(path=str(clip_path), start=None, end=None)
        out.append(r)
    if not out:
        raise Reject(f"no scene of at least {min_frames} frames")
    return out


def scenecut(table: str | os.PathLike, out: str | os.PathLike, *, detector: str = "adaptive",
             threshold: float | None = None, min_scene_len: int = 8, min_frames: int = 1,
             cut_dir: str | os.PathLike | None = None, rejects: str | os.PathLike | None = None, workers: int = 1,
             progress: bool = True) -> tuple[list[Row], list[Row]]:
    """Ingested table -> one row per scene (``start, end`` frames, or a cut file in ``cut_dir``).

    Scenes shorter than ``min_frames`` are dropped; a video with none left is a reject.
    """
    if detector not in DETECTORS:
        raise ConfigError(f"scenecut detector {detector!r}: expected one of {', '.join(DETECTORS)}")
    rows = read_table(table)
    cut = None if cut_dir is None else str(cut_dir)
    fn = functools.partial(_scenecut, detector=detector, threshold=threshold, min_scene_len=min_scene_len,
                           min_frames=min_frames, cut_dir=cut)
    settings = dict(detector=detector, threshold=threshold, min_scene_len=min_scene_len, min_frames=min_frames,
                    cut_dir=cut)
    return run_step(STEP, rows, fn, out, settings=settings, rejects=rejects, workers=workers, progress=progress)
