"""Diffusion objectives and samplers behind one interface.

Every objective offers::

    loss(model_fn, x0, cond, rng) -> (scalar, metrics)
    sample(model_fn, noise, cond, rng, *, steps, cfg_scale) -> x0

so train and sample code never know which one is in use. ``build_diffusion(config)``
picks it from ``config.diffusion.name``.
"""

from __future__ import annotations

from vidjax.diffusion.rectified_flow import RectifiedFlow

DIFFUSIONS = {"rflow": RectifiedFlow}


def build_diffusion(cfg):
    """``cfg``: the ``config.diffusion`` ConfigDict (``name`` plus the objective's own fields)."""
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    if name not in DIFFUSIONS:
        raise ValueError(f"diffusion.name={name!r}; expected one of {sorted(DIFFUSIONS)}")
    kwargs.pop("sample_steps", None)
    kwargs.pop("cfg_scale", None)
    if "transform_hw" in kwargs:
        kwargs["transform_hw"] = tuple(kwargs["transform_hw"])
    return DIFFUSIONS[name](**kwargs)
