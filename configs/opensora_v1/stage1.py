"""Open-Sora v1.0, stage 1 at full size: STDiT-XL/2 on 16×256² clips, from PixArt-α (``configs/opensora/train/
16x256x256.py`` at tag v1.0.0). Not trained here; it builds, shards and prices:

    python -m vidjax.tools.shardcheck --config configs/opensora_v1/stage1.py --mesh fsdp=8 --fast
    python -m vidjax.estimate --config configs/opensora_v1/stage1.py
    python -m vidjax.train --config configs/opensora_v1/stage1.py --workdir runs/opensora_v1_stage1 \\
        --config.data.captions=train.csv --config.train.init_from=pretrained_models/PixArt-XL-2-512x512.pth

v1.0's settings, by its names: bf16, ZeRO (here FSDP over every device, ``mesh.fsdp=-1``), ``grad_checkpoint=True``
(``model.remat="full"``), AdamW lr 2e-5 with no schedule, weight decay 0, clip 1.0, EMA 0.9999, batch 8 per GPU on
64 H800 (global 512), IDDPM with learned sigma, 16 frames every 3rd at 256², SD-VAE (sd-vae-ft-ema, 8× spatial,
per frame), T5-XXL with 120 tokens, ``space_scale=0.5`` (the 16×16 grid spans PixArt-512's 32×32 position range).
The published stage budget: 80k steps (366K clips of HD-VG-130M), then 24k on 20K HQ clips (reference: §6 of
Open-Sora's report). ``init_from`` is PixArt-α's ``PixArt-XL-2-512x512.pth`` (temporal attention absent: it starts
at zero, ``init_allow_missing``); the weights, the VAE and T5 directories are downloaded by the user.
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module


def get_config(arg: str | None = None) -> ConfigDict:
    c = load_config_module(Path(__file__).parents[1] / "shapes_tiny.py").get_config()
    c.name = "opensora_v1_stage1"

    d = c.data
    d.captions = "data/train.csv"  # Open-Sora's CSV (path, text) or any caption file vidjax reads
    d.frames, d.frame_interval, d.height, d.width = 16, 3, 256, 256
    d.cache_latents = True  # the frozen SD-VAE encodes every clip once, as v1.0's preprocessing could
    d.cache_in_memory = False

    c.text = ConfigDict(dict(encoder="t5", path="pretrained_models/t5-v1_1-xxl", max_length=120, dim=4096,
                             vocab_size=0, cache_dir=""))
    c.vae = ConfigDict(dict(type="sd_vae", from_pretrained="pretrained_models/sd-vae-ft-ema", micro_batch_size=4))

    c.model = ConfigDict(dict(
        name="stdit", size="STDiT-XL/2", depth=28, hidden=1152, heads=16, mlp_ratio=4.0, patch=(1, 2, 2),
        learn_sigma=True, space_scale=0.5, time_scale=1.0, qk_norm=False, temporal_rope=False,
        temporal_pos="block0", dtype="bfloat16", remat="full", scan_layers=True, attention_impl="xla", freeze="",
        sequence_parallel="auto"))

    c.mesh.update(data=1, fsdp=-1)  # ZeRO-3 over every device (v1.0: ZeRO-2 over 64 GPUs)

    c.diffusion = ConfigDict(dict(name="iddpm", learn_sigma=True, sampler="ancestral", caption_dropout=0.1,
                                  sample_steps=100, cfg_scale=7.0))

    c.train.update(steps=80_000, batch_size=512, lr=2e-5, warmup=0, final_lr_frac=1.0, weight_decay=0.0, b2=0.999,
                   adam_eps=1e-8, grad_clip=1.0, ema_decay=0.9999, log_every=10, ckpt_every=1000,
                   init_from="pretrained_models/PixArt-XL-2-512x512.pth", init_allow_missing=True)
    c.sample.update(num_prompts=0, eval_every=0, fps=8)
    return c
