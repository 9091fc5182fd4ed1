"""Open-Sora v1.0, stage 3 at full size: STDiT-XL/2 on 64×512² clips from stage 2's final EMA weights
(``configs/opensora/train/64x512x512.py`` at tag v1.0.0): ``time_scale=2/3``, gradient checkpointing, batch 4 per
GPU (global 256 on 64 GPUs), SD-VAE micro-batch 64 frames, 65K tokens per clip. v1.0's report leaves this stage's
budget "TBD"; the 10k steps here are a stated choice, not a published figure.

    python -m vidjax.tools.shardcheck --config configs/opensora_v1/stage3.py --mesh fsdp=4,sequence=2 --fast
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module


def get_config(arg: str | None = None) -> ConfigDict:
    c = load_config_module(Path(__file__).with_name("stage2.py")).get_config()
    c.name = "opensora_v1_stage3"
    c.data.frames = 64
    c.vae.micro_batch_size = 64
    c.model.time_scale, c.model.remat = 2 / 3, "full"
    c.train.update(steps=10_000, batch_size=256, ckpt_every=250, init_from="runs/opensora_v1_stage2")
    return c
