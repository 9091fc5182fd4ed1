"""The default run: a tiny STDiT learns the built-in `shapes` dataset on a laptop CPU (≤ 30 min).

As Open-Sora does, the diffusion model works in a VAE's latent space: stage 0 trains the causal video VAE
of configs/vae_shapes.py (its ``stage0`` schedule) into ``runs/vae_shapes_stage0`` when that folder holds no
trained VAE yet, then the STDiT learns 2×4×4×16 latents (32 tokens per clip).

    python -m vidjax.train --config configs/shapes_tiny.py
    python -m vidjax.train --config configs/shapes_tiny.py --config.train.steps=200   # a quick look
    python -m vidjax.train --config configs/shapes_tiny.py:pixels                    # no VAE: 8×32×32 pixels
    python -m vidjax.train --config configs/shapes_tiny.py:iddpm                     # Open-Sora v1.0's objective
    python -m vidjax.train --config configs/shapes_tiny.py:v12                       # v1.2: STDiT3 + condition frames
    python -m vidjax.train --config configs/shapes_tiny.py:sit                       # SiT: GVP path, Heun ODE
    python -m vidjax.train --config configs/shapes_tiny.py:latte                     # Latte, interleaved blocks
    python -m vidjax.train --config configs/shapes_tiny.py:dit                       # full attention (or :uvit)

Variants combine with commas (``:pixels,iddpm``); everything else is an override (big_vision style).
"""

from ml_collections import ConfigDict

from vidjax.errors import ConfigError


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.name = "shapes_tiny"
    c.seed = 0
    c.progress = True

    # data: 8 frames of 32×32 pixels; generated into data.root when absent
    c.data = ConfigDict(dict(
        captions="",  # a caption file (JSON / JSONL / CSV) to train on instead of `shapes`
        packed="",  # or a packed dataset (python -m vidjax.data pack) to train on
        video_root="",  # folder the caption file's paths are relative to (default: its own folder)
        root="data/shapes_8x32x32",
        num_clips=2000,
        seed=0,
        frames=8,
        height=32,
        width=32,
        frame_interval=1,
        cache_in_memory=True,
        cache_latents=True,  # latent precompute: the frozen VAE encodes every clip once, not every step
        num_threads=2,
    ))

    # text: a small trainable word embedding; for real captions encoder="t5" (or "clip") with path a local
    # Hugging Face directory: each caption is embedded once into cache_dir (default <workdir>/cache/text)
    c.text = ConfigDict(dict(encoder="trainable", vocab_size=512, max_length=8, dim=64, path="", cache_dir=""))

    # compression: a causal 3D VAE (4×8×8) trained on the same clips by stage 0 when absent
    c.vae = ConfigDict(dict(type="checkpoint", path="runs/vae_shapes_stage0",
                            train_config="configs/vae_shapes.py:stage0"))

    # denoiser: STDiT with Open-Sora v1.0 blocks
    c.model = ConfigDict(dict(
        name="stdit",
        size="",
        depth=4,
        hidden=128,
        heads=4,
        mlp_ratio=4.0,
        patch=(1, 1, 1),
        learn_sigma=False,
        space_scale=1.0,
        time_scale=1.0,
        qk_norm=False,
        temporal_rope=False,
        temporal_pos="block0",  # block0 (Open-Sora v1.0) | input (every token knows its frame)
        dtype="float32",
        remat="none",
        skips=False,  # U-ViT's long skip connections (concatenate + linear) between shallow and deep blocks
        scan_layers=False,  # unrolled blocks: 15–26% faster steps here, ~1 s more compile; True: one nnx.scan
        attention_impl="xla",
        freeze="",  # "" | not_temporal | text
        # with mesh.sequence > 1: auto (STDiT: dsp, DiT: ulysses) | dsp | ulysses | allgather | ring
        sequence_parallel="auto",
    ))

    # devices (docs/parallel.md): sizes within a slice, then across slices (DCN); -1 = the rest.
    # The default puts every device on `data` (one device on a laptop: the plain single-device run).
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_sequence=1,
                             dcn_tensor=1))
    # several processes: usually from the environment (TPU pod, SLURM, launch/local_multiprocess.sh)
    c.distributed = ConfigDict(dict(coordinator="", num_processes=0, process_id=-1))

    # objective and sampler
    c.diffusion = ConfigDict(dict(
        name="rflow",
        sample_method="logit-normal",
        use_timestep_transform=False,
        transform_scale=1.0,  # with use_timestep_transform: shift ratio = sqrt(H·W·64/512²)·sqrt(T)·scale
        prediction="v",  # v (Open-Sora v1.2) | x0 (the network outputs clean data; better on raw pixels)
        loss_weight="v",  # v (Open-Sora) | x0: velocity MSE × s², i.e. the clean-data MSE
        caption_dropout=0.1,
        sample_steps=30,
        cfg_scale=4.0,
    ))

    c.train = ConfigDict(dict(
        steps=4000,
        batch_size=16,
        lr=1e-3,
        final_lr_frac=0.1,
        warmup=100,
        weight_decay=0.0,
        b2=0.99,
        adam_eps=1e-8,
        grad_clip=1.0,
        ema_decay=0.995,
        log_every=20,
        ckpt_every=250,
        keep_checkpoints=2,
        init_from="",  # PixArt-α / Open-Sora / exported safetensors or .pth to start the denoiser from
        init_allow_missing=False,  # accept absent temporal attention (PixArt image weights)
    ))

    # after training: sample the evaluation prompts and score them
    c.sample = ConfigDict(dict(num_prompts=48, seed=0, fps=8, batch_size=48, eval_every=1000))

    variants = [a for a in (arg or "").split(",") if a]
    unknown = set(variants) - {"pixels", "iddpm", "sit", "latte", "dit", "uvit", "v12", "quick"}
    if unknown:
        raise ConfigError(f"unknown variant(s) {sorted(unknown)} of configs/shapes_tiny.py; expected pixels, iddpm, "
                         "sit, latte, dit, uvit, v12 or quick (comma-separated)")
    if "pixels" in variants or "quick" in variants:  # no VAE: 2×4×4 patches of raw pixels, 256 tokens per clip
        c.name = "shapes_tiny_pixels"
        c.vae = ConfigDict(dict(type="raw"))
        c.model.patch = (2, 4, 4)
        c.diffusion.prediction = "x0"  # v-prediction leaves patch-shaped fragments here (README)
    if "iddpm" in variants:  # Open-Sora v1.0's objective: eps + learned-range variance, ancestral sampling
        c.name += "_iddpm"
        c.model.learn_sigma = True
        c.diffusion = ConfigDict(dict(name="iddpm", learn_sigma=True, sampler="ancestral", caption_dropout=0.1,
                                      sample_steps=100, cfg_scale=4.0))
    if "sit" in variants:  # SiT's interpolants (vidjax.diffusion.sit); e.g. --config.diffusion.path=vp
        c.name += "_sit"
        c.diffusion = ConfigDict(dict(name="sit", path="gvp", prediction="velocity", loss_weight="none",
                                      sampler="heun", caption_dropout=0.1, sample_steps=30, cfg_scale=4.0))
    if "latte" in variants:  # Latte's factorisations (vidjax.models.latte); --config.model.variant=factorized_heads
        c.name += "_latte"
        c.model.update(name="latte", variant="interleaved")
    if "dit" in variants:  # the full-attention baseline; --config.model.conditioning=adaln | token-concat
        c.name += "_dit"
        c.model.update(name="dit", conditioning="cross-attn")
    if "uvit" in variants:  # U-ViT: full attention, the caption as tokens, long skips between shallow and deep blocks
        c.name += "_uvit"
        c.model.update(name="dit", conditioning="token-concat", skips=True)
    if "v12" in variants:  # Open-Sora v1.2's model and condition frames: STDiT3 (qk-norm, temporal RoPE, x_mask),
        # trained with v1.2's mask_ratios so one model also continues a clip from its first latent frame
        # (python -m vidjax.evaluate --workdir runs/shapes_tiny_v12 --continue_from 1 --split heldout)
        c.name += "_v12"
        c.model.name, c.model.qk_norm = "stdit3", True
        if c.vae.type == "checkpoint":  # v1.2's VAE normalises its latents (shift / scale); so does this one
            c.vae.update(path="runs/vae_shapes_stage0_norm", train_config="configs/vae_shapes.py:stage0_norm")
        c.diffusion.mask_ratios = {"image_head": 0.3, "quarter_random": 0.05, "image_tail": 0.05, "random": 0.05}
    if "quick" in variants:  # CI-sized smoke run: same code path, seconds instead of minutes
        c.name = c.name.replace("shapes_tiny_pixels", "shapes_quick")  # keeps the other variants' suffixes
        c.train.steps, c.train.ckpt_every, c.train.log_every, c.train.warmup, c.train.batch_size = 6, 3, 1, 2, 8
        c.model.depth, c.model.hidden = 2, 64
        c.data.num_clips, c.data.root = 64, "data/shapes_quick"
        c.sample.num_prompts, c.sample.batch_size, c.sample.eval_every = 4, 4, 0
        c.diffusion.sample_steps = 4
    return c
