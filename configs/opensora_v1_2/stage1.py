"""Open-Sora v1.2, stage 1 at full size (``configs/opensora-v1-2/train/stage1.py`` at tag v1.2.0): STDiT3-XL/2 on
the v1.2 VAE and T5-XXL (300 tokens), rectified flow, images and videos from 144p to 2048 through v1.2's bucket
table (batch sizes per GPU, ``data.bucket_batch="per_device"``). Not trained here; it builds, shards and prices:

    python -m vidjax.tools.shardcheck --config configs/opensora_v1_2/stage1.py --mesh fsdp=8 --fast
    python -m vidjax.estimate --config configs/opensora_v1_2/stage1.py
    python -m vidjax.sample --checkpoint OpenSora-STDiT-v3/ --config configs/opensora_v1_2/stage1.py:sample \
        --vae OpenSora-VAE-v1.2/ --text t5-v1_1-xxl/ --prompt "..." --reference first.png --mask_strategy 0

v1.2's settings, by its names: bf16, ZeRO (FSDP over every device here), ``grad_checkpoint=True``
(``model.remat="full"``), ``freeze_y_embedder=True``, AdamW lr 1e-4, ``adam_eps=1e-15``, EMA 0.99, clip 1.0,
1000 warm-up steps, rectified flow with logit-normal timesteps and the resolution- and length-aware shift.
The report's stage 1: WebVid-10M, about 30k steps, mostly 240p/360p. ``MASK_RATIOS`` are v1.2's condition-frame
ratios (``diffusion.mask_ratios``): that share of clips keeps some latent frames clean, so the model also learns
image-to-video and extension.
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module

BUCKET_CONFIG = {  # v1.2.0 configs/opensora-v1-2/train/stage1.py ("12s/it"), batch sizes per GPU
    "144p": {1: (1.0, 475), 51: (1.0, 51), 102: ((1.0, 0.33), 27), 204: ((1.0, 0.1), 13), 408: ((1.0, 0.1), 6)},
    "256": {1: (0.4, 297), 51: (0.5, 20), 102: ((0.5, 0.33), 10), 204: ((0.5, 0.1), 5), 408: ((0.5, 0.1), 2)},
    "240p": {1: (0.3, 297), 51: (0.4, 20), 102: ((0.4, 0.33), 10), 204: ((0.4, 0.1), 5), 408: ((0.4, 0.1), 2)},
    "360p": {1: (0.2, 141), 51: (0.15, 8), 102: ((0.15, 0.33), 4), 204: ((0.15, 0.1), 2), 408: ((0.15, 0.1), 1)},
    "512": {1: (0.1, 141)},
    "480p": {1: (0.1, 89)},
    "720p": {1: (0.05, 36)},
    "1024": {1: (0.05, 36)},
    "1080p": {1: (0.1, 5)},
    "2048": {1: (0.1, 5)},
}
MASK_RATIOS = {"random": 0.05, "intepolate": 0.005, "quarter_random": 0.005, "quarter_head": 0.005,
               "quarter_tail": 0.005, "quarter_head_tail": 0.005, "image_random": 0.025, "image_head": 0.05,
               "image_tail": 0.025, "image_head_tail": 0.025}


def get_config(arg: str | None = None) -> ConfigDict:
    c = load_config_module(Path(__file__).parents[1] / "shapes_tiny.py").get_config()
    c.name = "opensora_v1_2_stage1"

    d = c.data
    d.captions = "data/train.csv"  # Open-Sora's CSV (path, text, ...) or any caption file vidjax reads
    d.frame_interval = 1
    d.frames, d.height, d.width = 51, 256, 256  # the fixed size (bucket "256", 1:1) shardcheck and estimate use
    d.bucket_config = BUCKET_CONFIG
    d.bucket_batch = "per_device"
    d.cache_in_memory = False

    c.text = ConfigDict(dict(encoder="t5", path="pretrained_models/t5-v1_1-xxl", max_length=300, dim=4096,
                             vocab_size=0, cache_dir=""))
    c.vae = ConfigDict(dict(type="opensora_vae", from_pretrained="pretrained_models/OpenSora-VAE-v1.2",
                            micro_frame_size=17, micro_batch_size=4))
    c.model = ConfigDict(dict(
        name="stdit3", size="STDiT3-XL/2", depth=28, hidden=1152, heads=16, mlp_ratio=4.0, patch=(1, 2, 2),
        learn_sigma=True, qk_norm=True, dtype="bfloat16", remat="full", scan_layers=True, attention_impl="xla",
        sequence_parallel="auto", freeze_y_embedder=True))
    c.data.fps = 24
    c.mesh.update(data=1, fsdp=-1)

    c.diffusion = ConfigDict(dict(name="rflow", sample_method="logit-normal", use_timestep_transform=True,
                                  transform_scale=1.0, prediction="v", loss_weight="v", caption_dropout=0.1,
                                  sample_steps=30, cfg_scale=7.0, mask_ratios=MASK_RATIOS))
    c.train.update(steps=30_000, lr=1e-4, warmup=1000, final_lr_frac=1.0, weight_decay=0.0, b2=0.999,
                   adam_eps=1e-15, grad_clip=1.0, ema_decay=0.99, log_every=10, ckpt_every=200,
                   init_from="", init_allow_missing=False)
    c.sample.update(num_prompts=0, eval_every=0, fps=24)
    if arg == "sample":  # v1.2's inference (sample.py's defaults) through vidjax.sample --checkpoint
        v = load_config_module(Path(__file__).with_name("sample.py")).get_config()
        c.name = "opensora_v1_2_sample"
        c.seed = v.seed
        c.data.fps = v.fps
        c.sample.update(fps=v.save_fps, batch_size=v.batch_size)
        c.diffusion = ConfigDict(dict(name="rflow_v12", sample_steps=v.rflow["num_sampling_steps"],
                                      cfg_scale=v.rflow["cfg_scale"],
                                      use_timestep_transform=v.rflow["use_timestep_transform"],
                                      shift_dtype=v.rflow["shift_dtype"]))
    elif arg:
        raise ValueError(f"configs/opensora_v1_2/stage1.py:{arg}: the only variant is 'sample'")
    return c
