"""``caption``: caption clips with a vision-language model (frames in, text out).

A :class:`Captioner` takes a batch of clips (each uint8 ``[N, H, W, 3]``: ``frames`` frames sampled evenly
over the clip) and returns one caption per clip. :class:`TransformersCaptioner` runs a local
``transformers`` image-text-to-text model directory (LLaVA, LLaVA-NeXT, Qwen2-VL, ...; Open-Sora used
LLaVA-1.6 on 3 frames and PLLaVA on 4): the N frames of a clip go in as N images of one prompt, and
clips are batched into one left-padded ``generate`` call. With ``append_scores`` the caption gets Open-Sora
v1.2's score suffix ``" aesthetic score: 5.3. motion score: 2.1."`` from the ``aes`` and ``flow`` columns.

The step is resumable per batch (journal ``<out>.journal.jsonl``); the model runs in this process.
A clip whose frames do not decode is a reject. The previous caption is kept as ``orig_text``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from vidjax.data.pipeline.table import (
    REJECT_COLUMNS,
    Reject,
    Row,
    fingerprint,
    map_rows,
    read_table,
    reject_row,
    rejects_path,
    write_table,
)
from vidjax.data.pipeline.video import clip_range, read_frames, sample_indices
from vidjax.errors import ConfigError, MissingFileError

STEP = "caption"
DEFAULT_PROMPT = "Describe this video in detail."


class Captioner(Protocol):
    """Frames in, text out: ``clips`` is a list of uint8 ``[N, H, W, 3]`` arrays; returns one caption each."""

    name: str

    def __call__(self, clips: Sequence[np.ndarray]) -> list[str]: ...


class TransformersCaptioner:
    """A local ``transformers`` vision-language model (``AutoProcessor`` + ``AutoModelForImageTextToText``)."""

    def __init__(self, model_dir: str | os.PathLike, *, prompt: str | None = None, max_new_tokens: int = 64,
                 dtype: str = "float32"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise MissingFileError(f"captioner model: {path}/config.json not found (expected a local model directory)")
        self.name = str(path)
        self.prompt = prompt or DEFAULT_PROMPT
        self.max_new_tokens = max_new_tokens
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues after the prompt
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).eval()

    def _text(self, n_frames: int) -> str:
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"}] * n_frames + [{"type": "text", "text": self.prompt}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True)
        image = getattr(self.processor, "image_token", "<image>")
        return f"USER: {image * n_frames}\n{self.prompt} ASSISTANT:"

    def __call__(self, clips: Sequence[np.ndarray]) -> list[str]:
        import torch

        texts = [self._text(len(c)) for c in clips]
        images = [f for c in clips for f in c]
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


def append_scores(text: str, row: Row) -> str:
    """Open-Sora v1.2's suffix: ``"<text> aesthetic score: 5.3. motion score: 2.1."`` for the columns present."""
    if row.get("aes") is not None and "aesthetic score:" not in text:
        text = f"{text} aesthetic score: {float(row['aes']):.1f}."
    if row.get("flow") is not None and "motion score:" not in text:
        text = f"{text} motion score: {float(row['flow']):.1f}."
    return text


def _caption_batch(batch: Row, captioner: Captioner, frames: int, add_scores: bool) -> list[Row]:
    rows, clips, bad = batch["rows"], [], []
    for r in rows:
        try:
            start, end = clip_range(r)
            clips.append(read_frames(r["path"], sample_indices(start, end, min(frames, end - start))))
        except Reject as e:
            clips.append(None)
            bad.append(str(e))
    texts = iter(captioner([c for c in clips if c is not None]) if any(c is not None for c in clips) else [])
    reasons = iter(bad)
    out = []
    for r, c in zip(rows, clips, strict=True):
        if c is None:
            out.append({"_reject": next(reasons), "path": r.get("path", "")})
            continue
        text = next(texts)
        out.append({**r, "text": append_scores(text, r) if add_scores else text, "orig_text": r.get("text")})
    return out


def caption(table: str | os.PathLike, out: str | os.PathLike, captioner: Captioner, *, frames: int = 4,
            batch_size: int = 4, append_scores: bool = False, rejects: str | os.PathLike | None = None,
            progress: bool = True) -> tuple[list[Row], list[Row]]:
    """Caption every row of ``table`` with ``captioner`` (``frames`` frames per clip, ``batch_size`` clips per
    call) into ``out``. Returns (rows, rejects)."""
    if frames < 1 or batch_size < 1:
        raise ConfigError(f"caption: frames ({frames}) and batch_size ({batch_size}) must be >= 1")
    rows = read_table(table)
    batches = [{"rows": rows[i:i + batch_size]} for i in range(0, len(rows), batch_size)]
    out = Path(out)
    key = fingerprint(STEP, rows, getattr(captioner, "name", type(captioner).__name__), frames, batch_size,
                      append_scores, getattr(captioner, "prompt", None))
    fn = functools.partial(_caption_batch, captioner=captioner, frames=frames, add_scores=append_scores)
    results = map_rows(STEP, batches, fn, out.with_name(out.name + ".journal.jsonl"), key=key, workers=1,
                       progress=progress)
    kept, bad = [], []
    for res, _ in results:
        for r in res:
            if "_reject" in r:
                bad.append(reject_row(r["path"], STEP, r["_reject"]))
            else:
                kept.append(r)
    write_table(out, kept, ("path", "text"))
    write_table(rejects if rejects is not None else rejects_path(out), bad, REJECT_COLUMNS)
    return kept, bad
