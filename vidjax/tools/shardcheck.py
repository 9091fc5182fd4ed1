"""How does a config sit on a mesh? Memory per device and the collectives of one train step.

    python -m vidjax.tools.shardcheck --config configs/shapes_tiny.py:quick --mesh data=2,fsdp=2,sequence=2
    python -m vidjax.tools.shardcheck --config configs/shapes_tiny.py:pixels --mesh fsdp=8 --config.data.frames=32 \
        --json out.json

Nothing is allocated or run: the model is built abstractly (``nnx.eval_shape``), the train step of
``vidjax.train`` is lowered with its real shardings and compiled for the mesh, and the report reads

1. per-device bytes of parameters and optimizer state, from their shardings (ZeRO-3 over ``fsdp``);
2. the compiled memory analysis (arguments, outputs, temporaries, code) per device;
3. every collective in the compiled HLO, with its executions per step (scanned blocks counted
   once per block) and bytes per step (``vidjax.parallel.hlo``).

On CPU, the tool asks JAX for as many host devices as the mesh needs (``--devices`` to set it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from typing import Any


@dataclasses.dataclass
class StepReport:
    """What ``analyze`` measures; bytes are per device."""

    mesh: dict[str, int]
    params_total: int  # bytes of all trained parameters
    params_per_device: int
    opt_total: int
    opt_per_device: int
    memory: dict[str, int]  # compiled memory analysis
    collectives: list[Any]  # vidjax.parallel.hlo.Collective
    hlo: str = dataclasses.field(repr=False, default="")

    def summary(self) -> dict[str, dict[str, float]]:
        from vidjax.parallel import hlo

        return hlo.summary(self.collectives)

    def count(self, kind: str) -> int:
        """Executions per step of the collectives of ``kind`` that move data."""
        return sum(c.count for c in self.collectives if c.kind == kind and c.moves_data)

    def bytes(self, kind: str | None = None) -> int:
        """Result bytes per step of the collectives (of ``kind``) that move data."""
        from vidjax.parallel import hlo

        return hlo.moved_bytes(self.collectives, kind)

    def to_json(self) -> dict:
        return {"mesh": self.mesh, "params_total": self.params_total, "params_per_device": self.params_per_device,
                "opt_total": self.opt_total, "opt_per_device": self.opt_per_device, "memory": self.memory,
                "collectives": self.summary()}


def vae_architecture(entry) -> dict:
    """A ``vae`` config entry without its weights (``from_pretrained`` dropped): shardcheck needs the compressor's
    shapes, not its files, so full-size configs check before anything is downloaded."""
    entry = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
    if entry.get("type") in ("sd_vae", "opensora_vae"):
        entry.pop("from_pretrained", None)
    return entry


def analyze(config, mesh, *, step: str = "train", compiler_options: dict | None = None) -> StepReport:
    """Compile the train step (``step="train"``) or only loss+gradients (``"grad"``) of ``config`` on ``mesh``.

    ``compiler_options`` go to XLA (e.g. ``{"xla_backend_optimization_level": 0}`` for a faster CPU compile;
    the HLO, hence collectives and buffer sizes, does not depend on it).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vidjax.diffusion import build_diffusion
    from vidjax.models.t2v import build_model, trainable
    from vidjax.models.vae import build_vae
    from vidjax.parallel import hlo
    from vidjax.parallel import sharding as shd
    from vidjax.training import diffusion as denoiser
    from vidjax.training.loop import jit_train_step
    from vidjax.training.state import ModelParts, make_optimizer

    vae = build_vae(vae_architecture(config.vae))
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(config.seed), latent_channels=vae.latent_channels))
    parts = ModelParts(model, trainable(model))
    tx = make_optimizer(config.train)
    diffusion = build_diffusion(config.diffusion)
    d, B = config.data, config.train.batch_size
    shd.check_batch(B, mesh)
    denoiser.check_parallel(config, mesh, vae)
    L = config.text.max_length
    if d.get("cache_latents", False) and config.vae.get("type") != "raw":  # latents precomputed, as vidjax.train
        batch = {"latent": jax.ShapeDtypeStruct((B, *vae.latent_shape(d.frames, d.height, d.width),
                                                 vae.latent_channels), jnp.float32)}
    else:
        batch = {"video": jax.ShapeDtypeStruct((B, d.frames, d.height, d.width, 3), jnp.float32)}
    if config.text.encoder == "trainable":
        batch["ids"] = jax.ShapeDtypeStruct((B, L), jnp.int32)
    else:  # a frozen encoder's cached embeddings (T5-XXL: 4096 channels)
        batch["y"] = jax.ShapeDtypeStruct((B, L, config.text.dim), jnp.float32)
    batch["mask"] = jax.ShapeDtypeStruct((B, L), jnp.bool_)
    state, sh = denoiser.initial_state(parts, tx, mesh)
    b_sh = {k: shd.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}

    def abstract(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    params, opt, batch = abstract(parts.params, sh["params"]), abstract(state["opt"], sh["opt"]), abstract(batch, b_sh)
    rest = abstract(parts.rest, sh["rest"])
    with jax.set_mesh(mesh):
        if step == "train":
            jitted = jit_train_step(denoiser.make_train_step(parts, tx, diffusion, vae, config.train), sh,
                                    {k: len(v.shape) for k, v in batch.items()}, mesh, config.seed)
            lowered = jitted.lower({"params": params, "ema": params, "opt": opt, "rest": rest}, batch, 0)
        elif step == "grad":
            loss_fn = denoiser.make_loss_fn(parts, diffusion, vae)
            rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            grad = jax.jit(lambda p, r, b: jax.value_and_grad(loss_fn, has_aux=True)(p, b, jax.random.key(0), r),
                           in_shardings=(sh["params"], sh["rest"], b_sh),
                           out_shardings=((rep, rep), sh["params"]))
            lowered = grad.lower(params, rest, batch)
        else:
            raise ValueError(f"step={step!r}; expected 'train' or 'grad'")
        compiled = lowered.compile(compiler_options)
    mem = compiled.memory_analysis()
    memory = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
              for k in ("argument", "output", "temp", "alias", "generated_code")} if mem is not None else {}
    text = compiled.as_text()
    return StepReport(
        mesh=dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True)),
        params_total=shd.tree_bytes(parts.params), params_per_device=shd.sharded_bytes(parts.params, sh["params"]),
        opt_total=shd.tree_bytes(opt), opt_per_device=shd.sharded_bytes(opt, sh["opt"]),
        memory=memory, collectives=hlo.collectives(text), hlo=text)


def _mb(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def format_report(r: StepReport) -> str:
    from vidjax.parallel import hlo

    mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items())
    lines = [f"mesh            {mesh} ({math.prod(r.mesh.values())} devices)",
             f"parameters      {_mb(r.params_per_device)} per device of {_mb(r.params_total)} "
             f"({r.params_per_device / max(r.params_total, 1):.1%})",
             f"optimizer       {_mb(r.opt_per_device)} per device of {_mb(r.opt_total)} "
             f"({r.opt_per_device / max(r.opt_total, 1):.1%})"]
    if r.memory:
        lines.append("compiled        " + ", ".join(f"{k} {_mb(v)}" for k, v in r.memory.items()))
    lines.append("collectives per step:")
    for kind, row in sorted(r.summary().items()):
        lines.append(f"  {kind:<19} {int(row['ops']):>5} ops  {_mb(row['bytes'])} results  "
                     f"~{_mb(row['wire_bytes'])} sent per device")
    if not r.collectives:
        lines.append("  none")
    else:
        lines.append(hlo.table(r.collectives))
    return "\n".join(lines)


def _mesh_devices(mesh_text: str) -> int | None:
    sizes = [int(p.split("=")[1]) for p in mesh_text.split(",") if "=" in p]
    return None if not sizes or any(s == -1 for s in sizes) else math.prod(sizes)


def main(argv: list[str] | None = None) -> int:
    from vidjax.config import add_config_arguments, parse_config_args

    p = argparse.ArgumentParser(prog="python -m vidjax.tools.shardcheck", description=__doc__.split("\n")[0])
    add_config_arguments(p, default="configs/shapes_tiny.py:pixels")
    p.add_argument("--mesh", default="", help="mesh sizes, e.g. data=2,fsdp=2,sequence=2 (default: config.mesh)")
    p.add_argument("--step", default="train", choices=("train", "grad"))
    p.add_argument("--devices", type=int, default=0, help="host devices to create on CPU (default: the mesh's)")
    p.add_argument("--json", default="", help="also write the report as JSON here")
    p.add_argument("--fast", action="store_true", help="compile without LLVM optimisation (same HLO, faster)")
    a, config = parse_config_args(p, argv)

    n = a.devices or _mesh_devices(a.mesh)
    if n and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        import jax

        jax.config.update("jax_num_cpu_devices", n)  # only the CPU client; must precede backend start-up

    import vidjax  # noqa: F401
    from vidjax.parallel.mesh import make_mesh, parse_mesh

    mesh = make_mesh(config, **parse_mesh(a.mesh))
    report = analyze(config, mesh, step=a.step,
                     compiler_options={"xla_backend_optimization_level": 0} if a.fast else None)
    print(format_report(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0


if __name__ == "__main__":
    from vidjax import cli

    cli.run("vidjax.tools.shardcheck", main)
