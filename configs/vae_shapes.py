"""Train a causal 3D video VAE on the built-in `shapes` dataset (4×8×8 compression) on a CPU.

    python -m vidjax.train --config configs/vae_shapes.py             # causal KL-VAE, 4×8×8
    python -m vidjax.train --config configs/vae_shapes.py:vq          # VideoGPT-style VQ-VAE, 4×8×8
    python -m vidjax.train --config configs/vae_shapes.py:adversarial # + PatchGAN term after step 1000
    python -m vidjax.train --config configs/vae_shapes.py:stage0      # batch 4: stage 0 of shapes_tiny.py
    python -m vidjax.train --config configs/vae_shapes.py:stage0_images  # + still images: three_stage_shapes.py
    python -m vidjax.train --config configs/vae_shapes.py:quick       # seconds: the CI smoke run

The trained VAE is then a ``vae`` entry for the diffusion configs:
``c.vae = dict(type="checkpoint", path="runs/vae_shapes")`` (8×32×32 clips -> 2×4×4×16 latents).

The default compresses 8 frames of 32×32 pixels 4× in time and 8× in space: the pixels are folded
into 2×2 patches (12 channels at 16×16), then two stride-(2, 2, 2) causal conv levels (32, 32, 64
channels, one ResBlock per level). No conv runs at full resolution, which keeps a step at about a third
of a second on 2 CPU cores. The loss is plain MSE: L1 alone gets stuck predicting the background for a long time.
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module
from vidjax.errors import ConfigError


def _sibling(name: str):
    return load_config_module(Path(__file__).with_name(f"{name}.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.task = "vae"
    c.name = "vae_shapes"
    c.seed = 0
    c.progress = True

    # data: exactly the data section of configs/shapes_tiny.py (same clips, same folder); held-out clips
    # are generated next to them. To train on your own videos set data.captions (and eval.captions).
    c.data = _sibling("shapes_tiny").get_config().data

    # the architecture: any trainable build_vae entry (written to <workdir>/vae_config.json)
    c.vae = ConfigDict(dict(
        type="causal_vae",
        model=dict(
            in_out_channels=3,
            latent_embed_dim=16,
            embed_dim=16,  # latent channels
            filters=32,
            num_res_blocks=1,
            channel_multipliers=(1, 1, 2),
            temporal_downsample=(True, True),  # 4× in time
            spatial_downsample=(True, True),  # 4× in space, times patch_size 2 = 8×
            patch_size=2,
            num_groups=8,
        ),
    ))

    # per-pixel loss weights (see vidjax/training/vae.py)
    c.loss = ConfigDict(dict(
        l1=0.0,
        l2=1.0,
        kl_weight=1e-6,  # LDM / Open-Sora's weight on the summed KL (divided by pixels like the recon terms)
        sample_posterior=True,  # decode a posterior sample (False: the mean, a plain autoencoder + KL term)
        image_weight=0.0,  # + a random frame of each clip reconstructed alone, as a still image (1-frame video)
        image_l1=None,  # the still-image term's L1 / L2 weights (None: the same as l1 / l2)
        image_l2=None,
        ssim_weight=0.0,  # optional structural (perceptual-style) term: weight · (1 - SSIM)
        adversarial_weight=0.0,  # optional hinge PatchGAN term, from step adversarial_start
        adversarial_start=0,
        disc_filters=32,
        disc_lr=2e-4,
    ))

    c.train = ConfigDict(dict(
        steps=3400,  # 18.6 training minutes on 2 idle CPU cores (README)
        batch_size=8,
        lr=2e-3,
        final_lr_frac=0.05,
        warmup=50,
        weight_decay=0.0,
        b2=0.99,
        adam_eps=1e-8,
        grad_clip=1.0,
        ema_decay=0.99,
        log_every=20,
        ckpt_every=400,
        keep_checkpoints=2,
        crop_prob=0.0,  # fraction of windows cropped at the clip's own scale instead of resized whole
        latent_norm=False,  # measure per-channel latent shift / scale at the end (vae_config.json), as v1.2's VAE
        latent_norm_clips=256,
        # XLA's CPU backend hands only dot fusions to YNNPACK: this VAE's step 0.77x the time of XLA's default
        # (same run, alternating; the README's Speed section). Ignored on GPU / TPU
        cpu_compiler_options=dict(xla_cpu_experimental_ynn_fusion_type="LIBRARY_FUSION_TYPE_DOT"),
    ))

    # PSNR / SSIM on held-out clips (shapes: the `heldout` split of unseen (shape, colour) pairs)
    c.eval = ConfigDict(dict(captions="", clips=64, batch_size=16, every=400, show=6))

    if arg == "vq":  # VideoGPT-style VQ-VAE at the same 4×8×8 compression, 512 codes of dimension 16
        c.name = "vae_shapes_vq"
        c.vae = ConfigDict(dict(type="vq_vae", model=dict(
            n_hiddens=64, n_res_layers=2, downsample=(4, 8, 8), embedding_dim=16, n_codes=512, num_groups=8,
            attn_heads=2, axial_attention=True, commitment_weight=0.25, ema_decay=0.99)))
        c.train.ema_decay = 0.0  # evaluate the live weights: the codebook tracks them, not an average
    elif arg == "adversarial":
        c.name = "vae_shapes_adv"
        c.loss.adversarial_weight, c.loss.adversarial_start = 0.05, 1000
    elif arg in ("stage0", "stage0_norm"):  # stage 0 of configs/shapes_tiny.py: the same model, batch 4 (more steps
        c.name = "vae_shapes_stage0"                  # per minute); _norm (shapes_tiny.py:v12) adds the latent
        c.train.update(steps=5000, batch_size=4, ckpt_every=1000)  # normalisation
        c.eval.every = 1000
        if arg == "stage0_norm":
            c.name += "_norm"
            c.train.latent_norm = True
    elif arg == "stage0_images":  # stage 0 of configs/three_stage_shapes.py: the VAE also serves image buckets
        c.name = "vae_shapes_stage0_images"
        # 3,000 steps (21.3 dB held-out; 4,000: 23.3 dB) keep the whole schedule under 60 minutes here with every
        # quality bar met (README); the extra 1,000 cost 3 minutes
        c.train.update(steps=3000, batch_size=4, ckpt_every=1000)
        c.train.crop_prob = 0.5  # half the windows cropped from 64×64 / 64×96 clips at their own scale, not resized
        c.train.latent_norm = True  # unit-variance latents for the denoiser: stills' shape 52% -> 60% after stage 1
        c.loss.image_weight = 0.5
        c.loss.l1, c.loss.image_l1 = 1.0, 0.0  # L1 on clips sharpens moving edges; stills keep the L2 term alone
        c.eval.every = 1000
    elif arg == "quick":  # CI-sized: same code path, seconds
        c.name = "vae_shapes_quick"
        c.data.num_clips, c.data.root = 32, "data/shapes_quick"
        c.vae.model.update(filters=8, latent_embed_dim=4, embed_dim=4)
        c.train.update(steps=6, batch_size=8, warmup=2, log_every=1, ckpt_every=3)
        c.eval.update(clips=4, batch_size=4, every=0, show=2)
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/vae_shapes.py; expected vq, adversarial, stage0, "
                          "stage0_norm, stage0_images or quick")
    return c
