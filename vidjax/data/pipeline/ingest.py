"""``ingest``: caption file + video folder -> one table of clips with their stream info.

Caption layouts (file paths are relative to ``video_root``, default the caption file's folder):
  * MSR-VTT JSON: ``{"videos": [{"video_id": "video0", ...}], "sentences": [{"video_id", "caption"}]}``;
    video ``video0`` is the file ``video0.mp4``.
  * vidjax JSON / JSONL: ``[{"file": "a.mp4", "captions": [...]}]`` (:mod:`vidjax.data.captions`).
  * CSV or Parquet with a header: a path column (``path``, ``file``, ``video``, ``videoid``,
    ``video_id``, ``filename``) and a caption column (``text``, ``caption``, ``name``, ``sentence``).
    Open-Sora's ``path,text,num_frames,...`` and WebVid's ``videoid,name,page_dir,...`` (file
    ``page_dir/videoid.mp4``) both match; other columns (``aes``, ``flow``, ...) are kept.
  * CSV without a header: ``path,caption[,...]`` (Open-Sora v1.0).

Every caption is one row: a video with several captions fans out into several rows. The output
table has ``path, text, num_frames, fps, height, width, aspect_ratio, duration`` (info read with
PyAV, every frame decoded once). Unreadable caption entries and bad videos go to the rejects
table; the number of caption entries equals output rows plus rejects.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

from vidjax.data.captions import CaptionFileError, _record
from vidjax.data.pipeline.table import REJECT_COLUMNS, Row, fingerprint, map_rows, reject_row, typed_value, write_table
from vidjax.data.pipeline.video import probe_video
from vidjax.errors import InputError, MissingFileError

STEP = "ingest"
PATH_COLUMNS = ("path", "file", "video", "videoid", "video_id", "filename")
TEXT_COLUMNS = ("text", "caption", "name", "sentence", "captions")
INFO_COLUMNS = ("num_frames", "fps", "height", "width", "aspect_ratio", "duration")
OUT_COLUMNS = ("path", "text", *INFO_COLUMNS)


def _video_path(root: Path, name: str, subdir: str | None = None) -> str:
    p = Path(name)
    if not p.suffix:
        p = p.with_suffix(".mp4")
    if subdir:
        p = Path(subdir) / p
    return str(p if p.is_absolute() else root / p)


def _msrvtt(data: dict, src: Path, root: Path) -> tuple[list[Row], list[Row]]:
    rows, bad = [], []
    for i, s in enumerate(data.get("sentences", [])):
        vid, cap = (s.get("video_id"), s.get("caption")) if isinstance(s, dict) else (None, None)
        if not isinstance(vid, str) or not vid or not isinstance(cap, str) or not cap.strip():
            bad.append(reject_row(f"{src}:sentences[{i}]", STEP, "expected 'video_id' and 'caption' strings"))
            continue
        rows.append({"path": _video_path(root, vid), "text": cap.strip()})
    return rows, bad


def _objects(objs: list, src: Path, root: Path, where) -> tuple[list[Row], list[Row]]:
    rows, bad = [], []
    for i, obj in enumerate(objs):
        try:
            if not isinstance(obj, dict):
                raise CaptionFileError(f"expected an object with 'file' and 'captions', got {type(obj).__name__}")
            rec = _record(obj, where(i), root)
        except CaptionFileError as e:
            bad.append(reject_row(where(i), STEP, str(e)))
            continue
        extra = {k: v for k, v in obj.items()
                 if k not in ("file", "path", "captions", "text", "caption") and isinstance(v, (int, float, str))}
        rows += [{"path": str(rec.path), "text": c, **extra} for c in rec.captions]
    return rows, bad


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    return next((lower[n] for n in names if n in lower), None)


def _table_rows(records: list[tuple[str, dict | list]], header: list[str] | None, src: Path,
                root: Path) -> tuple[list[Row], list[Row]]:
    """Rows of a CSV / Parquet caption table; ``records`` are (where, dict row or raw list row)."""
    rows, bad = [], []
    pcol = tcol = None
    if header is not None:
        pcol, tcol = _pick(header, PATH_COLUMNS), _pick(header, TEXT_COLUMNS)
        if pcol is None or tcol is None:
            raise InputError(f"{src}: expected a path column (one of {', '.join(PATH_COLUMNS)}) and a caption "
                             f"column (one of {', '.join(TEXT_COLUMNS)}); got {header}")
    subdir = _pick(header, ("page_dir",)) if header is not None else None
    for where, rec in records:
        if isinstance(rec, list):  # headerless CSV: path, caption, ...
            if len(rec) < 2 or not rec[0].strip() or not rec[1].strip():
                bad.append(reject_row(where, STEP, f"unreadable CSV row: expected 'path,caption', got {rec}"))
                continue
            rows.append({"path": _video_path(root, rec[0].strip()), "text": rec[1].strip()})
            continue
        path, text = rec.get(pcol), rec.get(tcol)
        if not isinstance(path, str) or not path.strip() or not isinstance(text, str) or not text.strip():
            bad.append(reject_row(where, STEP, f"unreadable row: expected '{pcol}' and '{tcol}' values"))
            continue
        extra = {k: typed_value(k, v) if isinstance(v, str) else v for k, v in rec.items()
                 if k not in (pcol, tcol, subdir, *INFO_COLUMNS) and v not in (None, "")}
        sub = rec.get(subdir) if subdir else None
        rows.append({"path": _video_path(root, path.strip(), sub), "text": text.strip(), **extra})
    return rows, bad


def parse_captions(path: str | os.PathLike, video_root: str | os.PathLike | None = None) -> tuple[list[Row], list[Row]]:
    """Caption entries of ``path`` as ``(rows {path, text, ...}, rejects {path, step, reason})``.

    A malformed entry (a CSV row with too few fields, an object without a file or caption) is a
    reject; a file that cannot be parsed at all raises :class:`~vidjax.errors.InputError`.
    """
    src = Path(path)
    if not src.is_file():
        raise MissingFileError(f"{src}: caption file not found")
    root = Path(video_root) if video_root is not None else src.parent
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(src)
        return _table_rows([(f"{src}:row{i + 1}", r) for i, r in enumerate(table.to_pylist())],
                           table.column_names, src, root)
    text = src.read_text(encoding="utf-8", errors="replace")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{src}: invalid JSON at line {e.lineno} ({e.msg})") from None
        if isinstance(data, dict) and "sentences" in data:
            return _msrvtt(data, src, root)
        if not isinstance(data, list):
            raise InputError(f"{src}: expected an MSR-VTT object with 'sentences' or a list of "
                             "{'file', 'captions'} objects")
        return _objects(data, src, root, lambda i: f"{src}[{i}]")
    if suffix == ".jsonl":
        objs, bad, wheres = [], [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                objs.append(json.loads(line))
                wheres.append(f"{src}:{n}")
            except json.JSONDecodeError as e:
                bad.append(reject_row(f"{src}:{n}", STEP, f"invalid JSON ({e.msg})"))
        rows, bad2 = _objects(objs, src, root, lambda i: wheres[i])
        return rows, bad + bad2
    if suffix in (".csv", ".tsv"):
        lines = list(csv.reader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        lines = [(n, r) for n, r in enumerate(lines, 1) if any(c.strip() for c in r)]
        if not lines:
            raise InputError(f"{src}: empty caption table")
        first = [c.strip().lower() for c in lines[0][1]]
        if any(c in PATH_COLUMNS for c in first) and any(c in TEXT_COLUMNS for c in first):
            header = lines[0][1]
            records, bad = [], []
            for n, r in lines[1:]:
                if len(r) != len(header):
                    bad.append(reject_row(f"{src}:{n}", STEP,
                                          f"unreadable CSV row: {len(r)} fields, the header has {len(header)}"))
                else:
                    records.append((f"{src}:{n}", dict(zip(header, r, strict=True))))
            rows, bad2 = _table_rows(records, header, src, root)
            return rows, bad + bad2
        return _table_rows([(f"{src}:{n}", r) for n, r in lines], None, src, root)
    raise InputError(f"{src}: unknown caption format {suffix!r}; expected .json, .jsonl, .csv, .tsv or .parquet")


def _probe(row: Row, verify: bool = True) -> list[Row]:
    return [probe_video(row["path"], verify=verify)]


def ingest(captions: str | os.PathLike, out: str | os.PathLike, *, video_root: str | os.PathLike | None = None,
           rejects: str | os.PathLike | None = None, workers: int = 1, verify: bool = True,
           progress: bool = True) -> tuple[list[Row], list[Row]]:
    """Caption file + videos -> table ``out`` (``path, text, num_frames, fps, height, width, aspect_ratio,
    duration`` and any extra caption columns) and its rejects table. Returns (rows, rejects).

    Each distinct video is probed once (in ``workers`` processes; resumable through ``<out>.journal.jsonl``).
    """
    from vidjax.data.pipeline.table import rejects_path

    rows, bad = parse_captions(captions, video_root)
    videos = list(dict.fromkeys(r["path"] for r in rows))
    vrows = [{"path": v} for v in videos]
    out = Path(out)
    journal = out.with_name(out.name + ".journal.jsonl")
    results = map_rows(STEP, vrows, functools.partial(_probe, verify=verify), journal,
                       key=fingerprint(STEP, vrows, verify), workers=workers, progress=progress)
    info = dict(zip(videos, results, strict=True))
    kept = []
    for r in rows:
        res, why = info[r["path"]]
        if why is not None:
            bad.append(reject_row(r["path"], STEP, why))
        else:
            kept.append({**r, **res[0]})
    write_table(out, kept, OUT_COLUMNS)
    write_table(rejects if rejects is not None else rejects_path(out), bad, REJECT_COLUMNS)
    return kept, bad
