"""Diffusion objectives and samplers behind one interface.

Every objective offers::

    loss(model_fn, x0, cond, rng) -> (scalar, metrics)
    sample(model_fn, noise, cond, rng, *, steps, cfg_scale) -> x0

so train and sample code never know which one is in use. ``build_diffusion(config)``
picks it from ``config.diffusion.name``:

- ``"iddpm"`` (Open-Sora v1.0/1.1): fields ``sampler`` ("ancestral" | "ddim"), ``ddim_eta``, ``learn_sigma``,
  ``caption_dropout``, ``cfg_channels``; samples with 100 respaced steps by default.
- ``"rflow"`` (v1.2): fields ``sample_method`` ("logit-normal" | "uniform"), ``use_timestep_transform``,
  ``transform_hw``, ``vae_spatial``, ``transform_scale``, ``caption_dropout``, ``cfg_channels``, ``prediction``
  ("v" | "x0"), ``x0_min_s``, ``loss_weight`` ("v" | "x0"), ``mask_ratios`` (v1.2's condition frames in training,
  STDiT3 only); 30 Euler steps, optionally with condition frames (``sample(..., mask=)``).

- ``"sit"``: SiT's interpolants (``vidjax.diffusion.sit``): fields ``path`` ("linear" | "gvp" | "vp"), ``prediction``
  ("velocity" | "score" | "noise"), ``loss_weight``, ``sampler`` ("euler" | "heun" | "sde"), ``train_eps``,
  ``sample_eps``, ``caption_dropout``, ``cfg_channels``. linear / velocity / euler is ``rflow`` without its shift.

- ``"rflow_v12"``: Open-Sora v1.2's scheduler exactly (``RFlowV12``: the shift from the pixel size and frame count,
  bf16-rounded by default, ``shift_dtype``); for sampling (``vidjax.sample``), with condition frames.

``sample_steps`` and ``cfg_scale`` in the same ConfigDict are for the sample code (``build_diffusion`` drops them).
"""

from __future__ import annotations

from vidjax.diffusion.iddpm import IDDPM
from vidjax.diffusion.rectified_flow import RectifiedFlow, RFlowV12
from vidjax.diffusion.sit import SiT

DIFFUSIONS = {"iddpm": IDDPM, "rflow": RectifiedFlow, "rflow_v12": RFlowV12, "sit": SiT}


def build_diffusion(cfg):
    """``cfg``: the ``config.diffusion`` ConfigDict (``name`` plus the objective's own fields)."""
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    if name not in DIFFUSIONS:
        raise ValueError(f"diffusion.name={name!r}; expected one of {sorted(DIFFUSIONS)}")
    kwargs.pop("sample_steps", None)
    kwargs.pop("cfg_scale", None)
    if hasattr(kwargs.get("mask_ratios"), "to_dict"):  # a ConfigDict table -> a plain dict
        kwargs["mask_ratios"] = kwargs["mask_ratios"].to_dict()
    if kwargs.get("transform_hw") is not None:
        kwargs["transform_hw"] = tuple(kwargs["transform_hw"])
    return DIFFUSIONS[name](**kwargs)
