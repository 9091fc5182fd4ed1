#!/usr/bin/env bash
#SBATCH --job-name=vidjax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
# Template: train on a SLURM GPU cluster, one process per node owning all its GPUs.
#
#   sbatch launch/slurm_gpu.sh configs/shapes_tiny.py /shared/runs/exp1 --config.mesh.fsdp=8 --config.mesh.dcn_data=-1
#
# srun starts one task per node; vidjax.train sees SLURM_STEP_NUM_TASKS > 1 and calls
# jax.distributed.initialize(), which takes the coordinator (first node), process count and index
# from SLURM. Off TPU every process is one "slice": the dcn_* sizes split across nodes (here
# dcn_data = number of nodes), the others within a node (NVLink).
# WORKDIR must be on a filesystem every node sees. Not tested here (no GPU in this environment);
# the same code path runs on CPU in tests/test_multihost.py.
set -euo pipefail
CONFIG="${1:?usage: sbatch $0 CONFIG WORKDIR [--config.x=y ...]}"
WORKDIR="${2:?usage: sbatch $0 CONFIG WORKDIR [--config.x=y ...]}"
shift 2
srun python -m vidjax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
