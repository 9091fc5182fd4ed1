"""Caption files: JSON, JSONL or CSV tables that pair video files with captions.

Accepted formats (paths are relative to the caption file's folder, or to ``video_root``):
  * JSON:  ``[{"file": "a.mp4", "captions": ["...", ...]}, ...]``  (``"path"``/``"text"`` also work)
  * JSONL: one such object per line
  * CSV:   a header naming the video column (``path``, ``file`` or ``video``) and the caption column (``text``,
           ``caption`` or ``captions``), as Open-Sora's tables do; or no header: ``path,caption`` rows

A row naming a video that does not exist is kept: the loader's probe lists it with the reason and trains on
the rest (``load_captions(..., check_files=True)`` makes it an error instead).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from vidjax.errors import InputError


class CaptionFileError(InputError):
    """A caption file is malformed, or names videos that do not exist."""


@dataclasses.dataclass(frozen=True)
class Record:
    path: Path
    captions: tuple[str, ...]


def _record(obj: dict, where: str, base: Path) -> Record:
    file = obj.get("file", obj.get("path"))
    caps = obj.get("captions", obj.get("text", obj.get("caption")))
    if not isinstance(file, str) or not file:
        raise CaptionFileError(f"{where}: expected a 'file' (or 'path') string, got keys {sorted(obj)}")
    if isinstance(caps, str):
        caps = [caps]
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise CaptionFileError(f"{where}: expected 'captions' as a non-empty list of strings (or 'text' string)")
    return Record(base / file, tuple(caps))


PATH_COLUMNS, TEXT_COLUMNS = ("path", "file", "video"), ("text", "caption", "captions")


def _csv_columns(header: list[str]) -> tuple[int, int] | None:
    """(path column, caption column) when ``header`` is a header row, else None."""
    names = [h.strip().lower() for h in header]
    ip = next((names.index(c) for c in PATH_COLUMNS if c in names), None)
    it = next((names.index(c) for c in TEXT_COLUMNS if c in names), None)
    return None if ip is None or it is None else (ip, it)


def load_captions(path: str | Path, video_root: str | Path | None = None, check_files: bool = False) -> list[Record]:
    """Parse a caption file into records. With ``check_files``, a missing video is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"{path}: caption file not found")
    base = Path(video_root) if video_root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CaptionFileError(f"{path}: not UTF-8 text (byte {e.start}); save the caption file as UTF-8") from None
    records: list[Record] = []
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionFileError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                records.append(_record(obj, f"{path}:{n}", base))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CaptionFileError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
        if not isinstance(data, list):
            raise CaptionFileError(f"{path}: expected a JSON list of {{'file', 'captions'}} objects")
        records = [_record(o, f"{path}[{i}]", base) for i, o in enumerate(data)]
    elif suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        columns = _csv_columns(rows[0]) if rows else None
        if columns is not None:
            (ip, it), rows = columns, rows[1:]
        else:
            ip, it = 0, 1
        for n, row in enumerate(rows, 1):
            if len(row) <= max(ip, it):
                raise CaptionFileError(f"{path}: row {n}: expected path and caption columns, got {row}")
            records.append(Record(base / row[ip], (row[it],)))
    else:
        raise CaptionFileError(f"{path}: unknown caption format {suffix!r}; expected .json, .jsonl or .csv")
    if not records:
        raise CaptionFileError(f"{path}: no records")
    if check_files:
        for r in records:
            if not r.path.is_file():
                raise CaptionFileError(f"{path}: video {r.path} listed in the caption file does not exist")
    return records
