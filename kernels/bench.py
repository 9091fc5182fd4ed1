"""Benchmark the factorized-attention implementations at STDiT-XL/2 shapes.

    python -m vidjax.kernels.bench                      # all shapes, every impl available here
    python -m vidjax.kernels.bench --shapes 16x512 --impls xla,pallas --iters 20
    python -m vidjax.kernels.bench --quick              # tiny shapes, a smoke test on any host

For each video shape (frames x resolution) it times spatial, temporal and cross attention,
forward and forward+backward (grads of q, k, v), for each implementation, and prints one
markdown table with milliseconds, achieved TFLOP/s and the speed ratio to the XLA path
(t_xla / t_impl; > 1 is faster than XLA). It runs on whatever backend JAX finds and prints it.

Shapes (STDiT-XL/2: 16 heads of 72, VAE /8, patch 2, 120 caption tokens):
  16x256 -> T=16, S=256;   16x512 -> T=16, S=1024;   64x512 -> T=64, S=1024.

FLOPs (matmuls only, the usual attention convention): spatial 4*B*T*H*S^2*D, temporal
4*B*S*H*T^2*D, cross 4*B*H*(T*S)*L*D; forward+backward counts 3x the forward (the backward's
recomputation of the scores is not counted), so TFLOP/s is comparable across implementations.

On CPU the Pallas and splash kernels only run in interpret mode, which measures nothing
about kernel speed; those cells are skipped unless ``--include-interpret``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vidjax.models import layers

HEADS, HEAD_DIM, CAPTION = 16, 72, 120
SHAPES = {"16x256": (16, 256), "16x512": (16, 1024), "64x512": (64, 1024)}
QUICK_SHAPES = {"quick": (4, 64)}
KINDS = ("spatial", "temporal", "cross")


def flops(kind: str, batch: int, t: int, s: int) -> float:
    """Forward matmul FLOPs of one attention call."""
    if kind == "spatial":
        return 4.0 * batch * t * HEADS * s * s * HEAD_DIM
    if kind == "temporal":
        return 4.0 * batch * s * HEADS * t * t * HEAD_DIM
    return 4.0 * batch * HEADS * (t * s) * CAPTION * HEAD_DIM


def problem(kind: str, batch: int, t: int, s: int, dtype) -> tuple[tuple, dict]:
    """Random (q, k, v) and attention kwargs for one call."""
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    if kind == "cross":
        q_shape, kv_shape = (batch, 1, t * s, HEADS, HEAD_DIM), (batch, 1, CAPTION, HEADS, HEAD_DIM)
        mask = jnp.arange(CAPTION)[None, :] < jnp.array([CAPTION * 3 // 4] * batch)[:, None]
        kwargs = dict(axis="spatial", mask=mask)
    else:
        q_shape = kv_shape = (batch, t, s, HEADS, HEAD_DIM)
        kwargs = dict(axis=kind, mask=None)
    args = tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype)
                 for key, shape in ((kq, q_shape), (kk, kv_shape), (kv, kv_shape)))
    return args, kwargs


def timed(fn: Callable, args: tuple, iters: int) -> float:
    """Median wall time in seconds of ``fn(*args)`` after compilation and one warm-up call."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_fns(impl: str, kwargs: dict) -> dict[str, Callable]:
    attend = lambda q, k, v: layers.attention(q, k, v, impl=impl, **kwargs)
    loss = lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum()
    return {"fwd": jax.jit(attend), "fwd+bwd": jax.jit(jax.grad(loss, argnums=(0, 1, 2)))}


def available(impl: str, backend: str, include_interpret: bool) -> str | None:
    """Why ``impl`` is skipped on ``backend``, or None to run it."""
    if impl == "cudnn" and backend != "gpu":
        return "needs a GPU"
    if impl == "splash" and backend == "gpu":
        return "TPU kernel"
    if impl in ("pallas", "splash") and backend not in ("tpu", "gpu") and not include_interpret:
        return "interpret mode only here (not a speed measurement)"
    return None


def run(shapes: dict, impls: list[str], batch: int, dtype, iters: int, include_interpret: bool) -> list[dict]:
    backend = jax.default_backend()
    rows = []
    for shape_name, (t, s) in shapes.items():
        for kind in KINDS:
            args, kwargs = problem(kind, batch, t, s, dtype)
            base = {}
            for impl in ["xla"] + [i for i in impls if i != "xla"]:  # xla first: the ratio's baseline
                skip = available(impl, backend, include_interpret)
                for mode, fn in make_fns(impl, kwargs).items():
                    row = dict(backend=backend, shape=shape_name, kind=kind, impl=impl, mode=mode)
                    if skip is not None:
                        rows.append(row | dict(note=skip))
                        continue
                    try:
                        sec = timed(fn, args, iters)
                    except Exception as e:  # report and keep benchmarking the rest
                        rows.append(row | dict(note=f"error: {type(e).__name__}: {str(e)[:80]}"))
                        continue
                    work = flops(kind, batch, t, s) * (3 if mode == "fwd+bwd" else 1)
                    if impl == "xla":
                        base[mode] = sec
                    rows.append(row | dict(ms=sec * 1e3, tflops=work / sec / 1e12,
                                           vs_xla=base[mode] / sec if mode in base else None))
                    print(format_row(rows[-1]), flush=True)
    return rows


def format_row(r: dict) -> str:
    if "ms" not in r:
        cells = ["not run", "", "", r.get("note", "")]
    else:
        ratio = "" if r["vs_xla"] is None else f"{r['vs_xla']:.2f}x"
        cells = [f"{r['ms']:.3f}", f"{r['tflops']:.3f}", ratio, ""]
    return "| " + " | ".join([r["backend"], r["shape"], r["kind"], r["impl"], r["mode"], *cells]) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {sorted(SHAPES)}")
    parser.add_argument("--impls", default="xla,pallas,splash,cudnn,auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (T=4, S=64); implies --include-interpret")
    parser.add_argument("--include-interpret", action="store_true", help="time Pallas interpret mode on CPU")
    parser.add_argument("--json", help="also write the rows to this file")
    a = parser.parse_args(argv)

    import vidjax.kernels  # noqa: F401  (registers pallas / splash / cudnn / auto)

    shapes = QUICK_SHAPES if a.quick else {n: SHAPES[n] for n in a.shapes.split(",")}
    dev = jax.devices()[0]
    print(f"backend: {jax.default_backend()}  device: {dev.device_kind} x{jax.device_count()}  "
          f"jax {jax.__version__}  dtype {a.dtype}  batch {a.batch}  heads {HEADS}x{HEAD_DIM}")
    print("| backend | shape | attention | impl | pass | ms | TFLOP/s | vs XLA | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = run(shapes, a.impls.split(","), a.batch, jnp.dtype(a.dtype), a.iters, a.quick or a.include_interpret)
    for r in rows:
        if "ms" not in r:
            print(format_row(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(backend=jax.default_backend(), device=dev.device_kind, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
