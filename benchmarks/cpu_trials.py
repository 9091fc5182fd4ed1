"""Trials against the attention gap on XLA's CPU backend (a script, not a test): README "Speed" reports them.

    python benchmarks/cpu_trials.py products [--cores 1]   # the three batched product forms, GFLOP/s
    python benchmarks/cpu_trials.py chunks [--chunks 4]     # attention split into independent chunks
    python benchmarks/cpu_trials.py devices                 # the batch split over two CPU devices (data parallel)
    python benchmarks/cpu_trials.py pinned                  # two processes pinned to one core each, batch 1 each
    python benchmarks/cpu_trials.py options --options xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT

``chunks``, ``devices`` and ``options`` compare a form with the step as ``step_vs_torch.py`` builds it, both in one
process, alternating step by step on the same inputs, and print the medians and the paired ratio (the form's time
over the step's); ``chunks`` and ``devices`` also time the attention or its products alone. ``products`` prints the
rates of the attention's three product forms; ``pinned`` times the step, then two single-core child processes.
``--config mid|xl`` picks the step (default mid).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_vs_torch as S  # noqa: E402  (the steps, inputs and shapes of the benchmark)


def _alternate(fns: dict, make_input, steps: int) -> dict[str, np.ndarray]:
    """Seconds per call of each function, alternating call by call (order flipped every round), after a warm-up."""
    inp = make_input()
    for fn in fns.values():
        fn(inp)
        fn(inp)
    times = {k: [] for k in fns}
    for i in range(steps):
        inp = make_input()
        for k in list(fns)[:: 1 if i % 2 == 0 else -1]:
            times[k].append(S._timed(lambda k=k, inp=inp: fns[k](inp)))
    return {k: np.array(v) for k, v in times.items()}


def _report(times: dict[str, np.ndarray], base: str) -> None:
    for k, v in times.items():
        extra = "" if k == base else f", paired ratio {np.median(v / times[base]):.3f}"
        print(f"  {k}: median {np.median(v) * 1e3:.1f} ms (min {v.min() * 1e3:.1f}){extra}")


def _steps(a, **variants) -> None:
    """The step as is against each variant's step (keyword: jax_step_fn arguments), alternating."""
    cfg, rng = S.CONFIGS[a.config], np.random.default_rng(1)
    fns = {"step": S.jax_step_fn(cfg)[0]}
    fns.update({k: S.jax_step_fn(cfg, **kw)[0] for k, kw in variants.items()})
    _report(_alternate(fns, lambda: S.make_inputs(rng, cfg), a.steps), "step")


def products(a) -> None:
    """The mid config's three batched product forms (64 × 256 × 256 × 64) on this process's cores."""
    if a.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: a.cores]))  # before XLA sizes its pool
    import jax
    import jax.numpy as jnp

    n, s, d = 64, 256, 64
    print(f"{len(os.sched_getaffinity(0))} core(s), {n} products of {s} × {s} × {d}, GFLOP/s (median of 15):")
    for label, (eq, u, v) in S.product_operands(np.random.default_rng(0), n, s, d).items():
        f, u, v = jax.jit(lambda u, v, eq=eq: jnp.einsum(eq, u, v)), jnp.asarray(u), jnp.asarray(v)
        times = _alternate({label: lambda _, f=f, u=u, v=v: f(u, v).block_until_ready()}, lambda: None, 15)
        print(f"  {label}: {2 * n * s * s * d / np.median(times[label]) / 1e9:.0f}")


def chunks(a) -> None:
    """``xla_attention`` with its problems split into independent chunks (frames, else heads), alone and in the step."""
    import jax
    import jax.numpy as jnp

    import vidjax.models.layers as layers

    plain = layers.ATTENTION_IMPLS["xla"]

    def split(q, k, v, *, parts: int, axis="spatial", mask=None, **kw):
        ax = 1 if axis == "spatial" else 2  # frames for spatial attention, tokens for temporal
        if q.shape[ax] % parts or k.shape[ax] != q.shape[ax]:
            ax = 3  # heads
        if q.shape[ax] % parts:
            return plain(q, k, v, axis=axis, mask=mask, **kw)
        pieces = zip(*(jnp.split(t, parts, axis=ax) for t in (q, k, v)), strict=True)
        return jnp.concatenate([plain(*qkv, axis=axis, mask=mask, **kw) for qkv in pieces], axis=ax)

    rng = np.random.default_rng(0)
    q, k, v, g = (jnp.asarray(rng.normal(size=(2, 8, 256, 4, 64)).astype(np.float32)) for _ in range(4))
    fns = {}
    for parts in (1, 2, 4, 8):
        def loss(q, k, v, parts=parts):
            return jnp.sum((plain(q, k, v) if parts == 1 else split(q, k, v, parts=parts)) * g)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        fns[f"{parts} chunk(s)"] = lambda _, grad=grad: jax.block_until_ready(grad(q, k, v))
    print("the mid config's spatial attention alone, forward + backward:")
    _report(_alternate(fns, lambda: None, 20), "1 chunk(s)")
    print(f"the {a.config} step, attention in {a.chunks} chunks:")
    cfg, rng = S.CONFIGS[a.config], np.random.default_rng(1)
    base = S.jax_step_fn(cfg)[0]
    layers.ATTENTION_IMPLS["xla"] = lambda *args, **kw: split(*args, parts=a.chunks, **kw)
    try:
        chunked = S.jax_step_fn(cfg)[0]
        inp = S.make_inputs(rng, cfg)
        print(f"  first losses {base(inp):.6f} / {chunked(inp):.6f}")  # both trace here, each with its attention
    finally:
        layers.ATTENTION_IMPLS["xla"] = plain
    _report(_alternate({"step": base, "chunked": chunked}, lambda: S.make_inputs(rng, cfg), a.steps), "step")


def devices(a) -> None:
    """The batch split over two CPU devices (state replicated): the products and the step, against one device."""
    if os.environ.get("JAX_NUM_CPU_DEVICES") != "2":  # the device count is fixed when JAX starts
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "JAX_NUM_CPU_DEVICES": "2"})
    import jax
    import jax.numpy as jnp

    mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    eq, p, x = S.product_operands(np.random.default_rng(0), 64, 256, 64)["PV"]
    f = jax.jit(lambda u, v: jnp.einsum(eq, u, v))
    one, two = (jnp.asarray(p), jnp.asarray(x)), (jax.device_put(p, rows), jax.device_put(x, rows))
    t = _alternate({"one device": lambda _: f(*one).block_until_ready(),
                    "two devices": lambda _: f(*two).block_until_ready()}, lambda: None, 15)
    print("PV products, 64 × 256 × 256 × 64, GFLOP/s: " + ", ".join(
        f"{k} {2 * 64 * 256 * 256 * 64 / np.median(v) / 1e9:.0f}" for k, v in t.items()))
    print(f"the {a.config} step, the batch split over two CPU devices:")
    _steps(a, two_devices=dict(mesh=mesh))


def pinned(a) -> None:
    """The step with batch 2 on all cores, then two processes at once, each pinned to one core with batch 1."""
    if a.child is not None:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[a.child]})
        cfg = dict(S.CONFIGS[a.config], batch=1)
    else:
        cfg = S.CONFIGS[a.config]
    run, rng = S.jax_step_fn(cfg)[0], np.random.default_rng(a.child or 0)
    t = _alternate({"step": run}, lambda: S.make_inputs(rng, cfg), a.steps)["step"]
    print(f"  batch {cfg['batch']} on {len(os.sched_getaffinity(0))} core(s): median {np.median(t):.3f} s")
    if a.child is None:
        cmd = [sys.executable, __file__, "pinned", "--config", a.config, "--steps", str(a.steps), "--child"]
        for child in [subprocess.Popen([*cmd, str(i)]) for i in (0, 1)]:
            child.wait()


def options(a) -> None:
    """The step compiled with XLA options against XLA's defaults (e.g. which kernels library takes the dots)."""
    def value(text: str):  # XLA wants bools and ints typed
        return {"true": True, "false": False}.get(text, int(text) if text.lstrip("-").isdigit() else text)

    opts = {k: value(v) for k, v in (kv.split("=", 1) for kv in a.options.split(",") if kv)}
    print(f"the {a.config} step with {opts}:")
    _steps(a, with_options=dict(compiler_options=opts))


def main() -> None:
    from vidjax.cli import tune_memory

    tune_memory()  # as every vidjax command does
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trial", choices=["products", "chunks", "devices", "pinned", "options"])
    p.add_argument("--config", choices=sorted(S.CONFIGS), default="mid")
    p.add_argument("--steps", type=int, default=10, help="timed steps per form")
    p.add_argument("--cores", type=int, default=0, help="products: pin this process to that many cores")
    p.add_argument("--chunks", type=int, default=4, help="chunks: the step's attention in that many chunks")
    p.add_argument("--options", default="", help="options: key=value[,key=value] XLA options for the step")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    globals()[a.trial](a)


if __name__ == "__main__":
    main()
