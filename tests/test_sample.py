"""python -m vidjax.sample: any size and frame count, mp4 + GIF + frame strips, data parallel over devices, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import jax
import numpy as np
import pytest
from _helpers import quick
from PIL import Image, ImageSequence

from configs.shapes_tiny import get_config
from vidjax.config import load_config
from vidjax.data.video_io import read_video
from vidjax.errors import ConfigError
from vidjax.training import run

REPO = Path(__file__).resolve().parents[1]


def call(*args, devices: int = 1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "vidjax.sample", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidjax.sample: error: "), r.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """2 steps of the quick config (raw pixels, patch 2×4×4, 8×32×32 clips)."""
    tmp = tmp_path_factory.mktemp("sample")
    c = quick(get_config("quick"), tmp, **{"train.steps": 2, "train.ckpt_every": 2, "sample.num_prompts": 0})
    run(c, tmp / "work")
    return tmp / "work"


def test_any_size_and_frame_count_to_mp4_gif_and_strips(workdir, tmp_path):
    out = tmp_path / "out"
    r = call("--workdir", str(workdir), "--prompt", "a red circle moving left", "--prompt", "a blue square",
             "--num_frames", "12", "--height", "24", "--width", "40", "--fps", "5", "--steps", "2",
             "--batch_size", "2", "--out", str(out), devices=2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "12x24x40" in r.stdout and "2 device(s)" in r.stdout
    for stem in ("000_a_red_circle_moving_left", "001_a_blue_square"):
        video = read_video(out / f"{stem}.mp4")
        assert video.shape == (12, 24, 40, 3)
        with av.open(str(out / f"{stem}.mp4")) as f:
            assert f.streams.video[0].average_rate == 5
        gif = Image.open(out / f"{stem}.gif")
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(gif)]
        assert sum(durations) == 12 * 200 and gif.info.get("loop") == 0  # 12 frames at 5 fps (repeats merged)
        assert gif.size == (40 * 5, 24 * 5)  # enlarged for viewing (128 // 24 = 5)
        assert Image.open(out / f"{stem}.png").size[0] > 12 * 40  # the frame strip
    assert Image.open(out / "grid.png").size[1] > 2 * 24 * 5
    one = tmp_path / "one.mp4"
    r = call("--workdir", str(workdir), "--prompt", "a red circle", "--num_frames", "4", "--steps", "1",
             "--out", str(one))
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_video(one).shape == (4, 32, 32, 3) and one.with_suffix(".gif").is_file()


def test_one_and_eight_devices_give_the_same_clips(workdir):
    from vidjax.checkpoint import restore_model
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.parallel.mesh import make_mesh
    from vidjax.sample import generate

    assert jax.device_count() == 8
    config, model, _ = restore_model(workdir)
    prompts = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]
    args = (model, config, build_vae(config.vae), build_diffusion(config.diffusion), text_inputs(config), prompts)
    one = generate(*args, steps=2, batch_size=8, mesh=make_mesh(None, devices=jax.devices()[:1]))
    eight = generate(*args, steps=2, batch_size=8, mesh=make_mesh(None, devices=jax.devices()))
    assert one.shape == eight.shape == (3, 8, 32, 32, 3)
    diff = np.abs(one.astype(int) - eight.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())
    parts = generate(*args, steps=2, batch_size=8, vae_batch=2, mesh=make_mesh(None, devices=jax.devices()[:1]))
    np.testing.assert_array_equal(parts, one)  # decoding in micro-batches changes nothing


def test_sizes_the_model_cannot_take_are_one_line_errors(workdir):
    r = call("--workdir", str(workdir), "--prompt", "x", "--height", "30")
    one_line_error(r, "8x30x32: frame size 30×32 is not a multiple of 4×4 pixels")
    r = call("--workdir", str(workdir), "--prompt", "x", "--num_frames", "3")
    one_line_error(r, "3x32x32: 3 frames give 3 latent frames, not divisible by the temporal patch 2")
    r = call("--workdir", str(workdir), "--prompt", "x", "--sampler", "ddim")
    one_line_error(r, "--sampler='ddim'", "euler")
    r = call("--workdir", str(workdir), "--prompt", "x", "--resolution", "240p", "--height", "32")
    one_line_error(r, "not both")


def test_bucket_names_pick_the_size():
    from vidjax.models.vae import build_vae
    from vidjax.sample import clip_size

    c = load_config(str(REPO / "configs/three_stage_shapes.py") + ":quick")  # 8px and 16px (16×16, 12×24)
    c.model.patch = (1, 2, 2)
    vae = build_vae(c.vae)
    assert clip_size(c, vae, resolution="16px", aspect_ratio="1:2") == (c.data.frames, 12, 24)
    assert clip_size(c, vae, resolution="16px", num_frames=1) == (1, 16, 16)
    assert clip_size(c, vae, resolution="240p", aspect_ratio="9:16") == (c.data.frames, 240, 426)
    with pytest.raises(ConfigError, match=r"--resolution='33px': expected one of .*16px"):
        clip_size(c, vae, resolution="33px")
    with pytest.raises(ConfigError, match=r"--aspect_ratio='16:9' is not in the 16px table; expected one of 1:1, 1:2"):
        clip_size(c, vae, resolution="16px", aspect_ratio="16:9")


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    """2 steps of the quick config with a (tiny, random) T5 text encoder, its EMA exported as Open-Sora safetensors."""
    from _helpers import tiny_t5_dir

    from vidjax.data.shapes import caption, eval_prompts
    from vidjax.export import main as export

    tmp = tmp_path_factory.mktemp("imported")
    t5 = tiny_t5_dir(tmp / "t5", [caption(*t) for t in eval_prompts(24, "train")], d_model=24)
    over = {"text.encoder": "t5", "text.path": str(t5), "text.max_length": 12, "text.dim": 24}
    c = quick(get_config("quick"), tmp, **{"train.steps": 2, "train.ckpt_every": 2, "sample.num_prompts": 0}, **over)
    run(c, tmp / "work")
    assert export(["--workdir", str(tmp / "work"), "--ema", "--out", str(tmp / "model.safetensors")]) == 0
    return tmp, t5, over


def test_an_imported_checkpoint_samples_the_clips_of_its_workdir(t5_run):
    """--checkpoint (an Open-Sora-layout file) + --config + --text gives exactly the clips --workdir gives."""
    from vidjax.checkpoint import restore_model
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.sample import generate, imported_model

    tmp, t5, over = t5_run
    prompts = ["a red circle moving left", "a blue square moving up"]
    config, model, _ = restore_model(tmp / "work")
    want = generate(model, config, build_vae(config.vae), build_diffusion(config.diffusion), text_inputs(config),
                    prompts, steps=3)
    c = load_config(str(REPO / "configs/shapes_tiny.py:quick"),
                    [f"{k}={v}" for k, v in over.items() if k != "text.path"])
    c, model, report = imported_model(str(tmp / "model.safetensors"), c, text_dir=str(t5))
    assert "loaded" in report.summary() and c.text.path == str(t5)
    got = generate(model, c, build_vae(c.vae), build_diffusion(c.diffusion), text_inputs(c), prompts, steps=3)
    np.testing.assert_array_equal(got, want)
    r = call("--checkpoint", str(tmp / "model.safetensors"), "--config", "configs/shapes_tiny.py:quick",
             *[f"--config.{k}={v}" for k, v in over.items() if k != "text.path"], "--text", str(t5),
             "--prompt", prompts[0], "--steps", "3", "--num_frames", "4", "--out", str(tmp / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loaded" in r.stderr and "checkpoint model.safetensors" in r.stdout
    assert read_video(next((tmp / "out").glob("000_*.mp4"))).shape[0] == 4


def test_imported_checkpoint_errors_are_one_line(t5_run, tmp_path):
    from safetensors.numpy import load_file, save_file

    tmp, t5, over = t5_run
    args = ["--config", "configs/shapes_tiny.py:quick", *[f"--config.{k}={v}" for k, v in over.items()
                                                          if k != "text.path"], "--prompt", "a red circle"]
    sd = load_file(str(tmp / "model.safetensors"))
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("final_layer.linear")}, str(broken))
    one_line_error(call("--checkpoint", str(broken), "--text", str(t5), *args, "--out", str(tmp_path / "o")),
                   "final_layer.linear.weight")
    one_line_error(call("--checkpoint", str(tmp_path / "nope.pth"), "--text", str(t5), *args), "nope.pth: not found")
    one_line_error(call("--checkpoint", str(tmp / "model.safetensors"), "--text", str(tmp_path / "no_t5"), *args),
                   "--text", "no_t5: not found")
    r = call("--checkpoint", str(tmp / "model.safetensors"), "--prompt", "x")
    assert r.returncode == 2 and "--checkpoint needs --config" in r.stderr
    one_line_error(call("--checkpoint", str(tmp / "model.safetensors"), "--config", "configs/shapes_tiny.py:quick",
                        "--prompt", "x"), "text.encoder is 'trainable'")


def test_reference_frames_and_mask_strategies(tmp_path):
    """v1.2's image-to-video / extension syntax: --reference + --mask_strategy (or the JSON after a prompt) put the
    reference's latent frames where the strategy says, and the sampler keeps them (raw pixels here: exactly)."""
    from vidjax.checkpoint import restore_model
    from vidjax.data import shapes
    from vidjax.data.video_io import save_png, write_video
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.sample import condition_latents, generate, generate_loops, reference_latents, split_prompt_json

    c = quick(get_config("quick,v12"), tmp_path, **{"train.steps": 2, "train.ckpt_every": 2, "sample.num_prompts": 0,
                                                    "model.patch": (1, 4, 4)})
    run(c, tmp_path / "w")
    clip, _ = shapes.make_clip(0, 3, 8, 32, 32, "heldout")
    save_png(tmp_path / "first.png", clip[0])
    write_video(tmp_path / "clip.mp4", clip, fps=8)
    prompts, refs, strategies = split_prompt_json(
        ['a red circle moving left{"reference_path": "%s", "mask_strategy": "0"}' % (tmp_path / "first.png"),
         "a blue square moving up"], [""] * 2, ["", "0,0,0,-2,2"])
    assert prompts == ["a red circle moving left", "a blue square moving up"] and strategies[0] == "0"
    refs[1] = str(tmp_path / "first.png")  # the image as the last two frames (repeated: the strategy clips to 1)
    config, model, _ = restore_model(tmp_path / "w")
    vae = build_vae(config.vae)
    ref, mask = condition_latents(vae, (8, 32, 32), *reference_latents(vae, (8, 32, 32), refs, strategies))
    assert mask.tolist() == [[0] + [1] * 7, [1] * 6 + [0, 1]]
    out = generate(model, config, vae, build_diffusion(config.diffusion), text_inputs(config), prompts,
                   reference=ref, mask=mask, steps=2)
    np.testing.assert_array_equal(out[0, 0], clip[0])
    np.testing.assert_array_equal(out[1, 6], clip[0])
    r = call("--workdir", str(tmp_path / "w"), "--prompt", "a red circle moving left", "--reference",
             str(tmp_path / "clip.mp4"), "--mask_strategy", "0,0,0,0,4", "--aes", "6.5", "--steps", "2",
             "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_video(next((tmp_path / "out").glob("000_a_red_circle_moving_left_aesthetic_score*.mp4"))).shape[0] == 8
    base = ["--workdir", str(tmp_path / "w"), "--prompt", "a red circle", "--steps", "2"]
    one_line_error(call(*base, "--reference", str(tmp_path / "nope.mp4")), "nope.mp4", "not found")
    one_line_error(call(*base, "--reference", str(tmp_path / "clip.mp4"), "--mask_strategy", "0,x"), "integers")
    one_line_error(call(*base, "--mask_strategy", "0"), "without a --reference")

    # v1.2's loops: loop 1 starts from the last 2 latent frames of loop 0 (raw pixels: exactly) with its own text
    diffusion, text = build_diffusion(config.diffusion), text_inputs(config)
    segs = generate_loops(model, config, vae, diffusion, text, ["|0|a red circle moving left|1|a blue square"],
                          [[]], [""], loops=2, length=2, steps=2)
    assert [s.shape for s in segs] == [(1, 8, 32, 32, 3)] * 2
    np.testing.assert_array_equal(segs[1][0, :2], segs[0][0, 6:])
    np.testing.assert_array_equal(segs[0], generate(model, config, vae, diffusion, text, ["a red circle moving left"],
                                                    steps=2))  # loop 0 is plain text-to-video of the first text
    r = call(*base, "--prompt", "|0|a red circle moving left|1|a blue square", "--loop", "3",
             "--condition_frame_length", "2", "--out", str(tmp_path / "loops"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 loops of 8 frames, 2 shared" in r.stdout
    assert {read_video(f).shape[0] for f in (tmp_path / "loops").glob("*.mp4")} == {8 + 6 + 6}
    one_line_error(call(*base, "--loop", "2", "--condition_frame_length", "8"), "--condition_frame_length=8",
                   "8 latent frames")
    one_line_error(call(*base, "--prompt", "|0|a|x|b", "--loop", "2"), "loop indices")
    one_line_error(call(*base, "--loop", "0"), "--loop=0")


def test_sequence_parallel_sampling_gives_the_same_clips(workdir, tmp_path):
    """--sequence_parallel 2 on 8 devices (4 data groups × 2 sequence shards, DSP) samples the clips 1 device does."""
    outs = {}
    for name, devices, extra in [("one", 1, []), ("sp", 8, ["--sequence_parallel", "2"])]:
        r = call("--workdir", str(workdir), "--prompt", "a red circle moving left", "--prompt", "a blue square",
                 "--steps", "3", "--out", str(tmp_path / name), *extra, devices=devices)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"{devices} device(s)" in r.stdout
        outs[name] = np.stack([read_video(p) for p in sorted((tmp_path / name).glob("*.mp4"))]).astype(int)
    diff = np.abs(outs["one"] - outs["sp"])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())
    one_line_error(call("--workdir", str(workdir), "--prompt", "x", "--sequence_parallel", "3", devices=8),
                   "--sequence_parallel=3", "8 local devices")
    one_line_error(call("--workdir", str(workdir), "--prompt", "x", "--sequence_parallel", "8", devices=8),
                   "latent frames")


def test_two_processes_split_the_prompts_and_give_the_same_clips(workdir, tmp_path):
    """Under jax.distributed (2 local processes, launch/local_multiprocess.sh) process r samples prompts r, r + 2,
    ...; the files, and the clips in them, are those of one process, and the first process writes the grid."""
    prompts = ["a red circle moving left", "a blue square", "a green triangle moving up"]
    args = [a for p in prompts for a in ("--prompt", p)] + ["--steps", "3"]
    r = call("--workdir", str(workdir), *args, "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr[-2000:]
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "1", "-l", str(tmp_path / "logs"),
                        "--", sys.executable, "-m", "vidjax.sample", "--workdir", str(workdir), *args,
                        "--out", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "× 2 processes" in (tmp_path / "logs" / "process_0.log").read_text()
    assert "process 1 of 2: sampled prompts [1]" in (tmp_path / "logs" / "process_1.log").read_text()
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir()) and "grid.png" in one
    for name in (n for n in one if n.endswith(".mp4")):
        a, b = read_video(tmp_path / "one" / name).astype(int), read_video(tmp_path / "two" / name).astype(int)
        assert np.abs(a - b).max() <= 1, name
