"""Import a PixArt-α or Open-Sora v1.0 PyTorch checkpoint into a vidjax STDiT, or check and rewrite an
Open-Sora v1.2 model directory.

    python -m vidjax.convert PixArt-XL-2-512x512.pth --model STDiT-XL/2 --allow-missing \\
        --set space_scale=0.5 --out pixart_stdit.safetensors
    python -m vidjax.convert OpenSora-STDiT-v3/ --out stdit3/          # config.json + model.safetensors
    python -m vidjax.convert OpenSora-VAE-v1.2/ --out vae/
    python -m vidjax.convert ema.pt --model STDiT3-XL/2 --out stdit3/  # a v1.2 training checkpoint

The checkpoint (``.pth``/``.pt``/``.bin``/``.ckpt`` via torch, or ``.safetensors`` without torch)
is loaded into a freshly built STDiT with Open-Sora's rules: the ``ema`` or ``state_dict``
entry is selected, a Conv2d patch kernel is unsqueezed to Conv3d, ``pos_embed*`` are dropped
and recomputed, and absent temporal attention is left zero-initialised (``--allow-missing``).
Every other missing key, unexpected key or shape mismatch is an error.

The result is written as a complete Open-Sora v1.0 state_dict in safetensors (plus a .json of
the config), which training reads without torch (``vidjax.interop.load_pretrained``) and
Open-Sora's PyTorch STDiT loads strictly.

v1.2 (a directory holding ``config.json`` + ``model.safetensors``, whose ``model_type`` is ``STDiT3`` or
``VideoAutoencoderPipeline``; or a checkpoint file with ``--model STDiT3-XL/2``): loaded strictly into
vidjax's STDiT3 / v1.2 VAE with the same report, and written as the same directory layout to ``--out``
(``--dtype`` casts), which v1.2's ``from_pretrained`` and ``vidjax.interop.from_pretrained`` load.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from flax import nnx

from vidjax import cli
from vidjax.cli import check_writable
from vidjax.errors import ConfigError, OutputError, UserError
from vidjax.interop.files import SELECT_CHOICES, read_checkpoint, write_opensora
from vidjax.interop.torch_names import check_state_dict, load_state_dict_into_stdit
from vidjax.models.stdit import STDIT_SIZES, STDiT, stdit_config
from vidjax.models.stdit3 import STDIT3_SIZES, STDiT3, stdit3_config


def parse_overrides(items: list[str]) -> dict:
    """``["space_scale=0.5", "qk_norm=True"]`` -> ``{"space_scale": 0.5, "qk_norm": True}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vidjax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="PixArt-α / Open-Sora v1.0 checkpoint (.pth, .pt, .bin, .ckpt, .safetensors), "
                                      "or an Open-Sora v1.2 model directory (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="output .safetensors file (a .json is written next to it); a "
                                                "directory for v1.2 models")
    p.add_argument("--model", default="STDiT-XL/2", choices=sorted(STDIT_SIZES) + sorted(STDIT3_SIZES),
                   help="model size of a checkpoint file (default STDiT-XL/2); v1.2 directories carry their own")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="tensor dtype of a written v1.2 directory (default float32)")
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


def convert_v12(args: argparse.Namespace) -> str:
    """A v1.2 directory, or a checkpoint file for an STDiT3 size, checked strictly and written as a directory."""
    from vidjax.interop import pretrained

    source, out = Path(args.checkpoint), Path(args.out)
    if out.suffix == ".safetensors" or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out}: a v1.2 model is written as a directory (config.json + model.safetensors)")
    if source.is_dir():
        kind = pretrained.model_type(pretrained.read_config(source), str(source / "config.json"))
        if kind == pretrained.VAE_TYPE:
            model, report = pretrained.vae_from_pretrained(source)
            pretrained.save_vae_pretrained(model, out, pretrained.read_config(source))
            return f"{source}: OpenSoraVAE_V1_2, {report.summary()}\nwrote {out}/model.safetensors + config.json"
        model, report = pretrained.stdit3_from_pretrained(source)
    else:
        cfg = model_config(stdit3_config, args.model, args.set)
        model = nnx.eval_shape(lambda: STDiT3(cfg, rngs=nnx.Rngs(0)))
        report = load_state_dict_into_stdit(model, read_checkpoint(source, args.select,
                                                                   unsafe_pickle=args.unsafe_pickle))
    pretrained.save_stdit3_pretrained(model, out, dtype=None if args.dtype == "float32" else args.dtype)
    return (f"{source}: STDiT3 (depth {model.cfg.depth}, hidden {model.cfg.hidden_size}), {report.summary()}\n"
            f"wrote {out}/model.safetensors ({model.num_params():,} parameters, {args.dtype}) + config.json")


def model_config(make, name: str | None, items: list[str]):
    """``make(name, **overrides)`` (stdit_config / stdit3_config) with the ``--model`` / ``--set`` values; a value
    the config refuses is a one-line error."""
    try:
        return make(name, **parse_overrides(items))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--model {name} --set {' '.join(items) or '(none)'}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if Path(args.checkpoint).is_dir() or args.model in STDIT3_SIZES:
        print(convert_v12(args))
        return 0
    if not args.out.endswith(".safetensors"):
        raise OutputError(f"--out {args.out}: the output must be a .safetensors file")
    check_writable(args.out, what="--out")
    cfg = model_config(stdit_config, args.model, args.set)
    sd = read_checkpoint(args.checkpoint, args.select, unsafe_pickle=args.unsafe_pickle)
    abstract = nnx.eval_shape(lambda: STDiT(cfg, rngs=nnx.Rngs(0)))
    check_state_dict(abstract, sd, allow_missing=args.allow_missing)  # fail fast, before allocating
    model = STDiT(cfg, rngs=nnx.Rngs(0))
    report = load_state_dict_into_stdit(model, sd, allow_missing=args.allow_missing)
    meta = write_opensora(model, args.out, tuple(args.input_size),
                          info={"source": "vidjax.convert", "checkpoint": str(args.checkpoint),
                                "model_size": args.model, "import": report.summary()})
    print(f"{args.checkpoint}: {report.summary()}")
    print(f"wrote {args.out}: {meta['num_tensors']} tensors, {meta['num_elements']:,} elements")
    return 0


if __name__ == "__main__":
    cli.run("vidjax.convert", main)
