"""Export a trained STDiT as an Open-Sora v1.0 PyTorch state_dict (safetensors; torch not needed).

    python -m vidjax.export --workdir W [--step N] [--ema] --out model.safetensors

Writes ``model.safetensors`` (Open-Sora ``STDiT`` names and layouts, including the buffers
``pos_embed``, ``pos_embed_temporal`` and ``y_embedder.y_embedding``) and ``model.json``
(the model config; ``opensora_kwargs`` are the arguments of Open-Sora's ``STDiT(...)``).
In PyTorch: ``model.load_state_dict(safetensors.torch.load_file("model.safetensors"))``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vidjax import cli
from vidjax.cli import check_writable
from vidjax.errors import InputError, OutputError
from vidjax.interop.files import write_opensora

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}


def restore_model(workdir: str, step: int | None, ema: bool):
    """(config, TextToVideo model, step) from a training workdir (``vidjax.checkpoint``)."""
    from vidjax.checkpoint import restore_model as restore

    return restore(workdir, step=step, ema=ema)


def latent_input_size(config) -> tuple[int, int, int]:
    """Latent T×H×W of the training clips (``config.data`` through the config's VAE)."""
    from vidjax.models.vae import build_vae

    d = config.data
    return tuple(int(n) for n in build_vae(config.vae).latent_shape(d.frames, d.height, d.width))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vidjax.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training workdir (holds checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights instead of the raw ones")
    p.add_argument("--out", required=True, help="output .safetensors file (a .json is written next to it)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("T", "H", "W"), default=None,
                   help="latent input size for the pos_embed buffers (default: from the training config)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="tensor dtype (default float32)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.out.endswith(".safetensors"):
        raise OutputError(f"--out {args.out}: the output must be a .safetensors file")
    check_writable(args.out, what="--out")
    config, model, step = restore_model(args.workdir, args.step, args.ema)[:3]
    dit = model.dit
    from vidjax.models.stdit import STDiT

    if not isinstance(dit, STDiT):
        raise InputError(f"{args.workdir}: the model is a {type(dit).__name__}; only STDiT has an Open-Sora v1.0 "
                         "layout")
    size = tuple(args.input_size) if args.input_size else latent_input_size(config)
    dtype = DTYPES[args.dtype]
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    meta = write_opensora(dit, args.out, size, dtype=dtype,
                          info={"source": "vidjax.export", "workdir": str(args.workdir), "step": int(step),
                                "ema": bool(args.ema), "model_size": config.model.get("size") or None})
    if "warning" in meta:
        print(f"warning: {meta['warning']} (recorded in the .json)", file=sys.stderr)
    print(f"wrote {args.out}: {meta['num_tensors']} tensors, {meta['num_elements']:,} elements "
          f"(step {step}, {'EMA' if args.ema else 'raw'} weights, input size {size}); config in "
          f"{args.out[:-len('.safetensors')]}.json")
    return 0


if __name__ == "__main__":
    cli.run("vidjax.export", main)
