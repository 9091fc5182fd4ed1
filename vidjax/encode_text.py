"""Encode prompts offline: ``python -m vidjax.encode_text --encoder DIR --prompts file.txt --out emb.npz``.

``DIR`` is a Hugging Face T5 or CLIP-text checkpoint directory (``config.json`` + safetensors, and the
tokenizer files unless ``--tokenizer`` points elsewhere). The prompts file has one caption per line
(blank lines skipped). ``emb.npz`` holds ``y`` [N, L, C] float32, ``mask`` [N, L] bool, ``prompts`` [N],
``encoder_id``, and for CLIP ``pooled`` [N, C].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vidjax import cli
from vidjax.cli import check_writable


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m vidjax.encode_text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="HF checkpoint directory (T5 or CLIP text model)")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--kind", choices=("auto", "t5", "clip"), default="auto",
                   help="encoder family (default: from model_type in config.json)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --encoder)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per prompt (default: T5 120, CLIP 77)")
    p.add_argument("--clean", action=argparse.BooleanOptionalAction, default=None,
                   help="apply Open-Sora's clean_caption (default: on for T5, off for CLIP)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--cache-dir", default=None, help="reuse / store per-prompt embeddings here")
    return p, p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    _, a = parse_args(argv)
    from vidjax.models.text.conditioner import build_text_conditioner, model_kind
    from vidjax.sample import read_prompts

    prompts = read_prompts(a.prompts)
    check_writable(a.out, what="--out")
    kind = model_kind(a.encoder) if a.kind == "auto" else a.kind
    cond = build_text_conditioner(dict(encoder=kind, path=a.encoder, tokenizer_path=a.tokenizer,
                                       max_length=a.max_length, clean_caption=a.clean, dtype=a.dtype,
                                       batch_size=a.batch_size, cache_dir=a.cache_dir))
    y, mask, pooled = cond.encode(prompts)
    out = dict(y=np.asarray(y), mask=np.asarray(mask), prompts=np.array(prompts), encoder_id=np.array(cond.encoder_id))
    if pooled is not None:
        out["pooled"] = np.asarray(pooled)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(a.out, **out)
    print(f"{len(prompts)} prompts -> {a.out}: y {tuple(out['y'].shape)}"
          + (f", pooled {tuple(out['pooled'].shape)}" if pooled is not None else "") + f" ({cond.encoder_id})")
    return 0


if __name__ == "__main__":
    cli.run("vidjax.encode_text", main)
