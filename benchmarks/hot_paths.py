"""Speed of the paths around the train step: sampling, the VAE, and compiling a new bucket shape (a script, not a test).

    python benchmarks/hot_paths.py                     # the default shapes model (configs/shapes_tiny.py)
    python benchmarks/hot_paths.py --workdir runs/shapes_tiny   # a trained run instead of random weights

Measures on this machine, after one warm-up call each (medians of ``--repeats``):
  * sampling: samples/s for ``configs/shapes_tiny.py`` (rectified flow, 30 Euler steps, guidance batched as one
    model call per step) and its ``:iddpm`` variant (100 ancestral steps), 48 prompts in one batch;
  * the VAE: clips/s for encode and decode of 8×32×32 clips, batch 16;
  * compiling the train step for a new bucket shape (16×64×64 latents of the default VAE), cold and again from
    JAX's persistent compilation cache in a second process (what a bucketed run pays per new shape);
  * the latent precompute of ``configs/three_stage_shapes.py`` (``--only precompute``): its VAE encoding batches of 16
    clips of its bucket sizes, with XLA's default CPU kernels and with the config's ``train.cpu_compiler_options``
    (the run compiles the precompute with them, ``Run.jit``), alternating in one process;
  * STDiT against the full-attention DiT of the same width at 64 latent frames (64×16×16×4, patch 1×2×2: 4,096
    tokens; width 256, 4 heads, depth 2, batch 1): forward + backward time, next to the ratio of their FLOPs.
Random weights unless ``--workdir``: speed does not depend on the values. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _median_seconds(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def sampling(variant: str, workdir: str | None, prompts: int, repeats: int) -> dict:
    from flax import nnx

    from vidjax.config import load_config
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import build_model, text_inputs
    from vidjax.models.vae import build_vae
    from vidjax.sample import generate

    if workdir:
        from vidjax.checkpoint import restore_model

        config, model, _ = restore_model(workdir)
    else:
        config = load_config(f"configs/shapes_tiny.py{':' + variant if variant else ''}")
        config.vae = dict(type="causal_vae", model=load_config("configs/vae_shapes.py").vae.model.to_dict())
    vae = build_vae(config.vae)
    if not workdir:
        model = build_model(config, nnx.Rngs(0), latent_channels=vae.latent_channels)
    diffusion, text = build_diffusion(config.diffusion), text_inputs(config)
    names = [f"a red circle moving left {i}" for i in range(prompts)]
    seconds = _median_seconds(lambda: generate(model, config, vae, diffusion, text, names, batch_size=prompts),
                              repeats)
    steps = config.diffusion.sample_steps
    return {"what": f"sample {variant or 'rflow'} ({steps} steps, CFG batched)", "samples_per_s": prompts / seconds,
            "model_steps_per_s": steps / seconds, "seconds": seconds}


def vae_speed(repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from vidjax.config import load_config
    from vidjax.models.vae import build_vae

    vae = build_vae(dict(type="causal_vae", model=load_config("configs/vae_shapes.py").vae.model.to_dict()))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (16, 8, 32, 32, 3)), jnp.float32)
    enc = jax.jit(lambda x: vae.encode(x))
    z = enc(x)
    dec = jax.jit(lambda z: vae.decode(z, num_frames=8))
    out = []
    for name, fn in (("VAE encode 8×32×32", lambda: jax.block_until_ready(enc(x))),
                     ("VAE decode 8×32×32", lambda: jax.block_until_ready(dec(z)))):
        s = _median_seconds(fn, repeats)
        out.append({"what": name, "clips_per_s": 16 / s, "seconds": s})
    return out


def precompute_options(repeats: int) -> list[dict]:
    """The three-stage twin's VAE encode per bucket size, XLA's default kernels vs the config's CPU options."""
    import jax

    from vidjax.config import load_config
    from vidjax.models.vae import build_vae
    from vidjax.training.loop import cpu_compiler_options

    c = load_config("configs/three_stage_shapes.py")
    options = cpu_compiler_options(c)  # as the run reads them (checked; {} off a CPU)
    vae = build_vae(dict(type="causal_vae", model=load_config(c.vae.train_config).vae.model.to_dict()))
    default, tuned = jax.jit(vae.encode), jax.jit(vae.encode, compiler_options=options)
    rng, out = np.random.default_rng(0), []
    for t, h, w in ((16, 64, 64), (16, 64, 96), (1, 64, 64)):
        x = rng.uniform(-1, 1, (16, t, h, w, 3)).astype(np.float32)
        jax.block_until_ready((default(x), tuned(x)))  # compile both
        times: dict = {"default": [], "tuned": []}
        for _ in range(repeats):  # alternating, so both see the same machine
            for name, fn in (("default", default), ("tuned", tuned)):
                start = time.perf_counter()
                jax.block_until_ready(fn(x))
                times[name].append(time.perf_counter() - start)
        d, o = float(np.median(times["default"])), float(np.median(times["tuned"]))
        out.append({"what": f"precompute encode {t}×{h}×{w}, batch 16: XLA default {d:.3f} s, with {options} "
                            f"{o:.3f} s", "time_ratio": o / d, "seconds": o})
    return out


COMPILE_CHILD = r"""
import json, sys, time
import jax
from vidjax.config import load_config
jax.config.update("jax_compilation_cache_dir", sys.argv[1])  # as train.compilation_cache does
import numpy as np
from flax import nnx
from vidjax.diffusion import build_diffusion
from vidjax.models.t2v import build_model, trainable
from vidjax.models.vae import build_vae
from vidjax.parallel import sharding as shd
from vidjax.parallel.mesh import make_mesh
from vidjax.training import diffusion as task
from vidjax.training.loop import jit_train_step
from vidjax.training.state import ModelParts, make_optimizer
c = load_config("configs/shapes_tiny.py")
c.vae = dict(type="causal_vae", model=load_config("configs/vae_shapes.py").vae.model.to_dict())
vae = build_vae(c.vae)
model = build_model(c, nnx.Rngs(0), latent_channels=vae.latent_channels)
mesh, B, L = make_mesh(c), 8, c.text.max_length
batch = {"latent": np.zeros((B, 4, 8, 8, vae.latent_channels), np.float32),
         "ids": np.ones((B, L), np.int32), "mask": np.ones((B, L), bool)}
parts, tx = ModelParts(model, trainable(model)), make_optimizer(c.train)
state, sh = task.initial_state(parts, tx, mesh)
step = jit_train_step(task.make_train_step(parts, tx, build_diffusion(c.diffusion), vae, c.train), sh,
                      {k: v.ndim for k, v in batch.items()}, mesh, 0)
state = shd.place(state, sh)
t = time.perf_counter()
with jax.set_mesh(mesh):
    jax.block_until_ready(step(state, batch, 0))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def compile_time() -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "from the persistent cache"):
            r = subprocess.run([sys.executable, "-c", COMPILE_CHILD, cache], capture_output=True, text=True,
                               check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
            s = json.loads(r.stdout.strip().splitlines()[-1])["seconds"]
            out.append({"what": f"first train step of a new shape (16×64×64 clip), {label}", "seconds": s})
    return out


def dit_vs_stdit(repeats: int) -> list[dict]:
    """Forward + backward of an MSE on the output, STDiT (factorised) vs DiT (full attention), same width."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vidjax.models.dit import DiT, dit_config
    from vidjax.models.stdit import STDiT, count_params, stdit_config

    T, H, W, C, L = 64, 16, 16, 4, 8
    kw = dict(depth=2, hidden=256, heads=4, patch=(1, 2, 2), in_channels=C, learn_sigma=False, caption_channels=32,
              model_max_length=L)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, T, H, W, C)), jnp.float32)
    y, t = jnp.asarray(rng.normal(size=(1, L, 32)), jnp.float32), jnp.full((1,), 500.0)
    out, times = [], {}
    N, S = T * (H // 2) * (W // 2), (H // 2) * (W // 2)
    for name, model in (("STDiT", STDiT(stdit_config(**kw), rngs=nnx.Rngs(0))),
                        ("DiT", DiT(dit_config(**kw), rngs=nnx.Rngs(0)))):
        graphdef, state = nnx.split(model)
        loss = jax.jit(jax.grad(lambda s, g=graphdef: jnp.mean(nnx.merge(g, s)(x, t, y) ** 2)))
        times[name] = _median_seconds(lambda f=loss, s=state: jax.block_until_ready(f(s)), repeats)
        attn = 4 * 256 * (T * S * S + S * T * T) if name == "STDiT" else 4 * 256 * N * N  # QKᵀ + PV, forward
        flops = 3 * (2 * count_params(model) * N + 2 * attn)  # forward + backward; cross-attention is small here
        out.append({"what": f"{name} forward + backward, 64×16×16 latents (4,096 tokens)", "seconds": times[name],
                    "tflop": flops / 1e12})
    out.append({"what": "DiT / STDiT: time ratio (FLOP ratio)", "seconds": times["DiT"] / times["STDiT"],
                "flop_ratio": out[1]["tflop"] / out[0]["tflop"]})
    return out


def main() -> None:
    from vidjax.cli import tune_memory

    tune_memory()  # as every vidjax command does; the subprocesses inherit it
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None, help="a trained shapes run (default: random weights)")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["dit_vs_stdit", "precompute"], default=None, help="run one part")
    a = p.parse_args()
    if a.only:
        for r in {"dit_vs_stdit": dit_vs_stdit, "precompute": precompute_options}[a.only](a.repeats):
            print(r)
        return
    rows = [sampling("", a.workdir, a.prompts, a.repeats)]
    if not a.workdir:
        rows.append(sampling("iddpm", None, a.prompts, a.repeats))
    rows += vae_speed(a.repeats)
    rows += compile_time()
    rows += dit_vs_stdit(a.repeats)
    print("| path | rate | median seconds (or ratio) |\n|---|---|---|")
    for r in rows:
        rate = next((f"{v:.2f} {k.replace('_per_s', '')}/s" for k, v in r.items() if k.endswith("_per_s")), "")
        rate = f"{r['tflop']:.3f} TFLOP" if "tflop" in r else f"FLOP ratio {r['flop_ratio']:.2f}" \
            if "flop_ratio" in r else rate
        print(f"| {r['what']} | {rate} | {r['seconds']:.3f} |")


if __name__ == "__main__":
    main()
