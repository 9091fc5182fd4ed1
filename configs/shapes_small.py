"""A longer `shapes` run (about 2 hours on 2 CPU cores): a wider, deeper STDiT and more steps.

    python -m vidjax.train --config configs/shapes_small.py

Same data, objective and evaluation as configs/shapes_tiny.py, which this file extends.
"""

import importlib.util
from pathlib import Path

from ml_collections import ConfigDict


def _base(arg: str | None) -> ConfigDict:
    spec = importlib.util.spec_from_file_location("shapes_tiny", Path(__file__).with_name("shapes_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None) -> ConfigDict:
    c = _base(arg)
    c.name = "shapes_small"
    c.model.update(depth=6, hidden=192, heads=6)
    c.train.update(steps=6000, batch_size=16, lr=7e-4, warmup=200, ema_decay=0.998, ckpt_every=500)
    c.sample.eval_every = 1000
    return c
