#!/usr/bin/env bash
# Train vidjax on a multi-host TPU slice (e.g. v5litepod-16, v5p-32, v6e-64), from your own machine.
#
#   bash launch/tpu_pod.sh --config configs/shapes_tiny.py --workdir gs://BUCKET/runs/exp1 \
#       [--dry-run] [--config.key=value ...]
#
# Needs: gcloud (authenticated, `gcloud auth login`), a GCP project with TPU quota for ACCELERATOR_TYPE
# in ZONE, and, for a gs:// workdir, a bucket every worker's service account can write to.
# Steps: (1) reuse the TPU VM TPU_NAME if `gcloud compute tpus tpu-vm describe` finds it, else create it;
# (2) install vidjax on every worker into REMOTE_DIR (`pip install -e`): `git clone VIDJAX_GIT` when it is
# set, else the local checkout this script sits in is packed (git archive HEAD) and copied with
# `tpu-vm scp --worker=all`; --config paths are relative to that checkout;
# (3) run `python -m vidjax.train` on every worker (`--worker=all`) with VIDJAX_DISTRIBUTED=auto:
# jax.distributed.initialize() then finds the pod's hosts and this host's index from the TPU metadata.
# The mesh (config.mesh) covers all chips of all hosts; each host loads only its own batch rows.
# Multislice: put the slice count on a dcn_* axis (--config.mesh.dcn_data=2).
# The workdir must be one place every host sees (gs://, NFS, Filestore): all hosts write their checkpoint
# shards there; host 0 writes metrics, logs and samples.
#
# Variables read (default):
#   PROJECT          GCP project (gcloud's configured project)
#   ZONE             TPU zone (us-central2-b)
#   TPU_NAME         TPU VM name (vidjax-pod)
#   ACCELERATOR_TYPE slice type when creating (v4-16)
#   RUNTIME_VERSION  TPU software version when creating (tpu-ubuntu2204-base)
#   VIDJAX_GIT       git URL of vidjax, cloned on every worker (empty: copy this checkout with scp)
#   JAX_EXTRA        pip extra to install jax for TPU ("jax[tpu]")
#   REMOTE_DIR       folder for the copied checkout on each worker (vidjax)
#   PYTHON           python on the workers (python3)
# --dry-run prints every command and runs none (gcloud is not needed for it).
# Not run here (no TPU in this environment): tests/test_launch.py checks the dry-run commands, and the
# multi-process code path runs on CPU in tests/test_multihost.py.
set -euo pipefail

usage="usage: $0 --config FILE[:VARIANT] --workdir DIR [--dry-run] [--config.key=value ...]"
CONFIG=""
WORKDIR=""
DRY_RUN=0
OVERRIDES=()
while (($#)); do
  case "$1" in
    --config) CONFIG="${2:-}"; shift 2 || shift ;;
    --config=*) CONFIG="${1#--config=}"; shift ;;
    --workdir) WORKDIR="${2:-}"; shift 2 || shift ;;
    --workdir=*) WORKDIR="${1#--workdir=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config.*) OVERRIDES+=("$1"); shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$0: unknown argument '$1' ($usage)" >&2; exit 2 ;;
  esac
done
[[ -n "$CONFIG" ]] || { echo "$0: --config is required ($usage)" >&2; exit 2; }
[[ -n "$WORKDIR" ]] || { echo "$0: --workdir is required ($usage)" >&2; exit 2; }

ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-vidjax-pod}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
VIDJAX_GIT="${VIDJAX_GIT:-}"
JAX_EXTRA="${JAX_EXTRA:-jax[tpu]}"
REMOTE_DIR="${REMOTE_DIR:-vidjax}"
PYTHON="${PYTHON:-python3}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project="$PROJECT"); fi
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" "${PROJECT_FLAG[@]}")
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

run() {  # print a command (one shell-quoted line); run it unless --dry-run
  local arg line="+"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+-]*$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
  done
  echo "$line"
  if ((DRY_RUN == 0)); then "$@"; fi
}
quote() { printf '%q' "$1"; }

# 1. the TPU VM
if ((DRY_RUN)); then
  run "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}"
  echo "# if describe fails:"
  run "${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
elif ! run "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  run "${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi

# 2. vidjax on every worker
PIP="$PYTHON -m pip install -q -U $(quote "$JAX_EXTRA")"
FRESH="rm -rf $(quote "$REMOTE_DIR")"
if [[ -n "$VIDJAX_GIT" ]]; then
  INSTALL="$FRESH && git clone -q $(quote "$VIDJAX_GIT") $(quote "$REMOTE_DIR") && $PIP -e $(quote "$REMOTE_DIR")"
else
  ARCHIVE="$(mktemp -u /tmp/vidjax-XXXXXX).tar.gz"
  run git -C "$HERE" archive --format=tar.gz -o "$ARCHIVE" HEAD
  run "${TPU[@]}" scp "$ARCHIVE" "$TPU_NAME:vidjax.tar.gz" "${WHERE[@]}" --worker=all
  INSTALL="$FRESH && mkdir -p $(quote "$REMOTE_DIR") && tar -xzf vidjax.tar.gz -C $(quote "$REMOTE_DIR")"
  INSTALL="$INSTALL && $PIP -e $(quote "$REMOTE_DIR")"
fi
run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$INSTALL"

# 3. train on every worker; jax.distributed discovers the pod
TRAIN="cd $(quote "$REMOTE_DIR") && VIDJAX_DISTRIBUTED=auto $PYTHON -m vidjax.train"
TRAIN="$TRAIN --config $(quote "$CONFIG") --workdir $(quote "$WORKDIR")"
for override in "${OVERRIDES[@]}"; do TRAIN="$TRAIN $(quote "$override")"; done
run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$TRAIN"
