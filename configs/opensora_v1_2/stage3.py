"""Open-Sora v1.2, stage 3 at full size (``configs/opensora-v1-2/train/stage3.py`` at tag v1.2.0): v1.2's stage-3
bucket table (up to 720p/1080p, 408-frame buckets at 240p/360p), 1000 warm-up steps, from stage 2's final EMA
weights. The report's stage 3: about 2M high-quality clips, about 15k steps, 25% condition-frame masks
(``MASK_RATIOS``, as ``diffusion.mask_ratios``).

    python -m vidjax.tools.shardcheck --config configs/opensora_v1_2/stage3.py --mesh fsdp=8 --fast
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module

BUCKET_CONFIG = {  # v1.2.0 configs/opensora-v1-2/train/stage3.py ("20s/it"), batch sizes per GPU
    "144p": {1: (1.0, 475), 51: (1.0, 51), 102: (1.0, 27), 204: (1.0, 13), 408: (1.0, 6)},
    "256": {1: (1.0, 297), 51: (0.5, 20), 102: (0.5, 10), 204: (0.5, 5), 408: ((0.5, 0.5), 2)},
    "240p": {1: (1.0, 297), 51: (0.5, 20), 102: (0.5, 10), 204: (0.5, 5), 408: ((0.5, 0.4), 2)},
    "360p": {1: (1.0, 141), 51: (0.5, 8), 102: (0.5, 4), 204: (0.5, 2), 408: ((0.5, 0.3), 1)},
    "512": {1: (1.0, 141), 51: (0.5, 8), 102: (0.5, 4), 204: (0.5, 2), 408: ((0.5, 0.2), 1)},
    "480p": {1: (1.0, 89), 51: (0.5, 5), 102: (0.5, 3), 204: ((0.5, 0.5), 1), 408: (0.0, None)},
    "720p": {1: (0.3, 36), 51: (0.2, 2), 102: (0.1, 1), 204: (0.0, None)},
    "1024": {1: (0.3, 36), 51: (0.1, 2), 102: (0.1, 1), 204: (0.0, None)},
    "1080p": {1: (0.1, 5)},
    "2048": {1: (0.05, 5)},
}
MASK_RATIOS = {"random": 0.01, "intepolate": 0.002, "quarter_random": 0.002, "quarter_head": 0.002,
               "quarter_tail": 0.002, "quarter_head_tail": 0.002, "image_random": 0.0, "image_head": 0.22,
               "image_tail": 0.005, "image_head_tail": 0.005}


def get_config(arg: str | None = None) -> ConfigDict:
    c = load_config_module(Path(__file__).with_name("stage1.py")).get_config()
    c.name = "opensora_v1_2_stage3"
    c.data.bucket_config = BUCKET_CONFIG
    c.diffusion.mask_ratios = MASK_RATIOS
    c.train.update(steps=15_000, warmup=1000, init_from="runs/opensora_v1_2_stage2")
    return c
