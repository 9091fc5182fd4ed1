"""Generate videos from text with a trained workdir or an imported Open-Sora / PixArt checkpoint.

    python -m vidjax.sample --workdir runs/shapes_tiny --prompt "a blue square moving up" --out out.mp4
    python -m vidjax.sample --checkpoint OpenSora-v1-HQ-16x512x512.pth --config configs/opensora_v1/stage2.py \
        --vae pretrained_models/sd-vae-ft-ema --text pretrained_models/t5-v1_1-xxl --prompts prompts.txt
    python -m vidjax.sample --workdir runs/shapes_tiny --prompts prompts.txt --out samples/
    python -m vidjax.sample --workdir runs/three_stage_shapes/stage3 --prompt "a red circle moving left" \
        --num_frames 16 --resolution 64px --aspect_ratio 1:2 --steps 50 --cfg_scale 5 --out samples/

Per prompt ``<index>_<slug>.mp4``, an animated ``.gif`` and a frame-strip ``.png``, plus ``grid.png`` (a row per
prompt). The size defaults to the training clip size; ``--num_frames``, ``--height`` / ``--width`` or a bucket name
(``--resolution`` with ``--aspect_ratio``, Open-Sora's tables plus the run's ``data.resolutions``) choose another.
Prompts are spread data-parallel over every local device (one compiled batch, padded to a multiple of the device
count), and over processes when several run (prompt ``i`` on process ``i mod P``, each writing its own files, the
first one the grid); prompt ``i`` gets the same starting noise on any number of devices and processes.

``--checkpoint`` takes what ``vidjax.convert`` reads (an Open-Sora v1.0 / PixArt-α ``.pth`` or ``.safetensors``,
a vidjax export, or a published v1.2 ``OpenSora-STDiT-v3`` directory) with ``--config``, the config that describes
its architecture, objective and sizes (``--config.KEY=VALUE`` overrides as in vidjax.train); ``--vae`` and
``--text`` are the local VAE and T5 directories (else the config's paths). The load is strict and its report is
printed: a missing, unexpected or mis-shaped tensor stops with one line naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from vidjax import cli
from vidjax.cli import check_writable
from vidjax.data.video_io import frame_grid, save_png, write_gif, write_video
from vidjax.diffusion.conditions import append_scores, loop_prompt
from vidjax.diffusion.rectified_flow import RFlowV12
from vidjax.errors import ConfigError, InputError, MissingFileError
from vidjax.models.t2v import split_for_sampling


def generate(model, config, vae, diffusion, tokenizer, prompts: list[str], *, seed: int = 0, steps: int | None = None,
             cfg_scale: float | None = None, batch_size: int | None = None, progress: bool = False, mesh=None,
             vae_batch: int | None = None, reference: np.ndarray | None = None,
             mask: np.ndarray | None = None, indices: list[int] | None = None) -> np.ndarray:
    """Sample one clip per prompt at the ``config.data`` size: uint8 [N, T, H, W, 3].

    Condition frames (Open-Sora v1.2, rectified flow): ``reference`` latents [N, T', h, w, C] and ``mask`` [N, T']
    (1 = generate, 0 = keep the reference latent frame, between = edit it from that noise level).

    Prompt i always gets noise ``fold_in(seed, i)`` (``indices``: the prompts' indices in a larger list, as when
    processes share one). With a ``mesh`` the batch is split over its data axes (the batch
    size rounded up to a multiple of them) and the weights replicated. ``vae_batch`` decodes that many clips at a
    time (memory for long clips; default the whole batch).
    """
    from vidjax.parallel import sharding as shd

    d = config.data
    steps = steps or config.diffusion.sample_steps
    cfg_scale = config.diffusion.cfg_scale if cfg_scale is None else cfg_scale
    batch_size = batch_size or config.sample.get("batch_size", 16)
    lt, lh, lw = vae.latent_shape(d.frames, d.height, d.width)
    graphdef, state = split_for_sampling(model)  # the blocks in one scan: the fastest forward
    place = lambda x: x  # noqa: E731
    if mesh is not None:
        shards = shd.batch_shards(mesh)
        batch_size = -(-batch_size // shards) * shards
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        place = lambda x: jax.device_put(x, shd.batch_sharding(mesh, x.ndim))  # noqa: E731
    vae_batch = min(vae_batch or batch_size, batch_size)

    if (reference is None) != (mask is None):
        raise ValueError("generate: reference and mask go together")

    @jax.jit
    def run(state, noise, cond, rng, ref=None, m=None):
        # rebuild the module inside the model function: the sampler's loop traces it at its own
        # level, and NNX variables must be created at the level where they are used
        def model_fn(x, t, c, drop):
            return nnx.merge(graphdef, jax.tree.map(lambda v: v, state))(x, t, c, drop)

        z = noise if m is None else jnp.where((m < 1)[:, :, None, None, None], ref, noise)  # references kept
        if isinstance(diffusion, RFlowV12):  # v1.2's sampler: its shift from the pixel size and frame count
            v12 = dataclasses.replace(diffusion, num_sampling_steps=steps)
            return v12.sample(model_fn, z, cond, rng, height=d.height, width=d.width, num_frames=d.frames, mask=m,
                              cfg_scale=cfg_scale)
        if m is None:
            return diffusion.sample(model_fn, noise, cond, rng, steps=steps, cfg_scale=cfg_scale)
        return diffusion.sample(model_fn, z, cond, rng, steps=steps, cfg_scale=cfg_scale, mask=m)

    @jax.jit
    def decode(z):  # a causal VAE's front padding cropped: exactly d.frames frames (an image: 1)
        return jnp.clip((vae.decode(z, num_frames=d.frames) + 1) * 127.5, 0, 255).round().astype(jnp.uint8)

    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress, unit="batch"):
        chunk = prompts[i : i + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n)  # keep one compiled shape
        cond = tokenizer(chunk)  # {"ids", "mask"} (trainable encoder) or {"y", "mask"} (frozen T5 / CLIP)
        if isinstance(cond, tuple):
            cond = {"ids": cond[0], "mask": cond[1]}
        index = [indices[min(i + j, len(prompts) - 1)] if indices else i + j for j in range(batch_size)]
        noise = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.key(seed), k),
                                             (lt, lh, lw, vae.latent_channels)) for k in index])
        rng = jax.random.fold_in(jax.random.key(seed + 1), i)  # the ancestral sampler's per-step noise
        extra = ()
        if mask is not None:
            extra = tuple(place(jnp.asarray(_pad_rows(np.asarray(a[i : i + n], np.float32), batch_size)))
                          for a in (reference, mask))
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():  # sequence-parallel constraints
            z = np.asarray(run(state, place(noise), {k: place(jnp.asarray(v)) for k, v in cond.items()}, rng,
                               *extra))[:n]
        for j in range(0, n, vae_batch):
            part = z[j : j + vae_batch]
            out.append(np.asarray(decode(jnp.asarray(_pad_rows(part, vae_batch))))[: len(part)])  # one shape
    return np.concatenate(out)


def generate_loops(model, config, vae, diffusion, tokenizer, prompts: list[str], latents: list[list[np.ndarray]],
                   strategies: list[str], *, loops: int = 1, length: int = 5, edit: float = 0.0,
                   align: int | None = None, scores: tuple = (None, None, None), seed: int = 0,
                   **kw) -> list[np.ndarray]:
    """Open-Sora v1.2's sampling loop: ``loops`` clips per prompt (uint8 [N, T, H, W, 3] each), loop ``i``
    conditioned by the strategies' groups for loop ``i`` and, after the first, on the last ``length`` latent frames
    of loop ``i - 1`` (re-encoded, as v1.2's ``append_generated``) at edit ratio ``edit``. ``latents`` /
    ``strategies`` (from :func:`reference_latents`) gain one reference per loop. Loop ``i`` draws the noise of seed
    ``seed + 1000·i``; ``kw`` go to :func:`generate`."""
    encode = pixel_encoder(vae)
    latents, strategies = [list(refs) for refs in latents], list(strategies)
    segments: list[np.ndarray] = []
    for loop in range(loops):
        if loop:
            for j, clip in enumerate(segments[-1]):
                latents[j].append(encode(clip[None])[0])
                group = f"{loop},{len(latents[j]) - 1},-{length},0,{length},{edit}"
                strategies[j] = f"{strategies[j]};{group}" if strategies[j] else group
        reference, mask = None, None
        if any(strategies):
            reference, mask = condition_latents(vae, (config.data.frames, config.data.height, config.data.width),
                                                latents, strategies, align, loop=loop)
        texts = append_scores([loop_prompt(p, loop) for p in prompts], *scores)
        segments.append(generate(model, config, vae, diffusion, tokenizer, texts, seed=seed + 1000 * loop,
                                 reference=reference, mask=mask, **kw))
    return segments


def pixel_encoder(vae) -> Callable[[np.ndarray], np.ndarray]:
    """``encode(clips)``: uint8 clips [N, T, H, W, 3] -> latents [N, T', h, w, C] (numpy), jitted once per shape."""
    run = jax.jit(lambda x: vae.encode(x.astype(jnp.float32) / 127.5 - 1.0))
    return lambda clips: np.asarray(run(jnp.asarray(clips)))


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` with its last row repeated up to ``rows`` rows (one compiled batch shape)."""
    return np.concatenate([a, np.repeat(a[-1:], rows - len(a), 0)]) if len(a) < rows else a


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def save_samples(out_dir: str | Path, clips: np.ndarray, prompts: list[str], fps: int = 8,
                 gifs: bool = False, indices: list[int] | None = None, grid: bool = True) -> Path:
    """mp4 per clip plus ``grid.png`` (row per clip, upscaled for viewing); with ``gifs`` also an animated GIF and
    a frame-strip PNG per clip. ``indices`` number the files (default 0, 1, ...). Returns the grid path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = max(1, 128 // clips.shape[2])
    for i, clip, p in zip(indices or range(len(clips)), clips, prompts, strict=True):
        stem = out_dir / f"{i:03d}_{_slug(p)}"
        write_video(stem.with_suffix(".mp4"), clip, fps=fps)
        if gifs:
            write_gif(stem.with_suffix(".gif"), clip, fps=fps, scale=scale)
            save_png(stem.with_suffix(".png"), frame_grid(clip[None]), scale=scale)
    grid_path = out_dir / "grid.png"
    if grid:
        (out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
        save_png(grid_path, frame_grid(clips), scale=scale)
    return grid_path


def clip_size(config, vae, *, num_frames: int | None = None, height: int | None = None, width: int | None = None,
              resolution: str | None = None, aspect_ratio: str | None = None) -> tuple[int, int, int]:
    """(frames, height, width) to sample, from the flags over the training size; one-line errors for sizes the VAE
    and the model's patch cannot take."""
    from vidjax.data.buckets import ASPECT_RATIO_NAMES, ASPECT_RATIOS, custom_tables

    d = config.data
    frames, h, w = num_frames or d.frames, d.height, d.width
    if resolution or aspect_ratio:
        if height or width:
            raise ConfigError("give --height/--width or --resolution/--aspect_ratio, not both")
        tables = {**ASPECT_RATIOS, **custom_tables(d.get("resolutions"))}
        resolution = resolution or next((n for n, (_, t) in tables.items() if (d.height, d.width) in t.values()), "")
        if resolution not in tables:
            raise ConfigError(f"--resolution={resolution!r}: expected one of {', '.join(tables)}")
        ratios = tables[resolution][1]
        key = ASPECT_RATIO_NAMES.get(aspect_ratio or "1:1", aspect_ratio or "1.00")
        if key not in ratios:
            names = {v: k for k, v in ASPECT_RATIO_NAMES.items()}
            raise ConfigError(f"--aspect_ratio={aspect_ratio!r} is not in the {resolution} table; expected one of "
                              f"{', '.join(names.get(r, r) for r in ratios)}")
        h, w = ratios[key]
    h, w = height or h, width or w
    if frames < 1 or h < 1 or w < 1:
        raise ConfigError(f"--num_frames/--height/--width must be positive, got {frames}x{h}x{w}")
    from vidjax.data.bucketed import size_problem

    problem = size_problem(vae, tuple(config.model.patch), frames, h, w, pads=config.model.name == "stdit3")
    if problem:
        raise ConfigError(f"--num_frames/--height/--width {frames}x{h}x{w}: {problem}")
    return frames, h, w


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped (with a warning). One-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: prompts file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); save the prompts file as UTF-8") from None
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts (the file is empty or has only blank lines)")
    if len(prompts) < len(lines):
        print(f"warning: {path}: skipped {len(lines) - len(prompts)} blank line(s)", file=sys.stderr)
    return prompts


def per_prompt(values: list[str] | None, prompts: list[str], flag: str) -> list[str]:
    """A repeatable flag as one value per prompt: none, one for every prompt, or exactly one each."""
    if not values:
        return [""] * len(prompts)
    if len(values) == 1:
        return values * len(prompts)
    if len(values) != len(prompts):
        raise ConfigError(f"{flag} given {len(values)} times for {len(prompts)} prompts; give it once (for all) or "
                          "once per prompt")
    return list(values)


def split_prompt_json(prompts: list[str], refs: list[str], strategies: list[str]):
    """v1.2's per-prompt options: ``a cat{"reference_path": "cat.png", "mask_strategy": "0"}`` -> the prompt, its
    reference and its mask strategy (which then override the flags for that prompt)."""
    import json

    out = []
    refs, strategies = list(refs), list(strategies)
    for i, prompt in enumerate(prompts):
        text, brace, rest = prompt.partition("{")
        if brace:
            try:
                extra = json.loads(brace + rest)
            except json.JSONDecodeError as e:
                raise InputError(f"prompt {i + 1}: the JSON after the caption is invalid ({e.msg})") from None
            unknown = sorted(set(extra) - {"reference_path", "mask_strategy"})
            if not isinstance(extra, dict) or unknown:
                raise InputError(f"prompt {i + 1}: unknown keys {unknown} in its JSON; expected reference_path, "
                                 "mask_strategy")
            refs[i] = extra.get("reference_path", refs[i])
            strategies[i] = extra.get("mask_strategy", strategies[i])
        out.append(text.strip())
    return out, refs, strategies


def reference_latents(vae, size: tuple[int, int, int], refs: list[str], strategies: list[str]):
    """(latents, strategies): each prompt's references (``;``-joined paths) read, resized and centre-cropped to the
    clip size and encoded (a list of [T', h, w, C] per prompt), and its mask strategy (v1.2: a reference without one
    conditions on its first latent frame, ``"0"``)."""
    from vidjax.data.video_io import read_video, resize_clip

    frames, height, width = size
    encode = pixel_encoder(vae)
    encoded: dict[str, np.ndarray] = {}
    latents, out = [], []
    for i, (paths, strategy) in enumerate(zip(refs, strategies, strict=True)):
        if paths and not strategy:
            strategy = "0"
        if strategy and not paths:
            raise InputError(f"prompt {i + 1}: --mask_strategy {strategy!r} without a --reference")
        mine = []
        for path in [q for q in (paths or "").split(";") if q]:
            if path not in encoded:
                clip = resize_clip(read_video(path), height, width)  # a missing / unreadable file: one line
                encoded[path] = encode(clip[None])[0]
            mine.append(encoded[path])
        latents.append(mine)
        out.append(strategy)
    return latents, out


def condition_latents(vae, size: tuple[int, int, int], latents: list[list[np.ndarray]], strategies: list[str],
                      align: int | None = None, loop: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reference latents [N, T', h, w, C] with each prompt's frames written where its mask strategy says for this
    ``loop``, mask [N, T']) for :func:`generate`, from :func:`reference_latents`."""
    from vidjax.diffusion.conditions import apply_mask_strategy

    lt, lh, lw = vae.latent_shape(*size)
    pairs = [apply_mask_strategy(np.zeros((lt, lh, lw, vae.latent_channels), np.float32), refs, strategy, loop=loop,
                                 align=align) for refs, strategy in zip(latents, strategies, strict=True)]
    return np.stack([z for z, _ in pairs]), np.stack([m for _, m in pairs])


def loop_overlap(vae, size: tuple[int, int, int], length: int) -> int:
    """Pixel frames a loop after the first drops: those of its first ``length`` latent frames, which repeat the end
    of the previous loop (v1.2's ``dframe_to_frame``: 5 latent frames of its VAE's 17-frame chunks are 17 frames)."""
    frames = size[0]
    lt = vae.latent_shape(*size)[0]
    if not 1 <= length < lt:
        raise ConfigError(f"--condition_frame_length={length}: must be at least 1 and below the clip's {lt} latent "
                          "frames")
    chunk = getattr(vae, "micro_frame_size", None)
    if chunk:  # v1.2's VAE encodes chunk-frame pieces into micro_z_frame_size latent frames each
        zc = vae.micro_z_frame_size
        if length % zc or frames % chunk:
            raise ConfigError(f"--loop with this VAE: --condition_frame_length={length} must be a multiple of {zc} "
                              f"and --num_frames={frames} of {chunk} (its {chunk}-frame chunks)")
        return length // zc * chunk
    ft = vae.downsample[0]
    if frames % ft:
        raise ConfigError(f"--loop: --num_frames={frames} must be a multiple of the VAE's time stride {ft}")
    return length * ft


def imported_model(checkpoint: str, config, vae_dir: str | None = None, text_dir: str | None = None):
    """(config, model, report) for an imported checkpoint: the model of ``config`` (its ``model``, ``text`` and
    ``vae`` entries; ``vae_dir`` / ``text_dir`` replace their paths) with the checkpoint's weights, loaded strictly."""
    from flax import nnx

    from vidjax.interop import load_pretrained
    from vidjax.models.t2v import build_model
    from vidjax.models.vae import vae_architecture

    path = Path(checkpoint)
    if not path.exists():
        raise MissingFileError(f"--checkpoint {path}: not found")
    if config.text.encoder == "trainable":
        raise ConfigError(f"--checkpoint {path}: the config's text.encoder is 'trainable', whose weights an imported "
                          "checkpoint does not hold; use a config with text.encoder='t5' (and --text DIR)")
    with config.unlocked():
        if vae_dir:
            if config.vae.type not in ("sd_vae", "opensora_vae", "causal_vae"):
                raise ConfigError(f"--vae {vae_dir}: the config's vae.type={config.vae.type!r} loads no directory; "
                                  "expected sd_vae, opensora_vae or causal_vae")
            config.vae.from_pretrained = str(vae_dir)
        if text_dir:
            config.text.path = str(text_dir)
    for what, folder in (("--vae", config.vae.get("from_pretrained")), ("--text", config.text.get("path"))):
        if folder and not Path(folder).exists():
            raise MissingFileError(f"{what} {folder}: not found (a local directory; nothing is downloaded)")
    if path.is_dir():  # a published v1.2 directory: the architecture is its config.json, not the config's
        from vidjax.interop.pretrained import stdit3_config_of
        from vidjax.models.t2v import STDIT3_FIELDS

        cfg = stdit3_config_of(path)
        with config.unlocked():
            config.model.name = "stdit3"
            config.model.size = ""
            for ours, theirs in STDIT3_FIELDS.items():
                if ours in ("dtype", "remat", "attention_impl", "sequence_parallel"):
                    continue  # vidjax's numerics: the config's
                config.model[ours] = getattr(cfg, theirs)
            config.text.dim, config.text.max_length = cfg.caption_channels, cfg.model_max_length
    channels = vae_architecture(config.vae).latent_channels
    model = build_model(config, nnx.Rngs(config.seed), latent_channels=channels)
    report = load_pretrained(model.dit, path)
    return config, model, report


def main(argv: list[str] | None = None) -> int:
    from vidjax.config import add_config_arguments, parse_config_args
    from vidjax.parallel import distributed

    distributed.initialize()  # several processes when the environment says so (JAX_COORDINATOR_ADDRESS, SLURM, TPU)
    p = argparse.ArgumentParser(prog="python -m vidjax.sample", description=__doc__.split("\n")[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir holding checkpoints/")
    src.add_argument("--checkpoint", help="an imported model: Open-Sora / PixArt .pth or .safetensors, a vidjax "
                     "export, or an OpenSora-STDiT-v3 directory (with --config)")
    add_config_arguments(p, required=False)  # with --checkpoint: the architecture, objective and sizes
    p.add_argument("--vae", help="with --checkpoint: the local VAE directory (default: the config's)")
    p.add_argument("--text", help="with --checkpoint: the local T5 directory (default: the config's)")
    p.add_argument("--prompt", action="append", help="a caption (repeatable)")
    p.add_argument("--prompts", help="a text file with one caption per line")
    p.add_argument("--out", default="samples", help="an .mp4 path (one prompt) or a folder")
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default: the training clips')")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--resolution", default=None, help="a bucket resolution name (240p, or the run's e.g. 64px)")
    p.add_argument("--aspect_ratio", default=None, help="with --resolution: 9:16, 1:1, 1:2, ... (default 1:1)")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the files (default: the config's)")
    p.add_argument("--sampler", default=None, help="iddpm: ancestral or ddim; rectified flow: euler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--cfg_scale", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--batch_size", type=int, default=None, help="prompts per compiled batch (default: the config's)")
    p.add_argument("--vae_batch", type=int, default=None, help="clips decoded at a time (default: the batch)")
    p.add_argument("--sequence_parallel", type=int, default=1, metavar="N",
                   help="split each clip's frames over N devices (long clips; the model's sequence_parallel scheme)")
    p.add_argument("--reference", action="append", help="condition frames (v1.2): an image or video per prompt, "
                   "several joined by ';' (repeatable: one per prompt, or one for all)")
    p.add_argument("--mask_strategy", action="append", help="v1.2's loop,ref,ref_start,target_start,length,"
                   "edit_ratio groups joined by ';' (repeatable like --reference; '0' = image-to-video)")
    p.add_argument("--loop", type=int, default=1, help="v1.2's loops: N clips, each after the first continuing "
                   "the last --condition_frame_length latent frames of the one before ('|0|text|2|text' prompts "
                   "change the text from a loop on)")
    p.add_argument("--condition_frame_length", type=int, default=5, help="latent frames shared between loops "
                   "(v1.2's default 5 = 17 frames of its VAE)")
    p.add_argument("--condition_frame_edit", type=float, default=0.0, help="their edit ratio (0 keeps them)")
    p.add_argument("--align", type=int, default=None, help="round mask-strategy starts to this many latent frames")
    p.add_argument("--aes", type=float, default=None, help="append v1.2's 'aesthetic score: X.' to each prompt")
    p.add_argument("--flow", type=float, default=None, help="append v1.2's 'motion score: X.' to each prompt")
    p.add_argument("--camera_motion", default=None, help="append v1.2's 'camera motion: X.' to each prompt")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="the EMA weights (default) or, with --no-ema, the raw ones")
    p.add_argument("--no_ema", dest="ema", action="store_false", help=argparse.SUPPRESS)
    a, imported_config = parse_config_args(p, argv)
    if a.checkpoint and imported_config is None:
        p.error("--checkpoint needs --config (the config describing its architecture, objective and sizes)")
    if a.workdir and (imported_config is not None or a.vae or a.text):
        p.error("--config, --vae and --text go with --checkpoint; a --workdir carries its own")
    prompts = list(a.prompt or []) + (read_prompts(a.prompts) if a.prompts else [])
    if not prompts:
        p.error("give --prompt or --prompts")
    for flag, value in (("--steps", a.steps), ("--batch_size", a.batch_size), ("--vae_batch", a.vae_batch),
                        ("--fps", a.fps)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}={value}: must be at least 1")
    out = Path(a.out)
    if out.suffix == ".mp4" and len(prompts) != 1:
        raise ConfigError(f"--out {out} is a single .mp4 but {len(prompts)} prompts were given; give a folder")
    check_writable(out, what="--out")  # before any compute
    from vidjax.checkpoint import restore_model
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.parallel.mesh import make_mesh

    if a.checkpoint:
        config, model, report = imported_model(a.checkpoint, imported_config, a.vae, a.text)
        print(report.summary(), file=sys.stderr)
        step = Path(a.checkpoint).name
    else:
        config, model, step = restore_model(a.workdir, a.step, ema=a.ema)
    vae = build_vae(config.vae)
    size = clip_size(config, vae, num_frames=a.num_frames, height=a.height, width=a.width,
                     resolution=a.resolution, aspect_ratio=a.aspect_ratio)
    with config.unlocked():
        config.data.frames, config.data.height, config.data.width = size
        if a.sampler is not None:
            name = config.diffusion.get("name", "rflow")
            allowed = ("ancestral", "ddim") if name == "iddpm" else ("euler",)
            if a.sampler not in allowed:
                raise ConfigError(f"--sampler={a.sampler!r}: the {name} objective samples with "
                                  f"{' or '.join(allowed)}")
            if name == "iddpm":
                config.diffusion.sampler = a.sampler
    fps = a.fps or config.sample.fps
    prompts, refs, strategies = split_prompt_json(prompts, per_prompt(a.reference, prompts, "--reference"),
                                                  per_prompt(a.mask_strategy, prompts, "--mask_strategy"))
    if a.loop < 1:
        raise ConfigError(f"--loop={a.loop}: must be at least 1")
    for text in prompts:  # bad |loop|text| syntax: one line before any compute
        loop_prompt(text, 0)
    conditioned = any(strategies) or any(refs) or a.loop > 1
    if conditioned and config.diffusion.get("name") not in ("rflow", "rflow_v12"):
        raise ConfigError(f"--reference / --mask_strategy / --loop: condition frames need a rectified-flow model "
                          f"(v1.2); this one is {config.diffusion.get('name')!r}")
    overlap = loop_overlap(vae, size, a.condition_frame_length) if a.loop > 1 else 0
    devices = jax.local_devices()
    if a.sequence_parallel < 1 or len(devices) % a.sequence_parallel:
        raise ConfigError(f"--sequence_parallel={a.sequence_parallel}: must divide the {len(devices)} local devices")
    # every local device on the data axis, or groups of --sequence_parallel devices sharing each clip's frames
    mesh = make_mesh(None, devices=devices, sequence=a.sequence_parallel)
    if a.sequence_parallel > 1:
        from vidjax.parallel.sequence import check_parallel

        check_parallel(config, mesh, vae, size)
    # several processes (a pod, SLURM, launch/local_multiprocess.sh): process r samples prompts r, r + P, ...
    rank, procs = jax.process_index(), jax.process_count()
    mine = list(range(rank, len(prompts), procs))
    clips = np.zeros((0, *size, 3), np.uint8)
    if mine:
        latents, my_strategies = reference_latents(vae, size, [refs[i] for i in mine], [strategies[i] for i in mine])
        segments = generate_loops(model, config, vae, build_diffusion(config.diffusion), text_inputs(config),
                                  [prompts[i] for i in mine], latents, my_strategies, loops=a.loop,
                                  length=a.condition_frame_length, edit=a.condition_frame_edit, align=a.align,
                                  scores=(a.aes, a.flow, a.camera_motion), seed=a.seed, steps=a.steps,
                                  cfg_scale=a.cfg_scale, batch_size=a.batch_size, progress=True, mesh=mesh,
                                  vae_batch=a.vae_batch, indices=mine)
        clips = np.concatenate([segments[0], *[c[:, overlap:] for c in segments[1:]]], axis=1)
    prompts = append_scores(prompts, a.aes, a.flow, a.camera_motion)  # the file names, as before
    source = f"checkpoint {step}" if a.checkpoint else f"checkpoint step {step}"
    shown = clips.shape[1:4] if len(clips) else size
    what = f"{'x'.join(map(str, shown))}, {source}, {len(jax.local_devices())} device(s)"
    if tuple(shown[1:]) != tuple(size[1:]):  # an SD-VAE decodes 8·(H // 8): v1.2's 240×426 comes out 240×424
        what += f"; asked {size[1]}x{size[2]}, the VAE decodes {shown[1]}x{shown[2]}"
    if a.loop > 1:
        what += f"; {a.loop} loops of {size[0]} frames, {overlap} shared"
    if procs > 1:
        what += f" × {procs} processes"
    if procs > 1 and out.suffix != ".mp4":
        print(f"process {rank} of {procs}: sampled prompts {mine}", file=sys.stderr)
        save_samples(out, clips, [prompts[i] for i in mine], fps=fps, gifs=True, indices=mine, grid=False)
        distributed.barrier("vidjax.sample: clips written")
        if rank == 0:  # the grid of every prompt, from the clips all processes wrote
            files = [out / f"{i:03d}_{_slug(p)}.mp4" for i, p in enumerate(prompts)]
            from vidjax.data.video_io import read_video

            every = np.stack([read_video(f) for f in files])
            (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
            save_png(out / "grid.png", frame_grid(every), scale=max(1, 128 // size[1]))
            print(f"wrote {len(prompts)} clips (mp4, gif, png) to {out}/ and {out / 'grid.png'} ({what})")
        return 0
    if rank > 0:
        return 0
    if out.suffix == ".mp4":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_video(out, clips[0], fps=fps)
        write_gif(out.with_suffix(".gif"), clips[0], fps=fps, scale=max(1, 128 // clips.shape[2]))
        save_png(out.with_suffix(".png"), frame_grid(clips), scale=max(1, 128 // clips.shape[2]))
        print(f"wrote {out}, {out.with_suffix('.gif')} and {out.with_suffix('.png')} ({what})")
    else:
        grid = save_samples(out, clips, prompts, fps=fps, gifs=True)
        print(f"wrote {len(prompts)} clips (mp4, gif, png) to {out}/ and {grid} ({what})")
    return 0


if __name__ == "__main__":
    cli.run("vidjax.sample", main)
