"""Open-Sora v1.2 inference defaults (``configs/opensora-v1-2/inference/sample.py`` at tag v1.2.0), for vidjax.

    from vidjax.config import load_config
    c = load_config("configs/opensora_v1_2/sample.py")            # 240p, 9:16, 51 frames, 30 steps, cfg 7
    c = load_config("configs/opensora_v1_2/sample.py:720p")       # another of v1.2's resolutions

Every field v1.2's file sets is here under the same name and value; the ``model``, ``vae``,
``text_encoder`` and ``scheduler`` entries keep v1.2's keys (``type``, ``from_pretrained`` are the
Hugging Face ids, or local directories holding ``config.json`` + ``model.safetensors``, read by
``vidjax.interop.from_pretrained``). Derived here so nothing needs v1.2's tables: ``image_size``
(v1.2's ``get_image_size(resolution, aspect_ratio)``), ``num_frames`` resolved (``"2s"`` -> 51),
``latent_size`` (the v1.2 VAE: 17 frames -> 5 latents, 8x spatial) and ``rflow``, the keyword
arguments of ``vidjax.diffusion.rectified_flow.RFlowV12`` (the shift is bf16-rounded, as v1.2's
``dtype = "bf16"`` run computes it).
"""

from ml_collections import ConfigDict

# v1.2 opensora/datasets/aspect.py: (height, width) of the 9:16 bucket of each resolution, and the frame aliases
IMAGE_SIZE_9_16 = {"144p": (144, 256), "240p": (240, 426), "360p": (360, 640), "480p": (480, 854),
                   "720p": (720, 1280), "1080p": (1080, 1920)}
NUM_FRAMES_MAP = {"1x": 51, "2x": 102, "4x": 204, "8x": 408, "16x": 816, "2s": 51, "4s": 102, "8s": 204, "16s": 408,
                  "32s": 816}


def latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """v1.2's VAE: each 17-frame micro clip -> 5 latent frames (causal, ``1 + (n - 1) // 4``), spatial /8."""
    full, rest = divmod(num_frames, 17)
    frames = full * 5 + (0 if rest == 0 else 1 + (rest - 1) // 4)
    return frames, height // 8, width // 8


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    # --- v1.2's fields, same names and values ---
    c.resolution = arg or "240p"
    if c.resolution not in IMAGE_SIZE_9_16:
        raise ValueError(f"configs/opensora_v1_2/sample.py:{arg}: expected one of {sorted(IMAGE_SIZE_9_16)}")
    c.aspect_ratio = "9:16"
    c.num_frames = 51
    c.fps = 24
    c.frame_interval = 1
    c.save_fps = 24
    c.save_dir = "./samples/samples/"
    c.seed = 42
    c.batch_size = 1
    c.multi_resolution = "STDiT2"
    c.dtype = "bf16"
    c.condition_frame_length = 5
    c.align = 5
    c.model = dict(type="STDiT3-XL/2", from_pretrained="hpcai-tech/OpenSora-STDiT-v3", qk_norm=True,
                   enable_flash_attn=True, enable_layernorm_kernel=True)
    c.vae = dict(type="OpenSoraVAE_V1_2", from_pretrained="hpcai-tech/OpenSora-VAE-v1.2", micro_frame_size=17,
                 micro_batch_size=4)
    c.text_encoder = dict(type="t5", from_pretrained="DeepFloyd/t5-v1_1-xxl", model_max_length=300)
    c.scheduler = dict(type="rflow", use_timestep_transform=True, num_sampling_steps=30, cfg_scale=7.0)
    c.aes = 6.5
    c.flow = None
    # --- derived (not in v1.2's file) ---
    c.image_size = IMAGE_SIZE_9_16[c.resolution]
    c.latent_size = latent_size(NUM_FRAMES_MAP.get(c.num_frames, c.num_frames), *c.image_size)
    c.rflow = dict(num_sampling_steps=c.scheduler["num_sampling_steps"], cfg_scale=c.scheduler["cfg_scale"],
                   use_timestep_transform=c.scheduler["use_timestep_transform"], shift_dtype="bfloat16")
    return c
