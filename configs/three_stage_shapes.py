"""Open-Sora's three-stage schedule on the built-in `shapes`, on a CPU: images, then video, then mixed buckets.

    python -m vidjax.train --config configs/three_stage_shapes.py              # stage 0 (VAE) + stages 1-3
    python -m vidjax.train --config configs/three_stage_shapes.py:quick        # the same path in seconds (CI)
    python -m vidjax.train --config configs/three_stage_shapes.py --config.stages.stage3.train.steps=500
    python -m vidjax.train --config configs/three_stage_shapes.py:stage3 --config.train.init_from=runs/x/stage2
                                                                              # one stage alone, as a plain run

The data mixes still images (a shape of a colour, "a red circle") at 64×64 and 96×96 with 17-frame clips at 64×64
and at 64×96 (a non-square aspect ratio, 2:3). As in Open-Sora v1.1+, buckets (``data.bucket_config``, Open-Sora's
format, over the small named sizes of ``data.resolutions``) decide which clips each stage sees, at which size and
batch size:

* stage 1: images only, at two resolutions (64px and 96px), temporal attention frozen at zero (an image model);
* stage 2: 8-frame video at 32×32; temporal attention starts at zero (``init_reset``), so the model starts as the
  stage-1 image model applied frame by frame;
* stage 3: mixed buckets: 16 frames at 64×64 and 64×96, 8 frames at 32×32, and images.

Each stage starts from the previous stage's final EMA weights, runs in ``runs/three_stage_shapes/<stage>``, and is
evaluated on its buckets by vidjax.evaluate's judge (images on colour and shape). Stage 0 trains the causal VAE
(configs/vae_shapes.py:stage0_images on these clips' 8×32×32 windows and, alone, their frames as still images)
into ``vae.path`` when it holds none.
"""

from ml_collections import ConfigDict

from vidjax.config import load_config_module
from vidjax.errors import ConfigError


def get_config(arg: str | None = None) -> ConfigDict:
    from pathlib import Path

    c = load_config_module(Path(__file__).with_name("shapes_tiny.py")).get_config()
    c.name = "three_stage_shapes"
    d = c.data
    d.root = "data/shapes_mix"
    # (count, frames, height, width); 1 frame = a still image (PNG). The loader writes this mix (data.num_clips unused)
    d.mix = [(1500, 1, 64, 64), (800, 1, 96, 96), (1000, 17, 64, 64), (800, 17, 64, 96)]
    # named sizes beyond Open-Sora's tables: one (height, width) per aspect ratio. The stage-0 VAE (8x in space)
    # keeps shapes of 64 px and more (its own reconstructions score 98-100% on shape; moving squares alone 93% at
    # 64x64, 86% at 64x96) but not of 32 px stills (70%) or 48x96 clips (88-90%), so those are not judged for shape:
    # 32px serves stage 2's low-resolution video.
    d.resolutions = {"32px": [(32, 32)], "64px": [(64, 64), (64, 96)], "96px": [(96, 96)]}
    d.bucket_config = {}  # set by each stage
    d.bucket_batch = "global"
    c.vae.path = "runs/vae_shapes_mix_stage0_images"
    c.vae.train_config = "configs/vae_shapes.py:stage0_images"  # the VAE also learns still images
    c.train.init_reset = ""
    c.model.dtype = "bfloat16"  # mixed precision as Open-Sora trains: fp32 weights, bf16 matmuls (1.3x here)
    c.sample.buckets = []
    c.sample.eval_every = 0
    c.train.ckpt_every = 250
    # XLA's CPU backend hands only dot fusions to YNNPACK, not its bf16 elementwise and reduction fusions: the
    # stage-1 step 0.75x, stage 3's 16x64x96 step 0.78x the time of XLA's default (README, Speed). GPU / TPU: ignored
    c.train.cpu_compiler_options = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

    c.stages = ConfigDict()
    c.stages.stage1 = dict(  # text-to-image at two resolutions; temporal attention frozen at its zero init
        data=dict(bucket_config={"96px": {1: (0.4, 8)}, "64px": {1: (1.0, 16)}}),  # 60% of 96 px stills at 64 px
        model=dict(freeze="temporal"),
        # squares come last: 64 px alone 79% at 6,000, 94% at 9,000 steps; this stage at 8,000: 88% / 92% (64 / 96 px)
        train=dict(steps=10000, warmup=100),
        sample=dict(buckets=["1x64x64", "1x96x96"]),
    )
    c.stages.stage2 = dict(  # 8-frame video at the low resolution; temporal attention starts again at zero
        data=dict(bucket_config={"32px": {8: (1.0, 16)}}),
        model=dict(freeze=""),
        train=dict(steps=3000, warmup=50, init_reset="attn_temp"),  # motion is learnt here (1,000: 25%; 3,000: 100%)
        sample=dict(buckets=["8x32x32"]),
    )
    c.stages.stage3 = dict(  # mixed buckets: images and clips up to 16 frames, square and 2:3
        data=dict(bucket_config={"64px": {1: (0.4, 16), 16: (0.8, 8)}, "32px": {1: (1.0, 32), 8: (1.0, 16)}}),
        model=dict(freeze=""),
        # 6,000 steps: 16x64x64 94% shape, 16x64x96 92% (README); 5,000 steps: 16x64x64 88%, under the bar
        train=dict(steps=6000, warmup=50),
        sample=dict(buckets=["16x64x64", "16x64x96", "1x64x64"]),
    )

    variants = [a for a in (arg or "").split(",") if a]
    known = {"quick", "stage1", "stage2", "stage3"}
    if set(variants) - known:
        raise ConfigError(f"unknown variant(s) {sorted(set(variants) - known)} of configs/three_stage_shapes.py; "
                          "expected quick and/or one of stage1, stage2, stage3")
    if "quick" in variants:  # CI-sized: no VAE (raw pixels, x0), tiny model, few clips and steps
        c.name = "three_stage_quick"
        d.root = "data/shapes_mix_quick"
        d.mix = [(24, 1, 16, 16), (16, 9, 16, 16), (16, 9, 12, 24)]
        d.frames, d.height, d.width = 4, 8, 8
        d.resolutions = {"8px": [(8, 8)], "16px": [(16, 16), (12, 24)]}
        c.vae = ConfigDict(dict(type="raw"))
        c.model.dtype = "float32"  # exact checks (stage 2 starts as the image model, to 1e-5) need fp32
        c.train.cpu_compiler_options = {}  # and XLA's default kernels (2 processes match 1 to 1e-5: 1.8e-5 without)
        c.model.patch = (1, 4, 4)
        c.model.depth, c.model.hidden = 2, 32
        c.diffusion.prediction = "x0"
        c.diffusion.sample_steps = 2
        c.train.log_every, c.train.ckpt_every = 1, 2
        c.sample.num_prompts, c.sample.batch_size = 2, 2
        s = c.stages
        s.stage1.data.bucket_config = {"16px": {1: (0.5, 8)}, "8px": {1: (1.0, 8)}}
        s.stage1.sample.buckets = ["1x8x8", "1x16x16"]
        s.stage2.data.bucket_config = {"8px": {4: (1.0, 8)}}
        s.stage2.sample.buckets = ["4x8x8"]
        s.stage3.data.bucket_config = {"16px": {1: (0.5, 8), 8: (1.0, 8)}, "8px": {1: (1.0, 8), 4: (1.0, 8)}}
        s.stage3.sample.buckets = ["8x16x16", "8x12x24", "1x16x16"]
        for name in ("stage1", "stage2", "stage3"):
            s[name].train.steps, s[name].train.warmup = 4, 1
    chosen = [v for v in variants if v.startswith("stage")]
    if len(chosen) > 1:
        raise ConfigError(f"configs/three_stage_shapes.py: choose one stage, got {chosen}")
    if chosen:  # one stage as a plain run (no schedule): its settings merged into the shared ones
        from vidjax.training.schedule import stage_configs

        return dict(stage_configs(c))[chosen[0]]
    return c
