"""Caption files: JSON, JSONL or CSV tables that pair video files with captions.

Accepted formats (paths are relative to the caption file's folder, or to ``video_root``):
  * JSON:  ``[{"file": "a.mp4", "captions": ["...", ...]}, ...]``  (``"path"``/``"text"`` also work)
  * JSONL: one such object per line
  * CSV:   a header with ``path`` and ``text`` columns (Open-Sora), or no header: ``path,caption``
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


def load_captions(path: str | Path, video_root: str | Path | None = None, check_files: bool = True) -> list[Record]:
    """Parse a caption file into records. With ``check_files``, a missing video is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"{path}: caption file not found")
    base = Path(video_root) if video_root is not None else path.parent
    text = path.read_text()
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
        if rows and "path" in rows[0] and "text" in rows[0]:
            header, rows = rows[0], rows[1:]
            ip, it = header.index("path"), header.index("text")
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
