"""Open-Sora v1.0, stage 2 at full size: STDiT-XL/2 on 16×512² clips from stage 1's final EMA weights
(``configs/opensora/train/16x512x512.py`` at tag v1.0.0): ``space_scale=1.0``, no gradient checkpointing, batch 2
per GPU on 64 GPUs (global 128), 20k steps on 20K HQ clips, SD-VAE micro-batch 128 frames. The positional
embeddings are recomputed for the new size when the stage-1 weights load.

    python -m vidjax.tools.shardcheck --config configs/opensora_v1/stage2.py --mesh fsdp=8 --fast
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module


def get_config(arg: str | None = None) -> ConfigDict:
    c = load_config_module(Path(__file__).with_name("stage1.py")).get_config()
    c.name = "opensora_v1_stage2"
    c.data.height = c.data.width = 512
    c.vae.micro_batch_size = 128
    c.model.space_scale, c.model.remat = 1.0, "none"  # v1.0: grad_checkpoint=False at 16×512²
    c.train.update(steps=20_000, batch_size=128, ckpt_every=500, init_from="runs/opensora_v1_stage1",
                   init_allow_missing=False)
    return c
