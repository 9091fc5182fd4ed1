"""Open-Sora v1.2, stage 2 at full size (``configs/opensora-v1-2/train/stage2.py`` at tag v1.2.0): stage 1's
settings with v1.2's stage-2 bucket table (more 360p/480p video), no warm-up, from stage 1's final EMA weights.
The report's stage 2: a Panda-70M subset (aesthetic ≥ 4.5), about 23k steps.

    python -m vidjax.tools.shardcheck --config configs/opensora_v1_2/stage2.py --mesh fsdp=8 --fast
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module

BUCKET_CONFIG = {  # v1.2.0 configs/opensora-v1-2/train/stage2.py ("12s/it"), batch sizes per GPU
    "144p": {1: (1.0, 475), 51: (1.0, 51), 102: ((1.0, 0.33), 27), 204: ((1.0, 0.1), 13), 408: ((1.0, 0.1), 6)},
    "256": {1: (0.4, 297), 51: (0.5, 20), 102: ((0.5, 0.33), 10), 204: ((0.5, 1.0), 5), 408: ((0.5, 1.0), 2)},
    "240p": {1: (0.3, 297), 51: (0.4, 20), 102: ((0.4, 0.33), 10), 204: ((0.4, 1.0), 5), 408: ((0.4, 1.0), 2)},
    "360p": {1: (0.5, 141), 51: (0.15, 8), 102: ((0.3, 0.5), 4), 204: ((0.3, 1.0), 2), 408: ((0.5, 0.5), 1)},
    "512": {1: (0.4, 141), 51: (0.15, 8), 102: ((0.2, 0.4), 4), 204: ((0.2, 1.0), 2), 408: ((0.4, 0.5), 1)},
    "480p": {1: (0.5, 89), 51: (0.2, 5), 102: (0.2, 2), 204: (0.1, 1)},
    "720p": {1: (0.1, 36), 51: (0.03, 1)},
    "1024": {1: (0.1, 36), 51: (0.02, 1)},
    "1080p": {1: (0.01, 5)},
    "2048": {1: (0.01, 5)},
}


def get_config(arg: str | None = None) -> ConfigDict:
    c = load_config_module(Path(__file__).with_name("stage1.py")).get_config()
    c.name = "opensora_v1_2_stage2"
    c.data.bucket_config = BUCKET_CONFIG
    c.train.update(steps=23_000, warmup=0, init_from="runs/opensora_v1_2_stage1")
    return c
