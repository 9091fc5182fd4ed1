"""The deterministic judge: right on ground truth, at chance on shuffled captions, one blob only."""

import numpy as np
import pytest
from scipy import ndimage

from vidjax.data import shapes
from vidjax.evaluate import CHANCE, agreement, detect, score


@pytest.fixture(scope="module")
def truth():
    clips, targets = [], []
    for i in range(96):
        clip, spec = shapes.make_clip(11, i, 8, 32, 32)
        clips.append(clip)
        targets.append((spec.shape, spec.colour, spec.motion))
    return clips, targets


def test_ground_truth_scores_at_least_95(truth):
    s = score(*truth)["summary"]
    assert s["colour"] >= 0.95 and s["shape"] >= 0.95 and s["motion"] >= 0.95 and s["all"] >= 0.95, s


def test_shuffled_captions_score_near_chance(truth):
    clips, targets = truth
    perm = np.random.default_rng(0).permutation(len(targets))
    s = score(clips, [targets[i] for i in perm])["summary"]
    for k in ("colour", "shape", "motion"):
        assert s[k] <= CHANCE[k] + 0.2, (k, s)
    assert s["all"] <= 0.15


def test_largest_blob_wins_over_fragments():
    clip, spec = shapes.make_clip(2, 0, 8, 32, 32)
    noisy = clip.copy()
    other = (255, 255, 255)
    noisy[:, 0:2, 0:2] = other  # a small fragment in a corner
    assert detect(noisy) == detect(clip) == {"colour": spec.colour, "shape": spec.shape, "motion": spec.motion}


def test_static_or_empty_clips_never_count_as_motion():
    clip, _ = shapes.make_clip(2, 1, 8, 32, 32)
    still = np.repeat(clip[:1], 8, axis=0)
    assert detect(still)["motion"] is None
    blank = np.full_like(clip, 24)
    assert detect(blank) == {"colour": None, "shape": None, "motion": None}


def test_agreement_is_one_on_copies_and_drops_when_blur_rounds_the_shapes(truth):
    clips = np.stack(truth[0][:24])
    assert agreement(clips, clips.copy()) == {"colour": 1.0, "shape": 1.0, "motion": 1.0, "all": 1.0}
    blurred = ndimage.gaussian_filter(clips.astype(np.float32), sigma=(0, 0, 1.6, 1.6, 0)).round().astype(np.uint8)
    a = agreement(clips, blurred)
    assert a["shape"] < 0.8 and a["all"] <= a["shape"], a  # a soft-edged triangle reads as a circle
    assert a["colour"] == 1.0, a


def test_image_samples_are_one_frame_through_a_causal_vae():
    """An image bucket (1 frame) through the causal VAE (4× in time, front-padded): generate returns exactly one
    frame per prompt, not the decoder's 4 (3 of them reconstructions of the padding)."""
    import jax.numpy as jnp
    from flax import nnx

    from configs.shapes_tiny import get_config
    from configs.vae_shapes import get_config as vae_config
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import build_model, text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.sample import generate

    c = get_config("quick")
    c.vae = vae_config("quick").vae
    c.data.frames, c.data.height, c.data.width = 1, 32, 32
    c.model.patch = (1, 2, 2)
    vae = build_vae(c.vae)
    model = build_model(c, nnx.Rngs(0), latent_channels=vae.latent_channels)
    assert vae.latent_shape(1, 32, 32)[0] == 1 and vae.decode(jnp.zeros((1, 1, 4, 4, 4))).shape[1] == 4
    clips = generate(model, c, vae, build_diffusion(c.diffusion), text_inputs(c), ["a red circle"] * 2, steps=2,
                     batch_size=2)
    assert clips.shape == (2, 1, 32, 32, 3) and clips.dtype == np.uint8


def test_continuation_keeps_the_reference_frames_and_scores_only_generated_ones(tmp_path, capsys):
    """A model trained with ``diffusion.mask_ratios`` (STDiT3, v1.2's condition frames) continues held-out clips:
    the condition frames come back as the reference (raw pixels here, so exactly), and ``--continue_from`` reports
    the generated frames' scores next to unconditioned samples of the same prompts."""
    import json

    import jax.numpy as jnp
    from _helpers import quick

    from configs.shapes_tiny import get_config
    from vidjax.checkpoint import restore_model
    from vidjax.diffusion import build_diffusion
    from vidjax.errors import ConfigError
    from vidjax.evaluate import main
    from vidjax.models.t2v import text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.sample import generate
    from vidjax.training import run
    from vidjax.training.diffusion import check_config

    c = quick(get_config("quick,v12"), tmp_path, **{"train.steps": 2, "train.ckpt_every": 2, "sample.num_prompts": 0,
                                                    "model.patch": (1, 4, 4)})
    run(c, tmp_path / "w")
    config, model, _ = restore_model(tmp_path / "w")
    vae, d = build_vae(config.vae), config.data
    clip, spec = shapes.make_clip(1, 0, d.frames, d.height, d.width, "heldout")
    ref = np.asarray(vae.encode(jnp.asarray(clip[None], jnp.float32) / 127.5 - 1))
    mask = np.array([[0.0] + [1.0] * (ref.shape[1] - 1)])
    out = generate(model, config, vae, build_diffusion(config.diffusion), text_inputs(config),
                   [shapes.prompt((spec.shape, spec.colour, spec.motion))], reference=ref, mask=mask)
    np.testing.assert_array_equal(out[0, 0], clip[0])  # the condition frame, untouched
    assert np.abs(out[0, 1:].astype(int) - clip[1:]).mean() > 5  # the rest is generated
    main(["--workdir", str(tmp_path / "w"), "--continue_from", "1", "--split", "heldout", "--num_prompts", "2"])
    report = json.loads(capsys.readouterr().out)
    assert set(report["continuation"]) >= {"colour", "shape", "motion", "all"} and "unconditioned" in report
    assert report["scored_frames"] == [1, d.frames] and (tmp_path / "w" / "continuation_heldout").is_dir()
    c.model.name = "stdit"
    with pytest.raises(ConfigError, match="mask_ratios .* needs diffusion.name='rflow' and model.name='stdit3'"):
        check_config(c)
