"""vidjax.data.buckets: Open-Sora v1.2's tables, assignment rules (cases worked out by hand), config errors, sampler.

Pure Python/numpy; no JAX. The keep-probability cases recompute v1.2's draws from its documented seeding
(``default_rng(seed + clip_index · num_buckets + bucket_id)``) step by step, so they fail if the order of the draws,
the comparisons (``>`` for the frame draw, ``<`` for the keep draw) or the seed formula change.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vidjax.data.buckets import (
    ASPECT_RATIO_NAMES,
    ASPECT_RATIOS,
    Assignment,
    BucketConfig,
    BucketSampler,
    assign_all,
    closest_aspect_ratio,
    crop_to_bucket,
)
from vidjax.errors import ConfigError

# Open-Sora v1.2 configs/opensora-v1-2/train/stage1.py
STAGE1 = {
    "144p": {1: (1.0, 475), 51: (1.0, 51), 102: ((1.0, 0.33), 27), 204: ((1.0, 0.1), 13), 408: ((1.0, 0.1), 6)},
    "256": {1: (0.4, 297), 51: (0.5, 20), 102: ((0.5, 0.33), 10), 204: ((0.5, 0.1), 5), 408: ((0.5, 0.1), 2)},
    "240p": {1: (0.3, 297), 51: (0.4, 20), 102: ((0.4, 0.33), 10), 204: ((0.4, 0.1), 5), 408: ((0.4, 0.1), 2)},
    "360p": {1: (0.2, 141), 51: (0.15, 8), 102: ((0.15, 0.33), 4), 204: ((0.15, 0.1), 2), 408: ((0.15, 0.1), 1)},
    "512": {1: (0.1, 141)},
    "480p": {1: (0.1, 89)},
    "720p": {1: (0.05, 36)},
    "1024": {1: (0.05, 36)},
}


def test_tables_match_open_sora():
    assert ASPECT_RATIOS["240p"][1]["0.56"] == (240, 426)  # 240p "9:16" (H:W 9:16, landscape)
    assert ASPECT_RATIOS["240p"][1]["1.78"] == (426, 240)  # portrait
    assert ASPECT_RATIOS["1080p"][1]["0.56"] == (1080, 1920)
    assert ASPECT_RATIOS["256"][1]["1.0"] == (256, 256)
    pixels = {"144p": 36864, "240p": 102240, "360p": 230400, "480p": 409920, "720p": 921600, "1080p": 2073600,
              "256": 65536, "512": 262144, "1024": 1048576}
    assert {k: ASPECT_RATIOS[k][0] for k in pixels} == pixels
    for name in ("144p", "240p", "360p", "480p", "720p", "1080p"):
        assert list(ASPECT_RATIOS[name][1]) == list(ASPECT_RATIO_NAMES.values())
    assert all(len(ASPECT_RATIOS[n][1]) == 40 for n in ("256", "512", "1024"))
    assert closest_aspect_ratio(1080, 1920, ASPECT_RATIOS["240p"][1]) == "0.56"
    assert closest_aspect_ratio(100, 100, ASPECT_RATIOS["512"][1]) == "1.0"


def test_916_clip_at_240p():
    cfg = BucketConfig.parse({"240p": {1: (1.0, 8), 51: (1.0, 4)}, "144p": {51: (1.0, 4)}})
    # 854x480 landscape, 60 frames: 409,920 px >= 0.8 * 102,240 -> 240p; 60 > 51 -> 51; 480/854 = 0.562 -> "0.56"
    assert cfg.assign(60, 480, 854, seed=0) == Assignment("240p", 51, "0.56", (240, 426))
    # the same clip portrait: 854/480 = 1.78 -> (426, 240)
    assert cfg.assign(60, 854, 480, seed=0) == Assignment("240p", 51, "1.78", (426, 240))
    # 1080p source, only 240p and 144p configured: the largest configured resolution it fills
    assert cfg.assign(60, 1080, 1920, seed=0).resolution == "240p"


def test_resolution_threshold_is_80_percent():
    cfg = BucketConfig.parse({"240p": {1: (1.0, 8)}, "144p": {1: (1.0, 8)}})
    # 0.8 * 102,240 = 81,792: 320x320 = 102,400 fills 240p; 280x280 = 78,400 does not -> 144p
    assert cfg.assign(1, 320, 320, seed=0) == Assignment("240p", 1, "1.00", (320, 320))
    assert cfg.assign(1, 300, 300, seed=0) == Assignment("240p", 1, "1.00", (320, 320))  # 90,000: below 102,240
    assert cfg.assign(1, 280, 280, seed=0) == Assignment("144p", 1, "1.00", (192, 192))
    # 0.8 * 36,864 = 29,491.2: 170x170 = 28,900 fills nothing
    assert cfg.assign(1, 170, 170, seed=0) is None


def test_frame_bucket_choice():
    cfg = BucketConfig.parse({"240p": {1: (1.0, 8), 51: (1.0, 4), 102: (1.0, 2)}})
    assert cfg.assign(103, 240, 426, seed=0).num_frames == 102
    assert cfg.assign(100, 240, 426, seed=0).num_frames == 51  # too short for 102 -> next frame bucket
    assert cfg.assign(102, 240, 426, seed=0).num_frames == 51  # v1.2 needs T > t, strictly
    assert cfg.assign(51, 240, 426, seed=0) is None  # and a video never takes the 1-frame bucket
    assert cfg.assign(1, 240, 426, seed=0).num_frames == 1  # an image does
    # frame_interval 2: 103 frames cover 51 * 2 = 102 but not 102 * 2
    assert cfg.assign(103, 240, 426, seed=0, frame_interval=2).num_frames == 51


def test_stage1_image_and_video_cases():
    cfg = BucketConfig.parse(STAGE1)
    # 200x200 = 40,000 px: fills only 144p (256 needs 52,428.8); keep 1.0 -> 144p / 1 frame / square
    assert cfg.assign(1, 200, 200, seed=7, clip_index=3) == Assignment("144p", 1, "1.00", (192, 192))
    # a 60-frame 160x284 video (45,440 px, H/W 0.563): 144p, 51 frames (102's frame draw never matters: too short)
    assert cfg.assign(60, 160, 284, seed=7, clip_index=3) == Assignment("144p", 51, "0.56", (144, 256))
    assert cfg.num_buckets == 17 * 5 * 3 + 40 * 5 + 40 + 17 + 17 + 40  # v1.2 num_bucket


def _u(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_keep_prob_draws():
    cfg = BucketConfig.parse({"240p": {51: (0.5, 4)}, "144p": {51: (1.0, 4)}})
    assert cfg.num_buckets == 34 and cfg.bucket_ids() == {("240p", 51): 0, ("144p", 51): 1}
    seen = set()
    for i in range(40):
        expected = "240p" if _u(5 + 34 * i + 0).random() < 0.5 else "144p"
        got = cfg.assign(60, 480, 854, seed=5, clip_index=i)
        assert got.resolution == expected
        seen.add(expected)
        assert cfg.assign(60, 480, 854, seed=5, clip_index=i) == got  # deterministic
    assert seen == {"240p", "144p"}


def test_image_keep_prob():
    cfg = BucketConfig.parse({"240p": {1: (0.3, 8)}, "144p": {1: (1.0, 8)}})
    got = [cfg.assign(1, 480, 854, seed=1, clip_index=i).resolution for i in range(60)]
    assert got == ["240p" if _u(1 + 34 * i).random() < 0.3 else "144p" for i in range(60)]
    assert 0 < got.count("240p") < 60


def test_pair_form_frame_keep_prob():
    # ((1.0, 0.33), 2): the 102 bucket is considered when the draw is <= 0.33, otherwise the clip takes 51
    cfg = BucketConfig.parse({"240p": {102: ((1.0, 0.33), 2), 51: (1.0, 4)}})
    frames = [cfg.assign(200, 240, 426, seed=2, clip_index=i).num_frames for i in range(60)]
    assert frames == [51 if _u(2 + 34 * i + 0).random() > 0.33 else 102 for i in range(60)]
    assert set(frames) == {51, 102}
    # ((0.5, 0.5), 4): the frame draw, then a second draw of the same generator decides the resolution
    cfg = BucketConfig.parse({"240p": {51: ((0.5, 0.5), 4)}, "144p": {51: 4}})
    for i in range(60):
        g = _u(3 + 34 * i + 0)
        stays = g.random() <= 0.5 and g.random() < 0.5
        assert cfg.assign(60, 480, 854, seed=3, clip_index=i).resolution == ("240p" if stays else "144p")


def test_disabled_entry_moves_to_next_resolution():
    cfg = BucketConfig.parse({"480p": {102: (0.0, None), 51: (1.0, 2)}, "240p": {102: (1.0, 2)}})
    # 120 frames reach 480p/102 (keep 0): rejected at 480p -> 240p/102, not 480p/51
    assert cfg.assign(120, 480, 854, seed=0).bucket == ("240p", 102, "0.56")
    assert cfg.assign(60, 480, 854, seed=0).bucket == ("480p", 51, "0.56")


def test_parse_forms_and_batch_sizes():
    cfg = BucketConfig.parse({"144p": {1: 16, 51: ((1.0, 0.5), 4)}, "240p": {51: [0.5, 2]}})
    assert [r for r, _ in cfg.resolutions] == ["240p", "144p"]  # largest first
    fb = cfg.frame_bucket("144p", 51)
    assert (fb.keep_prob, fb.frame_keep_prob, fb.batch_size) == (1.0, 0.5, 4)
    assert cfg.frame_bucket("144p", 1).keep_prob == 1.0 and cfg.batch_size("144p", 1) == 16
    assert cfg.batch_size("240p", 51) == 2
    assert [fb.num_frames for fb in dict(cfg.resolutions)["144p"]] == [51, 1]


@pytest.mark.parametrize("table, needle", [
    ({}, "empty"),
    (None, "empty"),
    ({"999p": {1: (1.0, 4)}}, "['999p']: unknown resolution"),
    ({"240p": {}}, "['240p']: expected a non-empty"),
    ({"240p": {51: (1.0, 0)}}, "['240p'][51]: the batch size must be a positive int"),
    ({"240p": {51: (1.0, -2)}}, "['240p'][51]: the batch size"),
    ({"240p": {51: 0}}, "['240p'][51]: the batch size"),
    ({"240p": {51: (0.5, None)}}, "['240p'][51]: the batch size"),
    ({"240p": {51: (1.5, 4)}}, "['240p'][51]: keep_prob must be a number in [0, 1]"),
    ({"240p": {51: ((1.0, -0.1), 4)}}, "['240p'][51]: frame_keep_prob must be"),
    ({"240p": {51: ((1.0, 0.5, 0.2), 4)}}, "['240p'][51]: the keep probability pair"),
    ({"240p": {0: (1.0, 4)}}, "['240p'][0]: the frame count"),
    ({"240p": {51: "x"}}, "['240p'][51]: expected (keep_prob, batch_size)"),
])
def test_bad_configs(table, needle):
    with pytest.raises(ConfigError) as err:
        BucketConfig.parse(table, field="data.bucket_config")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.bucket_config") and needle in msg, msg


def _clips(counts: dict[tuple[int, int, int], int]) -> list[tuple[int, int, int]]:
    """Shapes (T, H, W) repeated and interleaved so that bucket members are not contiguous rows."""
    shapes = [shape for shape, n in counts.items() for _ in range(n)]
    return [shapes[i] for i in np.random.default_rng(0).permutation(len(shapes))]


CFG = {"240p": {1: (1.0, 8), 51: (1.0, 4)}, "144p": {1: (1.0, 6), 51: (1.0, 2)}}
SHAPES = _clips({(1, 480, 854): 30, (60, 480, 854): 21, (60, 854, 480): 9, (1, 200, 200): 13, (60, 200, 356): 7,
                 (60, 120, 120): 5})


def _sampler(**kw) -> BucketSampler:
    cfg = BucketConfig.parse(CFG)
    return BucketSampler(assign_all(cfg, SHAPES, seed=0), cfg, seed=kw.pop("seed", 11), **kw)


def test_sampler_batches_one_bucket_at_its_size():
    s = _sampler()
    assert s.counts == {("240p", 51, "0.56"): 21, ("240p", 51, "1.78"): 9, ("240p", 1, "0.56"): 30,
                        ("144p", 51, "0.56"): 7, ("144p", 1, "1.00"): 13}
    assert s.num_unassigned == 5  # 120x120 covers no resolution
    assert len(s) == 21 // 4 + 9 // 4 + 30 // 8 + 7 // 2 + 13 // 6 == 15
    shapes = np.array(SHAPES)
    seen = []
    for _ in range(len(s)):
        b = next(s)
        assert len(b.indices) == s.config.batch_size(b.bucket[0], b.bucket[1])
        assert len(set(b.indices.tolist())) == len(b.indices)
        t = shapes[b.indices, 0]
        assert set(t.tolist()) == ({1} if b.bucket[1] == 1 else {60})
        assert b.size == ASPECT_RATIOS[b.bucket[0]][1][b.bucket[2]]
        seen += b.indices.tolist()
    assert len(seen) == len(set(seen))  # no clip twice in an epoch
    assert s.state_dict() == {"epoch": 0, "position": 15}
    next(s)
    assert s.state_dict() == {"epoch": 1, "position": 1}


def _keys(batches):
    return [(b.bucket, b.indices.tolist()) for b in batches]


def test_sampler_deterministic_and_epoch_dependent():
    a, b = _sampler(), _sampler()
    first = _keys(next(a) for _ in range(30))
    assert first == _keys(next(b) for _ in range(30))
    assert first[:15] != first[15:]  # epoch 1 reshuffles
    other = _sampler(seed=12)
    assert first != _keys(next(other) for _ in range(30))


def test_sampler_resume():
    s = _sampler()
    for _ in range(12):
        next(s)
    state = s.state_dict()
    expected = _keys(next(s) for _ in range(15))  # crosses into epoch 1
    t = _sampler()
    t.load_state_dict(dict(state))
    assert _keys(next(t) for _ in range(15)) == expected
    with pytest.raises(ValueError, match="outside"):
        t.load_state_dict({"epoch": 0, "position": 99})


def test_sampler_partitions_processes():
    whole = _sampler()
    parts = [_sampler(num_processes=2, process_index=p) for p in range(2)]
    for _ in range(30):
        g = next(whole)
        p0, p1 = next(parts[0]), next(parts[1])
        assert p0.bucket == p1.bucket == g.bucket
        assert not set(p0.indices.tolist()) & set(p1.indices.tolist())
        assert np.concatenate([p0.indices, p1.indices]).tolist() == g.indices.tolist()
    with pytest.raises(ConfigError, match="not a multiple of the 4 processes"):
        _sampler(num_processes=4)


def test_dropped_bucket_reported(caplog):
    cfg = BucketConfig.parse({"240p": {51: (1.0, 4)}, "144p": {51: (1.0, 4)}})
    shapes = [(60, 480, 854)] * 9 + [(60, 200, 356)] * 3
    with caplog.at_level(logging.WARNING, logger="vidjax.data.buckets"):
        s = BucketSampler(assign_all(cfg, shapes, seed=0), cfg)
    assert [tuple(d) for d in s.dropped] == [(("144p", 51, "0.56"), 3, 4)]
    assert "144p/51/0.56 dropped: 3 clips" in caplog.text
    assert len(s) == 2
    assert {next(s).bucket for _ in range(6)} == {("240p", 51, "0.56")}
    text = s.describe()
    assert "fewer clips than one batch" in text and "1 buckets dropped" in text and "2 batches per epoch" in text
    with pytest.raises(ConfigError, match="no bucket has enough clips"):
        BucketSampler(assign_all(cfg, shapes[-3:], seed=0), cfg)


def test_crop_to_bucket():
    clip = np.zeros((60, 96, 170, 3), np.uint8)
    clip[:, :, :, 0] = np.arange(60, dtype=np.uint8)[:, None, None]
    a = Assignment("144p", 4, "0.56", (72, 128))
    out = crop_to_bucket(clip, a, frame_interval=3, start=2)
    assert out.shape == (4, 72, 128, 3)
    assert out[:, 0, 0, 0].tolist() == [2, 5, 8, 11]
    with pytest.raises(ValueError, match="cannot fill"):
        crop_to_bucket(clip[:5], a, frame_interval=3)


# --------------------------------------------------------------------------------------
# Custom named resolutions (``data.resolutions``): small sizes for CPU runs, e.g. configs/three_stage_shapes.py
# --------------------------------------------------------------------------------------

def test_custom_resolutions_assign_by_pixels_and_aspect_ratio():
    table = {"64px": {1: (1.0, 4), 16: (1.0, 2)}, "32px": {1: (1.0, 8), 8: (1.0, 4)}}
    cfg = BucketConfig.parse(table, resolutions={"32px": [(32, 32)], "64px": [(64, 64), (48, 96)]})
    assert [res for res, _ in cfg.resolutions] == ["64px", "32px"]  # most pixels first
    # the 64px reference area is the square's, 4096: a clip needs 80% of it (3277 px) to go there
    assert cfg.assign(17, 64, 64, 0, clip_index=0) == Assignment("64px", 16, "1.00", (64, 64))
    assert cfg.assign(17, 48, 96, 0, clip_index=0) == Assignment("64px", 16, "0.50", (48, 96))  # 4608 px, 1:2
    assert cfg.assign(17, 56, 56, 0, clip_index=0) == Assignment("32px", 8, "1.00", (32, 32))  # 3136 < 3277
    assert cfg.assign(1, 64, 64, 0, clip_index=0) == Assignment("64px", 1, "1.00", (64, 64))  # an image
    assert cfg.assign(5, 64, 64, 0, clip_index=0) is None  # too short for 8 frames; a clip never goes to 1 (v1.2)
    assert cfg.assign(1, 16, 16, 0, clip_index=0) is None  # below every resolution
    assert sorted(s for _, s in cfg.shapes()) == [(1, 32, 32), (1, 48, 96), (1, 64, 64), (8, 32, 32), (16, 48, 96),
                                                  (16, 64, 64)]
    assert cfg.scaled(3).batch_size("64px", 16) == 6


@pytest.mark.parametrize("resolutions, needle", [
    ({"8px": [(8, 0)]}, r"data.resolutions\['8px'\]: expected a list of \(height, width\) positive ints"),
    ({"8px": []}, r"data.resolutions\['8px'\]: expected a list"),
    ([(8, 8)], r"data.resolutions: expected \{name: \[\(height, width\), ...\]\}"),
])
def test_custom_resolution_errors(resolutions, needle):
    with pytest.raises(ConfigError, match=needle):
        BucketConfig.parse({"8px": {1: (1.0, 4)}}, resolutions=resolutions)
