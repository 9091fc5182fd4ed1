"""The shapes dataset, caption files, video IO and the grain loader."""

import json

import numpy as np
import pytest

from vidjax.data import shapes
from vidjax.data.captions import CaptionFileError, load_captions
from vidjax.data.loader import VideoSource, make_dataset, make_transform, probe_records
from vidjax.data.video_io import VideoReadError, read_video, resize_clip, write_video
from vidjax.errors import ConfigError
from vidjax.models.text.trainable import HashTokenizer


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes.generate(root, num_clips=24, frames=8, height=32, width=32, seed=3, progress=False)
    return root


def test_clips_are_deterministic_and_captioned():
    a, spec = shapes.make_clip(7, 5, 8, 32, 32)
    b, _ = shapes.make_clip(7, 5, 8, 32, 32)
    c, _ = shapes.make_clip(7, 6, 8, 32, 32)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert shapes.caption(spec.shape, spec.colour, spec.motion) == f"a {spec.colour} {spec.shape} moving {spec.motion}"


def test_held_out_pairs_never_in_training_split():
    seen = {(s, c) for s, c, _ in shapes.combos("train")}
    assert len(shapes.SHAPES) >= 3 and len(shapes.COLOURS) >= 4 and len(shapes.MOTIONS) >= 4
    assert seen.isdisjoint(shapes.HELD_OUT)
    for i in range(200):
        _, spec = shapes.make_clip(0, i, 4, 32, 32)
        assert (spec.shape, spec.colour) not in shapes.HELD_OUT
    assert {(s, c) for s, c, _ in shapes.combos("heldout")} == set(shapes.HELD_OUT)


def test_object_moves_in_captioned_direction():
    for i in range(12):
        clip, spec = shapes.make_clip(1, i, 8, 32, 32)
        fg = np.abs(clip.astype(int) - np.array(shapes.BACKGROUND)).sum(-1) > 90
        ys, xs = zip(*[np.nonzero(f) for f in fg], strict=True)
        dx, dy = np.mean(xs[-1]) - np.mean(xs[0]), np.mean(ys[-1]) - np.mean(ys[0])
        ex, ey = shapes.MOTIONS[spec.motion]
        assert dx * ex > 3 or dy * ey > 3, (spec, dx, dy)


def test_generate_writes_mp4_and_jsonl(shapes_root):
    lines = (shapes_root / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 24
    rec = json.loads(lines[0])
    assert rec["captions"][0] == shapes.caption(rec["shape"], rec["colour"], rec["motion"])
    clip = read_video(shapes_root / rec["file"])
    ref, _ = shapes.make_clip(3, 0, 8, 32, 32)
    assert clip.shape == ref.shape
    assert np.abs(clip.astype(float) - ref).mean() < 6  # H.264 at crf 12 keeps the picture


def test_mix_folder_is_reused_only_for_the_same_mix(tmp_path):
    groups = [(3, 1, 16, 16), (2, 1, 16, 24)]
    cap = shapes.generate_mix(tmp_path, groups, progress=False)
    assert [json.loads(x)["file"][-4:] for x in cap.read_text().splitlines()] == [".png"] * 5
    assert shapes.generate_mix(tmp_path, groups, progress=False) == cap  # same recipe: reused
    with pytest.raises(ConfigError, match=r"holds the shapes mix \[\[3, 1, 16, 16\], \[2, 1, 16, 24\]\]"):
        shapes.generate_mix(tmp_path, [(3, 1, 16, 16), (2, 1, 24, 24)], progress=False)
    with pytest.raises(ConfigError, match="seed 0"):
        shapes.generate_mix(tmp_path, groups, seed=1, progress=False)
    (tmp_path / "mix_train.json").unlink()  # a set written before the recipe file: its clip count is checked
    assert shapes.generate_mix(tmp_path, groups, progress=False) == cap
    with pytest.raises(ConfigError, match="holds 5 clips, but config.data.mix asks for 6"):
        shapes.generate_mix(tmp_path, groups + [(1, 1, 8, 8)], progress=False)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_caption_formats(tmp_path, fmt):
    write_video(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    if fmt == "json":
        (tmp_path / "c.json").write_text(json.dumps([{"file": "a.mp4", "captions": ["x", "y"]}]))
    elif fmt == "jsonl":
        (tmp_path / "c.jsonl").write_text(json.dumps({"path": "a.mp4", "text": "x"}) + "\n")
    else:
        (tmp_path / "c.csv").write_text("path,text\na.mp4,x\n")
    recs = load_captions(tmp_path / f"c.{fmt}")
    assert recs[0].path == tmp_path / "a.mp4" and recs[0].captions[0] == "x"


@pytest.mark.parametrize("header", ["path,caption", "file,text", "video,captions", "id,text,path", ""])
def test_csv_header_is_detected_not_read_as_data(tmp_path, header):
    rows = [["a.mp4", "a red circle"], ["b.mp4", "a blue square"]]
    if header.startswith("id"):
        body = "".join(f"{i},{t},{p}\n" for i, (p, t) in enumerate(rows))
    else:
        body = "".join(f"{p},{t}\n" for p, t in rows)
    (tmp_path / "c.csv").write_text((header + "\n" if header else "") + body)
    recs = load_captions(tmp_path / "c.csv")
    assert [(r.path.name, r.captions) for r in recs] == [("a.mp4", ("a red circle",)), ("b.mp4", ("a blue square",))]


def test_caption_errors_name_file_and_field(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"file": "missing.mp4", "captions": ["x"]}) + "\n")
    with pytest.raises(CaptionFileError, match="missing.mp4.*does not exist"):
        load_captions(tmp_path / "c.jsonl", check_files=True)
    assert load_captions(tmp_path / "c.jsonl")[0].path.name == "missing.mp4"  # kept: the loader lists it
    (tmp_path / "latin1.csv").write_bytes("a.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CaptionFileError, match="latin1.csv: not UTF-8"):
        load_captions(tmp_path / "latin1.csv")
    (tmp_path / "d.jsonl").write_text(json.dumps({"file": "a.mp4", "captions": []}) + "\n")
    with pytest.raises(CaptionFileError, match=r"d.jsonl:1: expected 'captions'"):
        load_captions(tmp_path / "d.jsonl", check_files=False)
    with pytest.raises(CaptionFileError, match="unknown caption format"):
        (tmp_path / "e.txt").write_text("x")
        load_captions(tmp_path / "e.txt")


def test_corrupt_clip_is_skipped_and_listed(shapes_root, tmp_path):
    recs = load_captions(shapes_root / "captions.jsonl")[:4]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    recs.append(type(recs[0])(bad, ("a red circle moving left",)))
    with pytest.raises(VideoReadError):
        read_video(bad)
    good, clips, skipped = probe_records(recs, 8, report=tmp_path / "skipped.txt", keep_decoded=True, progress=False)
    assert len(good) == 4 and len(clips) == 4
    assert [p for p, _ in skipped] == [str(bad)]
    assert str(bad) in (tmp_path / "skipped.txt").read_text()


def test_loader_batches_and_resumes_exactly(shapes_root):
    recs = load_captions(shapes_root / "captions.jsonl")
    good, clips, _ = probe_records(recs, 8, keep_decoded=True, progress=False)
    tok = HashTokenizer(64, 8)

    def text_fn(texts):
        ids, mask = tok(texts)
        return {"ids": ids, "mask": mask}

    def ds():
        return make_dataset(VideoSource(good, clips), make_transform(8, 32, 32, text_fn), batch_size=4, seed=0)

    it = iter(ds())
    b0 = next(it)
    assert b0["video"].shape == (4, 8, 32, 32, 3) and b0["video"].dtype == np.float32
    assert -1.0 <= b0["video"].min() and b0["video"].max() <= 1.0
    assert b0["ids"].shape == (4, 8) and b0["mask"].dtype == bool
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    it2 = iter(ds())
    it2.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(it2)["video"], w["video"])


def test_resize_clip_center_crops():
    clip = np.zeros((2, 40, 80, 3), np.uint8)
    clip[:, :, 20:60] = 255
    out = resize_clip(clip, 32, 32)
    assert out.shape == (2, 32, 32, 3)
    assert out[:, :, 16].min() > 200


def test_decoded_cache_is_dropped_when_too_large(shapes_root):
    recs = load_captions(shapes_root / "captions.jsonl")[:6]
    good, clips, _ = probe_records(recs, 8, keep_decoded=True, progress=False, max_cache_bytes=3 * 8 * 32 * 32 * 3)
    assert len(good) == 6 and clips is None  # the loader then reads from disk
    good, clips, _ = probe_records(recs, 8, keep_decoded=True, progress=False)
    assert len(clips) == 6


def test_crop_prob_takes_windows_at_the_clips_own_scale():
    """``crop_prob``: a window is either the whole frame resized or a crop at native scale; 0 keeps the old stream."""
    clip, _ = shapes.make_clip(1, 0, 8, 64, 64)  # 64×64: a 32×32 crop shows the object at twice the resized scale
    ex = {"video": clip, "captions": ["x"]}
    no_text = lambda texts: {}  # noqa: E731
    resized = make_transform(8, 32, 32, no_text)(ex, np.random.default_rng(0))["video"]
    np.testing.assert_array_equal(resized, resize_clip(clip, 32, 32).astype(np.float32) / 127.5 - 1.0)
    crops = [make_transform(8, 32, 32, no_text, crop_prob=1.0)(ex, np.random.default_rng(s))["video"]
             for s in range(8)]
    u8 = [np.round((c + 1) * 127.5).astype(np.uint8) for c in crops]
    windows = {(y, x): clip[:, y:y + 32, x:x + 32] for y in range(33) for x in range(33)}
    assert all(any(np.array_equal(c, w) for w in windows.values()) for c in u8)  # every one a native crop
    assert len({c.tobytes() for c in u8}) > 1  # at random places
    mixed = [make_transform(8, 32, 32, no_text, crop_prob=0.5)(ex, np.random.default_rng(s))["video"]
             for s in range(16)]
    n_resized = sum(np.array_equal(m, resized) for m in mixed)
    assert 2 <= n_resized <= 14
    small = {"video": shapes.make_clip(1, 0, 8, 16, 16)[0], "captions": ["x"]}  # too small to crop: resized
    out = make_transform(8, 32, 32, no_text, crop_prob=1.0)(small, np.random.default_rng(0))["video"]
    assert out.shape == (8, 32, 32, 3)
