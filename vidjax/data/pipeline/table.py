"""Tables (CSV or Parquet) and the resumable, parallel row runner every pipeline step uses.

A table is a list of row dicts. Known columns get their types back when a CSV is read
(:data:`INT_COLUMNS`, :data:`FLOAT_COLUMNS`); every other column stays text.

:func:`map_rows` applies a step function ``fn(row) -> list[row]`` to every input row in worker
processes, with a progress bar. ``fn`` raises :class:`Reject` for a bad item (that row goes to the
rejects table with the reason); any other exception is a bug and stops the run with its traceback.
Every finished row is appended to a journal (``<out>.journal.jsonl``), so a killed step rerun
with the same input and settings redoes only the unfinished rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vidjax.errors import InputError, MissingFileError

INT_COLUMNS = ("num_frames", "height", "width", "start", "end", "scene", "bucket_frames", "bucket_height",
               "bucket_width", "ocr", "text_len")
FLOAT_COLUMNS = ("fps", "aspect_ratio", "duration", "aes", "flow", "motion", "blur", "brightness", "match")
REJECT_COLUMNS = ("path", "step", "reason")

Row = dict[str, Any]


class Reject(Exception):  # noqa: N818  (a verdict on one item, not an error of the run)
    """Raised by a step function for a bad item: the row goes to the rejects table with this reason."""


def typed_value(col: str, value: str) -> Any:
    """A CSV cell as its column's type (:data:`INT_COLUMNS`, :data:`FLOAT_COLUMNS`); other columns stay text."""
    if value == "":
        return None
    try:
        if col in INT_COLUMNS:
            return int(float(value))
        if col in FLOAT_COLUMNS:
            return float(value)
    except ValueError:
        return value
    return value


def read_table(path: str | os.PathLike) -> list[Row]:
    """Read a ``.csv`` (with a header) or ``.parquet`` table into row dicts."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: table not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix != ".csv":
        raise InputError(f"{path}: unknown table format {path.suffix!r}; expected .csv or .parquet")
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: typed_value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def columns_of(rows: Iterable[Row], first: Iterable[str] = ()) -> list[str]:
    """Union of the rows' keys in first-seen order (``first`` leading)."""
    cols = dict.fromkeys(first)
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def write_table(path: str | os.PathLike, rows: list[Row], columns: Iterable[str] = ()) -> Path:
    """Write rows as ``.csv`` or ``.parquet`` (by suffix), atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns_of(rows, columns)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = None if rows else pa.schema([(c, pa.string()) for c in cols])
        table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=schema)
        pq.write_table(table, tmp)
    elif path.suffix == ".csv":
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    else:
        raise InputError(f"{path}: unknown table format {path.suffix!r}; expected .csv or .parquet")
    os.replace(tmp, path)
    return path


def rejects_path(out: str | os.PathLike) -> Path:
    """Default rejects table next to ``out``: ``clips.csv`` -> ``clips_rejects.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_rejects{out.suffix}")


def reject_row(path: Any, step: str, reason: str) -> Row:
    return {"path": str(path), "step": step, "reason": " ".join(str(reason).split())}


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (input rows and step settings): the journal's identity."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _clean(value: Any) -> Any:
    """JSON-safe scalar (numpy numbers -> Python; NaN -> None)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _call(fn: Callable[[Row], list[Row]], i: int, row: Row) -> tuple[int, list[Row] | None, str | None]:
    try:
        out = fn(row)
    except Reject as e:
        return i, None, str(e)
    return i, [{k: _clean(v) for k, v in r.items()} for r in out], None


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool for the steps. Workers fork from a forkserver that imported the pipeline once (no JAX
    threads are forked, and flax is not re-imported per worker as with spawn). A worker that dies (a decoder
    crash) stops the step with ``BrokenProcessPool`` instead of hanging it; rerunning resumes."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vidjax.data.pipeline.table", "vidjax.data.pipeline.video", "cv2"])
    return ProcessPoolExecutor(workers, mp_context=ctx)


def _read_journal(journal: Path, key: str) -> dict[int, tuple[list[Row] | None, str | None]]:
    done: dict[int, tuple[list[Row] | None, str | None]] = {}
    if not journal.is_file():
        return done
    lines = journal.read_text(encoding="utf-8").splitlines()
    if not lines or json.loads(lines[0]).get("key") != key:
        return done  # another input or other settings: start over
    for line in lines[1:]:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue  # blank, or the last line of a killed run, cut short
        done[e["i"]] = (e["rows"], e["reject"])
    return done


def map_rows(step: str, rows: list[Row], fn: Callable[[Row], list[Row]], journal: str | os.PathLike, *,
             key: str, workers: int = 1, progress: bool = True) -> list[tuple[list[Row] | None, str | None]]:
    """Run ``fn`` on every row (in ``workers`` processes), resumable through ``journal``.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one) when
    ``workers > 1``. Returns, per input row in input order, ``(output rows, None)`` or ``(None, reason)``.
    ``key`` identifies the input and settings: a journal written under another key is discarded.
    """
    journal = Path(journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    done = _read_journal(journal, key)
    todo = [(fn, i, r) for i, r in enumerate(rows) if i not in done]
    mode = "a" if done else "w"
    with open(journal, mode, encoding="utf-8") as jf:
        if mode == "w":
            jf.write(json.dumps({"key": key, "step": step}) + "\n")
        else:  # drop a possibly cut-short last line by ending it
            jf.write("\n")
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=step, unit="row", disable=not progress)
        if workers > 1 and len(todo) > 1:
            with worker_pool(min(workers, len(todo))) as pool:
                for fut in as_completed([pool.submit(_call, *args) for args in todo]):
                    i, out, why = fut.result()
                    done[i] = (out, why)
                    jf.write(json.dumps({"i": i, "rows": out, "reject": why}) + "\n")
                    jf.flush()
                    bar.update()
        else:
            for args in todo:
                i, out, why = _call(*args)
                done[i] = (out, why)
                jf.write(json.dumps({"i": i, "rows": out, "reject": why}) + "\n")
                jf.flush()
                bar.update()
        bar.close()
    return [done[i] for i in range(len(rows))]


def run_step(step: str, rows: list[Row], fn: Callable[[Row], list[Row]], out: str | os.PathLike, *,
             settings: Any = None, rejects: str | os.PathLike | None = None, workers: int = 1,
             progress: bool = True, columns: Iterable[str] = ()) -> tuple[list[Row], list[Row]]:
    """Map ``fn`` over ``rows`` and write the output table ``out`` and its rejects table.

    Returns (output rows, reject rows ``{path, step, reason}``). Rerunning with the same rows and
    ``settings`` skips the rows the journal ``<out>.journal.jsonl`` already holds.
    """
    out = Path(out)
    results = map_rows(step, rows, fn, out.with_name(out.name + ".journal.jsonl"),
                       key=fingerprint(step, rows, settings), workers=workers, progress=progress)
    kept, bad = [], []
    for row, (res, why) in zip(rows, results, strict=True):
        if why is not None:
            bad.append(reject_row(row.get("path", ""), step, why))
        else:
            kept.extend(res)
    write_table(out, kept, columns)
    write_table(rejects if rejects is not None else rejects_path(out), bad, REJECT_COLUMNS)
    return kept, bad
