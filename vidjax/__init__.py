"""vidjax: Open-Sora-style text-to-video generation in JAX / Flax NNX.

The package is laid out as the pipeline reads:
data -> models (text encoders, VAEs, STDiT/DiT) -> diffusion -> train / sample -> export.
"""

import sys


def _is_vidjax_command() -> bool:
    """True while ``python -m vidjax.<command>`` starts (Python sets ``sys.argv[0]`` to ``-m`` until it has
    found the module), never when vidjax is imported by a notebook, a test or another program."""
    argv = getattr(sys, "orig_argv", [])
    if sys.argv[:1] != ["-m"] or "-m" not in argv[1:]:
        return False
    i = argv.index("-m", 1)
    return i + 1 < len(argv) and argv[i + 1].split(".")[0] == "vidjax"


if _is_vidjax_command():  # before any heavy import: the process may restart itself here
    from vidjax.cli import tune_memory

    tune_memory()

import flax  # noqa: E402

# Like MaxText and MaxDiffusion: variables carry their logical sharding as metadata,
# and the train step places them explicitly. Eager sharding would demand a mesh
# context just to build a model.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"


def _unshadow_hub_kernels() -> None:
    """Import Hugging Face's ``kernels`` package (a dependency of transformers ≥ 5) when this checkout's top-level
    ``kernels/`` folder (our Pallas kernels, installed as ``vidjax.kernels``) would hide it: ``python -m`` run from
    the checkout puts the working directory first on ``sys.path``, and transformers then fails to import T5 with
    ``cannot import name ... from 'kernels'``. Costs nothing unless the two would collide."""
    import importlib.util
    import os
    import sys
    from pathlib import Path

    ours = Path(__file__).resolve().parents[1] / "kernels"
    if "kernels" in sys.modules or not (ours / "spatial.py").is_file():  # not run from a checkout
        return
    spec = importlib.util.find_spec("kernels")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parent != ours:
        return
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if Path(p or os.getcwd()).resolve() != ours.parent]
    try:
        import kernels  # noqa: F401  (the installed distribution, when there is one)
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


_unshadow_hub_kernels()
