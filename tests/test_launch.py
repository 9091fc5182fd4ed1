"""The multi-host launchers' dry runs: printed commands, coordinator derivation, argument errors."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["--config.train.steps=5", "--config.mesh.fsdp=4"]


def _launch(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``bash launch/<script> args`` with PATH emptied of gcloud/sbatch (a dry run must not need them)."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=30)


def test_tpu_pod_dry_run_prints_every_command():
    out = _launch("tpu_pod.sh", "--config", "configs/shapes_tiny.py:quick", "--workdir", "gs://bucket/runs/a",
                  "--dry-run", *OVERRIDES, env={"TPU_NAME": "pod7", "ZONE": "europe-west4-a", "PROJECT": "proj"})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert lines[0].startswith("+ gcloud compute tpus tpu-vm describe pod7 --zone=europe-west4-a --project=proj")
    assert any(" tpu-vm create pod7 " in line and "--accelerator-type=" in line for line in lines)
    assert any(" tpu-vm scp " in line and "--worker=all" in line for line in lines)
    ssh = [line for line in lines if " tpu-vm ssh pod7 " in line]
    assert len(ssh) == 2 and all("--worker=all" in line for line in ssh)
    assert "pip install" in ssh[0]
    train = ssh[1]
    assert "VIDJAX_DISTRIBUTED=auto python3 -m vidjax.train --config configs/shapes_tiny.py:quick" in train
    assert "--workdir gs://bucket/runs/a --config.train.steps=5 --config.mesh.fsdp=4" in train


def test_tpu_pod_clones_a_git_url_on_every_worker():
    out = _launch("tpu_pod.sh", "--config", "c.py", "--workdir", "w", "--dry-run",
                  env={"VIDJAX_GIT": "https://example.org/me/vidjax.git"})
    assert out.returncode == 0, out.stderr
    assert " tpu-vm scp " not in out.stdout
    assert "git clone -q https://example.org/me/vidjax.git vidjax" in out.stdout


def test_slurm_dry_run_derives_the_coordinator_from_the_nodelist():
    out = _launch("slurm_gpu.sh", "--config", "configs/shapes_tiny.py", "--workdir", "/shared/r", "--nodes", "3",
                  "--nodelist", "gpu[007-009],cpu1", "--dry-run", *OVERRIDES, env={"MASTER_PORT": "4242"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "#SBATCH --nodes=3" in text and "#SBATCH --ntasks-per-node=1" in text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in text
    assert 'export JAX_NUM_PROCESSES="$SLURM_NTASKS"' in text
    assert "JAX_PROCESS_ID=$SLURM_PROCID exec python -m vidjax.train --config configs/shapes_tiny.py" in text
    assert "JAX_COORDINATOR_ADDRESS=gpu007:4242" in text.splitlines()
    assert "JAX_NUM_PROCESSES=3" in text.splitlines()
    tasks = [line for line in text.splitlines() if line.startswith("task ")]
    assert [t.split()[2] for t in tasks] == ["JAX_PROCESS_ID=0", "JAX_PROCESS_ID=1", "JAX_PROCESS_ID=2"]
    assert all(t.endswith("--workdir /shared/r --config.train.steps=5 --config.mesh.fsdp=4") for t in tasks)


@pytest.mark.parametrize("nodelist, first", [("a01", "a01"), ("n[12-20]", "n12"), ("x[3,5-7]", "x3"),
                                             ("b2,c[1-4]", "b2")])
def test_slurm_first_host_of_nodelist(nodelist, first):
    out = _launch("slurm_gpu.sh", "--config", "c.py", "--workdir", "w", "--nodelist", nodelist, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert f"JAX_COORDINATOR_ADDRESS={first}:29500" in out.stdout.splitlines()


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sh"])
@pytest.mark.parametrize("args, missing", [(["--workdir", "w"], "--config"), (["--config", "c.py"], "--workdir")])
def test_missing_argument_is_a_one_line_error(script, args, missing):
    out = _launch(script, *args, "--dry-run")
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and f"{missing} is required" in out.stderr


def test_slurm_rejects_a_bad_node_count():
    out = _launch("slurm_gpu.sh", "--config", "c.py", "--workdir", "w", "--nodes", "two", "--dry-run")
    assert out.returncode == 2 and "--nodes must be a positive integer" in out.stderr
