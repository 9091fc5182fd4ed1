"""Helpers shared by the training tests (imported as ``_helpers``; pytest puts tests/ on sys.path)."""

import json
from pathlib import Path


def quick(config, tmp_path, **over):
    """A config made CI-sized: no progress bar, data under ``tmp_path``, ``"section.key": value`` overrides."""
    config.progress = False
    config.data.root = str(Path(tmp_path) / "data")
    for k, v in over.items():
        sec, key = k.split(".")
        config[sec][key] = v
    return config


def losses(workdir) -> dict[int, float]:
    """step -> loss from a workdir's metrics.jsonl."""
    rows = [json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def tiny_t5_dir(out, captions, d_model: int = 32, seed: int = 0):
    """A Hugging Face T5 encoder directory (random tiny ``T5EncoderModel`` + a sentencepiece ``T5TokenizerFast``
    trained in-process on ``captions``), as a real T5 checkpoint folder is laid out. Returns ``out``."""
    import io
    import tempfile

    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    out = Path(out)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(captions) * 20), model_writer=buf, vocab_size=64,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    with tempfile.TemporaryDirectory() as src:
        (Path(src) / "spiece.model").write_bytes(buf.getvalue())
        T5TokenizerFast.from_pretrained(src, extra_ids=0).save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16)
    T5EncoderModel(cfg).eval().save_pretrained(str(out), safe_serialization=True)
    return out
