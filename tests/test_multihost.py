"""Multi-host rehearsal: 2 processes × 4 CPU devices on localhost (jax.distributed + gloo).

Both processes train 3 steps and save; both are restarted and resume to step 5. The loss of every
step must match a single-process run on 8 devices with the same mesh (data=2 fsdp=2 sequence=2,
here laid out as dcn_data=2 across the processes): same global batches (each process reads only
its rows), same parameters, same optimizer state after the orbax restore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs.shapes_tiny import get_config
from vidjax.training import run

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = {"model.depth": 1, "data.num_clips": 16, "train.ckpt_every": 3, "sample.num_prompts": 0,
             "sample.eval_every": 0, "progress": False}


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def launch(tmp_path: Path, data_root: Path, steps: int, tag: str) -> None:
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items() if k != "progress"]
    flags += ["--config.progress=false", f"--config.data.root={data_root}", f"--config.train.steps={steps}",
              "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.sequence=2", "--config.mesh.dcn_data=2"]
    # faster CPU compiles (same HLO), and the restarted processes reuse the first launch's executables
    env = dict(os.environ, PYTHON=sys.executable, VIDJAX_XLA_FLAGS="--xla_backend_optimization_level=0",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    cmd = ["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "4", "-l", str(tmp_path / f"logs_{tag}"), "--",
           sys.executable, "-m", "vidjax.train", "--config", "configs/shapes_tiny.py:quick",
           f"--workdir={tmp_path / 'multi'}", *flags]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_processes_train_save_restart_resume_match_one_process(tmp_path):
    c = get_config("quick")
    for key, value in OVERRIDES.items():
        if "." in key:
            sec, k = key.split(".")
            c[sec][k] = value
        else:
            c[key] = value
    c.data.root = str(tmp_path / "data")
    c.train.steps = 5
    c.mesh.update(data=2, fsdp=2, sequence=2)
    t0 = time.time()
    ref = run(c, tmp_path / "single")  # 8 devices in this process (tests/conftest.py); writes the data set
    assert ref["steps"] == 5
    want = losses(tmp_path / "single")

    t1 = time.time()
    launch(tmp_path, Path(c.data.root), 3, "first")
    t2 = time.time()
    work = tmp_path / "multi"
    assert sorted(losses(work)) == [1, 2, 3] and (work / "checkpoints" / "3").is_dir()
    launch(tmp_path, Path(c.data.root), 5, "resumed")
    print(f"single process {t1 - t0:.0f} s, first launch {t2 - t1:.0f} s, resumed launch {time.time() - t2:.0f} s")
    log = (tmp_path / "logs_resumed" / "process_0.log").read_text()
    assert "resuming from checkpoint at step 3" in log
    assert "process 1 of 2" in (tmp_path / "logs_resumed" / "process_1.log").read_text()
    got = losses(work)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for s in range(1, 6):
        assert got[s] == pytest.approx(want[s], rel=1e-5), (s, got[s], want[s])
    # the data iterator state was saved per process
    assert len(list((work / "checkpoints" / "3" / "data_iter").glob("process_*"))) == 2


def test_two_processes_bucketed_mixed_stage_matches_one_process(tmp_path):
    """Buckets across processes: each process reads only its rows of every global batch (images and clips of
    several sizes), so 2 processes × 4 devices train exactly what 1 process on 8 devices trains."""
    from vidjax.config import load_config

    config = "configs/three_stage_shapes.py:quick,stage3"
    over = {"progress": False, "train.steps": 6, "train.ckpt_every": 100, "sample.num_prompts": 0,
            "sample.eval_every": 0}
    c = load_config(str(REPO / config), [f"{k}={v}" for k, v in over.items()])
    c.data.root = str(tmp_path / "data")
    c.mesh.update(data=8, fsdp=1, sequence=1)
    ref = run(c, tmp_path / "single")
    assert ref["steps"] == 6 and len(ref["buckets"]) >= 2, ref.get("buckets")
    want = losses(tmp_path / "single")

    flags = [f"--config.{k}={v}" for k, v in over.items()]
    flags += [f"--config.data.root={c.data.root}", "--config.mesh.data=4", "--config.mesh.fsdp=1",
              "--config.mesh.sequence=1", "--config.mesh.dcn_data=2"]
    env = dict(os.environ, PYTHON=sys.executable, VIDJAX_XLA_FLAGS="--xla_backend_optimization_level=0")
    env.pop("XLA_FLAGS", None)
    cmd = ["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "4", "-l", str(tmp_path / "logs"), "--",
           sys.executable, "-m", "vidjax.train", "--config", config, f"--workdir={tmp_path / 'multi'}", *flags]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = losses(tmp_path / "multi")
    assert sorted(got) == list(range(1, 7))
    for s in range(1, 7):
        assert got[s] == pytest.approx(want[s], rel=1e-5), (s, got[s], want[s])
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["buckets"].keys() == ref["buckets"].keys()
    assert {k: v["steps"] for k, v in summary["buckets"].items()} == {k: v["steps"] for k, v in ref["buckets"].items()}
