#!/usr/bin/env bash
# Train vidjax on a SLURM GPU cluster, several nodes, from a login node:
#
#   bash launch/slurm_gpu.sh --config configs/shapes_tiny.py --workdir /shared/runs/exp1 \
#       [--nodes 2] [--gpus-per-node 8] [--partition P] [--time 24:00:00] [--dry-run] [--config.key=value ...]
#
# Writes an sbatch script and submits it with `sbatch`. Inside the job, srun starts ONE process per node,
# each owning all GPUs of its node: JAX drives every local GPU from one process, so a node's GPUs share
# one host copy of the data pipeline and the within-node mesh axes (fsdp, tensor) run over NVLink,
# while only the dcn_* axes cross nodes (e.g. --config.mesh.dcn_data=-1); one process per GPU would
# multiply the data loaders and host memory by the GPU count for nothing.
# How processes find each other (vidjax.parallel.distributed reads these): the coordinator is the first
# host of SLURM_JOB_NODELIST (`scontrol show hostnames`) at port MASTER_PORT, JAX_NUM_PROCESSES is
# SLURM_NTASKS and JAX_PROCESS_ID is each task's SLURM_PROCID.
# Needs: sbatch/srun/scontrol, vidjax installed (pip install -e .) in the environment PYTHON runs on every
# node, and a WORKDIR on a filesystem every node sees (all nodes write their checkpoint shards there).
#
# Variables read (default):
#   PYTHON        python on the nodes (python)
#   MASTER_PORT   coordinator port (29500)
#   SBATCH_EXTRA  extra "#SBATCH ..." options, e.g. "--account=A --qos=high" (empty)
# --dry-run prints the sbatch script, then the coordinator, process count and srun command a job would
# use, with SLURM's variables faked from --nodes / --nodelist (SLURM is not needed for a dry run).
# Not run here (no GPU cluster in this environment): tests/test_launch.py checks the dry run, and the
# multi-process code path runs on CPU in tests/test_multihost.py.
set -euo pipefail

usage="usage: $0 --config FILE[:VARIANT] --workdir DIR [--nodes N] [--gpus-per-node G] [--partition P] \
[--time T] [--nodelist LIST] [--dry-run] [--config.key=value ...]"
CONFIG=""
WORKDIR=""
NODES=2
GPUS_PER_NODE=8
PARTITION=""
TIME="24:00:00"
NODELIST=""
DRY_RUN=0
OVERRIDES=()
need_value() { [[ $# -ge 2 && -n "$2" ]] || { echo "$0: $1 needs a value ($usage)" >&2; exit 2; }; }
while (($#)); do
  case "$1" in
    --config|--workdir|--nodes|--gpus-per-node|--partition|--time|--nodelist)
      need_value "$@"
      case "$1" in
        --config) CONFIG="$2" ;; --workdir) WORKDIR="$2" ;; --nodes) NODES="$2" ;;
        --gpus-per-node) GPUS_PER_NODE="$2" ;; --partition) PARTITION="$2" ;; --time) TIME="$2" ;;
        --nodelist) NODELIST="$2" ;;
      esac
      shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config.*) OVERRIDES+=("$1"); shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$0: unknown argument '$1' ($usage)" >&2; exit 2 ;;
  esac
done
[[ -n "$CONFIG" ]] || { echo "$0: --config is required ($usage)" >&2; exit 2; }
[[ -n "$WORKDIR" ]] || { echo "$0: --workdir is required ($usage)" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --nodes must be a positive integer, got '$NODES'" >&2; exit 2; }
[[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || {
  echo "$0: --gpus-per-node must be a positive integer, got '$GPUS_PER_NODE'" >&2; exit 2; }
PYTHON="${PYTHON:-python}"
MASTER_PORT="${MASTER_PORT:-29500}"
SBATCH_EXTRA="${SBATCH_EXTRA:-}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TRAIN="$PYTHON -m vidjax.train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
for override in "${OVERRIDES[@]}"; do TRAIN="$TRAIN $(printf '%q' "$override")"; done

# The job script. $SLURM_* are expanded inside the job; JAX_PROCESS_ID per task (single quotes for srun).
SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=vidjax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --time=$TIME"
if [[ -n "$PARTITION" ]]; then SCRIPT="$SCRIPT
#SBATCH --partition=$PARTITION"; fi
for extra in $SBATCH_EXTRA; do SCRIPT="$SCRIPT
#SBATCH $extra"; done
SCRIPT="$SCRIPT
set -euo pipefail
cd $(printf '%q' "$HERE")
COORDINATOR_HOST=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1)\"
export JAX_COORDINATOR_ADDRESS=\"\$COORDINATOR_HOST:$MASTER_PORT\"
export JAX_NUM_PROCESSES=\"\$SLURM_NTASKS\"
echo \"coordinator \$JAX_COORDINATOR_ADDRESS, \$JAX_NUM_PROCESSES processes\"
srun --ntasks-per-node=1 bash -c 'JAX_PROCESS_ID=\$SLURM_PROCID exec $TRAIN'"

if ((DRY_RUN == 0)); then
  exec sbatch <<<"$SCRIPT"
fi

# Dry run: the script, then what the job would resolve with SLURM's variables faked from the flags.
first_host() {  # first host of a SLURM nodelist ("gpu[003-010,012],cpu1" -> gpu003), as scontrol would
  local list="$1" head prefix range
  head="${list%%,*}"
  if [[ "$list" == *"["* && "${list%%[*}" != *","* ]]; then
    prefix="${list%%[*}"
    range="${list#*[}"
    range="${range%%]*}"
    range="${range%%,*}"
    head="$prefix${range%%-*}"
  fi
  echo "$head"
}
if [[ -z "$NODELIST" ]]; then
  NODELIST="node[$(printf '%03d' 1)-$(printf '%03d' "$NODES")]"
  ((NODES > 1)) || NODELIST="node001"
fi
echo "# sbatch script (submitted with: sbatch <<< SCRIPT):"
echo "$SCRIPT"
echo "# dry run with SLURM_JOB_NODELIST=$NODELIST SLURM_NTASKS=$NODES:"
echo "JAX_COORDINATOR_ADDRESS=$(first_host "$NODELIST"):$MASTER_PORT"
echo "JAX_NUM_PROCESSES=$NODES"
for ((procid = 0; procid < NODES; procid++)); do
  echo "task $procid: JAX_PROCESS_ID=$procid $TRAIN"
done
