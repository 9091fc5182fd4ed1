"""Median time of the jitted train step of a vidjax checkout (its path in argv[1]): JSON ``{"median_ms": ...}``.

Runs against the one-loop API (vidjax/training) or, for a checkout from before it, the old vidjax.train API, so a
change to the step can be measured before/after in one session, alternating the two checkouts:

    git worktree add /tmp/old <commit>
    for k in 1 2 3; do for r in /tmp/old .; do JAX_PLATFORMS=cpu python benchmarks/train_step.py $r; done; done
    python benchmarks/train_step.py . bfloat16    # the model in bf16 (model.dtype), as the three-stage twin trains

Workload: configs/shapes_tiny.py:pixels (8×32×32 pixels, patch 2×4×4: 256 tokens), depth 4, width 128, batch 16,
40 timed steps after one compile.
"""

import json
import os
import sys
import time


def step_runner(repo: str, dtype: str = "float32"):
    """(run(step_index) -> metrics, mesh) for the checkout at ``repo``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from vidjax.config import load_config
    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import build_model, trainable
    from vidjax.models.vae import build_vae
    from vidjax.parallel import sharding as shd
    from vidjax.parallel.mesh import make_mesh

    c = load_config(f"{repo}/configs/shapes_tiny.py:pixels")
    c.model.depth, c.model.hidden = 4, 128
    if dtype != "float32":
        c.model.dtype = dtype
    vae = build_vae(c.vae)
    model = build_model(c, nnx.Rngs(0), latent_channels=vae.latent_channels)
    diffusion, mesh, L, B = build_diffusion(c.diffusion), make_mesh(c), c.text.max_length, 16
    rng = np.random.default_rng(0)
    batch = {"video": rng.uniform(-1, 1, (B, 8, 32, 32, 3)).astype(np.float32),
             "ids": rng.integers(1, 100, (B, L)).astype(np.int32), "mask": np.ones((B, L), bool)}
    ndims = {k: v.ndim for k, v in batch.items()}
    if os.path.isdir(os.path.join(repo, "vidjax", "training")):
        from vidjax.training import diffusion as task
        from vidjax.training.loop import jit_train_step
        from vidjax.training.state import ModelParts, make_optimizer

        parts, tx = ModelParts(model, trainable(model)), make_optimizer(c.train)
        state, sh = task.initial_state(parts, tx, mesh)
        step = jit_train_step(task.make_train_step(parts, tx, diffusion, vae, c.train), sh, ndims, mesh, 0)
        box = [shd.place(state, sh)]

        def run(i):
            box[0], m = step(box[0], batch, i)
            return m

        return run, mesh
    from vidjax import train  # before the one loop

    parts, tx = train.ModelParts(model, trainable(model)), train.make_optimizer(c.train)
    fn = train.make_train_step(parts, tx, diffusion, vae, c.train.ema_decay)
    step, sh = train.shard_train_step(fn, parts, tx, mesh, ndims, 0)
    params, rest = shd.place(parts.params, sh["params"]), shd.place(parts.rest, sh["rest"])
    box = [params, jax.jit(tx.init, out_shardings=sh["opt"])(params),
           jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=sh["params"])(params)]

    def run(i):
        box[0], box[1], box[2], m = step(box[0], box[1], box[2], rest, batch, i)
        return m

    return run, mesh


def main() -> None:
    repo = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
    sys.path.insert(0, repo)
    import vidjax.cli

    setup = getattr(vidjax.cli, "tune_memory", None) or getattr(vidjax.cli, "use_huge_pages", lambda: None)
    setup()  # as that checkout's commands run (if it has either)
    import jax
    import numpy as np

    run, mesh = step_runner(repo, dtype)
    with jax.set_mesh(mesh):
        jax.block_until_ready(run(0))  # compile
        times = []
        for i in range(1, 41):
            t = time.perf_counter()
            jax.block_until_ready(run(i))
            times.append(time.perf_counter() - t)
    print(json.dumps({"repo": repo, "dtype": dtype, "median_ms": round(1000 * float(np.median(times)), 2)}))


if __name__ == "__main__":
    main()
