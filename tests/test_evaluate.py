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
