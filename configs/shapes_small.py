"""A longer `shapes` run (about 2 hours on 2 CPU cores): a wider, deeper STDiT and more steps.

    python -m vidjax.train --config configs/shapes_small.py

Same data, objective and evaluation as configs/shapes_tiny.py, which this file extends.
"""

from pathlib import Path

from ml_collections import ConfigDict

from vidjax.config import load_config_module


def _sibling(name: str):
    return load_config_module(Path(__file__).with_name(f"{name}.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = _sibling("shapes_tiny").get_config(arg)
    c.name = "shapes_small"
    c.model.update(depth=6, hidden=192, heads=6)
    c.train.update(steps=6000, batch_size=16, lr=7e-4, warmup=200, ema_decay=0.998, ckpt_every=500)
    c.sample.eval_every = 1000
    return c
