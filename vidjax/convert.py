"""Import a PixArt-α or Open-Sora v1.0 PyTorch checkpoint into a vidjax STDiT.

    python -m vidjax.convert PixArt-XL-2-512x512.pth --model STDiT-XL/2 --allow-missing \\
        --set space_scale=0.5 --out pixart_stdit.safetensors

The checkpoint (``.pth``/``.pt``/``.bin``/``.ckpt`` via torch, or ``.safetensors`` without torch)
is loaded into a freshly built STDiT with Open-Sora's rules: the ``ema`` or ``state_dict``
entry is selected, a Conv2d patch kernel is unsqueezed to Conv3d, ``pos_embed*`` are dropped
and recomputed, and absent temporal attention is left zero-initialised (``--allow-missing``).
Every other missing key, unexpected key or shape mismatch is an error.

The result is written as a complete Open-Sora v1.0 state_dict in safetensors (plus a .json of
the config), which training reads without torch (``vidjax.interop.load_pretrained``) and
Open-Sora's PyTorch STDiT loads strictly.
"""

from __future__ import annotations

import argparse
import ast
import sys

from flax import nnx

from vidjax.interop.files import SELECT_CHOICES, CheckpointFormatError, read_checkpoint, write_opensora
from vidjax.interop.torch_names import CheckpointMismatchError, check_state_dict, load_state_dict_into_stdit
from vidjax.models.stdit import STDIT_SIZES, STDiT, stdit_config


def parse_overrides(items: list[str]) -> dict:
    """``["space_scale=0.5", "qk_norm=True"]`` -> ``{"space_scale": 0.5, "qk_norm": True}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vidjax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="PixArt-α / Open-Sora v1.0 checkpoint (.pth, .pt, .bin, .ckpt, .safetensors)")
    p.add_argument("--out", required=True, help="output .safetensors file (a .json is written next to it)")
    p.add_argument("--model", default="STDiT-XL/2", choices=sorted(STDIT_SIZES), help="model size (default XL/2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="STDiTConfig override, repeatable (e.g. space_scale=0.5, in_channels=4, depth=2)")
    p.add_argument("--select", choices=SELECT_CHOICES, default="auto",
                   help="which dict of a training checkpoint: auto = 'ema' if present, else 'state_dict', else top")
    p.add_argument("--allow-missing", action="store_true",
                   help="accept absent temporal attention (PixArt-α) and STDiT3 extras; they keep their init")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("T", "H", "W"), default=(16, 32, 32),
                   help="latent input size for the written pos_embed buffers (default 16 32 32 = 16×256² video)")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="allow torch.load to unpickle arbitrary objects (only for files you trust)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.out.endswith(".safetensors"):
        print(f"error: --out {args.out}: the output must be a .safetensors file", file=sys.stderr)
        return 2
    try:
        cfg = stdit_config(args.model, **parse_overrides(args.set))
        sd = read_checkpoint(args.checkpoint, args.select, unsafe_pickle=args.unsafe_pickle)
        abstract = nnx.eval_shape(lambda: STDiT(cfg, rngs=nnx.Rngs(0)))
        check_state_dict(abstract, sd, allow_missing=args.allow_missing)  # fail fast, before allocating
        model = STDiT(cfg, rngs=nnx.Rngs(0))
        report = load_state_dict_into_stdit(model, sd, allow_missing=args.allow_missing)
        meta = write_opensora(model, args.out, tuple(args.input_size),
                              info={"source": "vidjax.convert", "checkpoint": str(args.checkpoint),
                                    "model_size": args.model, "import": report.summary()})
    except (FileNotFoundError, CheckpointFormatError, CheckpointMismatchError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint}: {report.summary()}")
    print(f"wrote {args.out}: {meta['num_tensors']} tensors, {meta['num_elements']:,} elements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
