"""Train a model: ``python -m vidjax.train --config configs/shapes_tiny.py [--workdir W] [--config.key=value ...]``.

The config's ``task`` picks what is trained: the text-to-video denoiser (default; stage 0 trains its VAE first
when the config names one) or a video VAE (``configs/vae_shapes.py``). Everything runs in the one loop of
vidjax/training/: rerunning with the same workdir resumes from the latest checkpoint; SIGTERM / Ctrl-C save a
checkpoint and stop; a finished run is not redone.

Scale-out (``docs/parallel.md``): the step runs on the mesh of ``config.mesh`` with parameters, gradients and
optimizer state split over ``fsdp`` (ZeRO-3), the batch over ``data × fsdp`` and activations over ``sequence``.
Several processes (TPU pod, SLURM, ``launch/local_multiprocess.sh``) each load only their rows of the batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vidjax import cli
from vidjax.config import add_config_arguments, parse_config_args
from vidjax.training import run  # the Python API: vidjax.train.run(config, workdir) -> summary

DEFAULT_CONFIG = "configs/shapes_tiny.py"
__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidjax.train", description=__doc__.split("\n")[0])
    add_config_arguments(parser, default=DEFAULT_CONFIG)
    parser.add_argument("--workdir", default=None, help="output folder (default: runs/<config name>)")
    args, config = parse_config_args(parser, argv)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax is chatty at INFO
    logging.getLogger("vidjax").propagate = False  # the console has the progress bar and one-line messages;
    # train.log has every record
    from vidjax.parallel import distributed

    if distributed.initialize(config):  # before any JAX computation
        import jax

        print(f"process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local / "
              f"{jax.device_count()} global devices", file=sys.stderr)
    summary = run(config, args.workdir or f"runs/{config.get('name', 'run')}")
    if distributed.is_primary():
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    cli.run("vidjax.train", main)
