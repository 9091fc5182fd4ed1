"""A longer `shapes` run (about 50 minutes on 2 CPU cores, after the default's stage-0 VAE): a wider,
deeper STDiT (4.9M parameters) and 3× the steps.

    python -m vidjax.train --config configs/shapes_small.py

Same data, VAE (``runs/vae_shapes_stage0``, trained first if absent), objective and evaluation as
configs/shapes_tiny.py, which this file extends.
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module


def _sibling(name: str):
    return load_config_module(Path(__file__).with_name(f"{name}.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = _sibling("shapes_tiny").get_config(arg)
    c.name = c.name.replace("shapes_tiny", "shapes_small", 1)  # a variant keeps its suffix: its own workdir
    c.model.update(depth=6, hidden=192, heads=6)
    c.train.update(steps=12000, batch_size=16, lr=7e-4, warmup=200, ema_decay=0.998, ckpt_every=500)
    c.sample.eval_every = 2000
    return c
