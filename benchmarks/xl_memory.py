"""STDiT-XL/2 memory per chip at Open-Sora v1.0's three sizes, for each remat policy, without chips (a script).

    python benchmarks/xl_memory.py                        # 3 sizes × 3 policies × per-chip batch 1 and 2
    python benchmarks/xl_memory.py --sizes stage1 --remat full --json out.json

For each of ``configs/opensora_v1/stage{1,2,3}.py`` (STDiT-XL/2, bf16, T5-XXL embeddings of 120 tokens, SD-VAE
latents precomputed: 16×256², 16×512², 64×512²) and each ``model.remat`` (none, dots, full), the sharded train
step is compiled for 8 CPU devices with FSDP over all of them (``mesh fsdp=8``, ZeRO-3, as the stage configs run)
by ``vidjax.tools.shardcheck.analyze``, and XLA's ``memory_analysis()`` is read per device:

    peak ≈ arguments (parameters, EMA, AdamW state, the batch) + temporaries + outputs not aliased to arguments.

Compiled at 1 and 2 clips per chip, peak is linear in the batch (``fixed + per_clip × b``), which gives the
largest per-chip batch under a budget: an 80 GB H100 (80e9 bytes, 2 GB left to the runtime) and a 95 GB TPU v5p
(95e9, 2 GB likewise). The H100 figure is then checked by compiling at that batch (the "checked" column).
These are XLA:CPU's buffer assignments for the same HLO: the TPU and GPU compilers fuse and schedule differently,
so treat the figures as the model's memory to within tens of percent, not as a promise.
With more than 8 chips FSDP shards the fixed part (parameters, EMA, AdamW state) further.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"stage1": "16×256²", "stage2": "16×512²", "stage3": "64×512²"}
CHIPS = {"H100 80GB": 80e9, "TPU v5p 95GB": 95e9}
RUNTIME_RESERVE = 2e9


def peak_bytes(memory: dict[str, int]) -> int:
    """Per-device peak from a compiled memory analysis: arguments + temporaries + outputs that are not donated."""
    return memory["argument"] + memory["temp"] + max(memory["output"] - memory["alias"], 0)


def max_batch(fixed: float, per_clip: float, budget: float) -> int:
    """Largest b with fixed + per_clip·b ≤ budget (0 when not even one clip fits)."""
    if per_clip <= 0:
        return 0
    return max(int((budget - fixed) // per_clip), 0)


def measure(stage: str, remat: str, per_chip: int, devices: int) -> dict:
    from vidjax.config import load_config
    from vidjax.parallel.mesh import make_mesh
    from vidjax.tools.shardcheck import analyze

    config = load_config(ROOT / "configs" / "opensora_v1" / f"{stage}.py",
                         [f"model.remat={remat}", f"train.batch_size={per_chip * devices}"])
    mesh = make_mesh(config, data=1, fsdp=devices, sequence=1, tensor=1)
    report = analyze(config, mesh, compiler_options={"xla_backend_optimization_level": 0})
    return {"stage": stage, "remat": remat, "per_chip": per_chip, "memory": report.memory,
            "params_per_device": report.params_per_device, "opt_per_device": report.opt_per_device,
            "peak": peak_bytes(report.memory)}


def fits(rows: list[dict], stage: str, remat: str) -> tuple[float, float, list[int]]:
    """(fixed, per_clip, largest per-chip batch for each of CHIPS) from the 1- and 2-clip compilations."""
    one, two = (next(r for r in rows if (r["stage"], r["remat"], r["per_chip"]) == (stage, remat, b)) for b in (1, 2))
    per_clip = two["peak"] - one["peak"]
    fixed = one["peak"] - per_clip
    return fixed, per_clip, [max_batch(fixed, per_clip, budget - RUNTIME_RESERVE) for budget in CHIPS.values()]


def table(rows: list[dict], checked: dict) -> str:
    out = ["| video | remat | peak / chip at 1 clip | + per clip | "
           + " | ".join(f"max clips / chip, {c}" for c in CHIPS) + " | checked: peak at the H100 batch |",
           "|---|---|---|---|" + "---|" * len(CHIPS) + "---|"]
    for stage, remat in dict.fromkeys((r["stage"], r["remat"]) for r in rows):
        fixed, per_clip, most = fits(rows, stage, remat)
        check = checked.get((stage, remat))
        out.append(f"| {SIZES[stage]} | {remat} | {(fixed + per_clip) / 2**30:,.1f} GiB | {per_clip / 2**30:,.1f} GiB "
                   "| " + " | ".join(str(f) if f else "none" for f in most) + " | "
                   + (f"{check['peak'] / 1e9:,.1f} GB at {check['per_chip']}" if check else "–") + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="stage1,stage2,stage3", help="which of stage1, stage2, stage3")
    p.add_argument("--remat", default="none,dots,full")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--json", default="", help="also write every measurement here")
    a = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={a.devices}").strip()
    rows = []
    for stage in a.sizes.split(","):
        for remat in a.remat.split(","):
            for per_chip in (1, 2):
                r = measure(stage, remat, per_chip, a.devices)
                rows.append(r)
                m = r["memory"]
                print(f"{stage} ({SIZES[stage]}) remat={remat} {per_chip}/chip: peak {r['peak'] / 2**30:.2f} GiB "
                      f"(arguments {m['argument'] / 2**30:.2f}, temp {m['temp'] / 2**30:.2f}, "
                      f"output {m['output'] / 2**30:.2f}, aliased {m['alias'] / 2**30:.2f})", file=sys.stderr,
                      flush=True)
    checked = {}
    for stage, remat in dict.fromkeys((r["stage"], r["remat"]) for r in rows):
        h100 = fits(rows, stage, remat)[2][0]
        if h100 > 2:
            checked[stage, remat] = r = measure(stage, remat, h100, a.devices)
            print(f"{stage} remat={remat} at {h100}/chip: peak {r['peak'] / 1e9:.1f} GB", file=sys.stderr, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows + list(checked.values()), indent=2))
    print(table(rows, checked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
