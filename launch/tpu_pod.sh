#!/usr/bin/env bash
# Template: train on a multi-host TPU slice (e.g. v5p-32, v6e-64). Run the same command on every host:
#
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="cd vidjax && \
#     bash launch/tpu_pod.sh configs/shapes_tiny.py /mnt/shared/runs/exp1 --config.mesh.data=-1 --config.mesh.fsdp=4"
#
# VIDJAX_DISTRIBUTED=auto makes vidjax.train call jax.distributed.initialize() with no arguments: JAX
# reads the slice's hosts and this host's index from the TPU metadata. The mesh (config.mesh) covers
# all chips of all hosts; each host loads only the batch rows of its own chips.
# Multislice (several slices over DCN, MEGASCALE_* set by the runtime): put the slice count on a dcn_*
# axis, e.g. --config.mesh.dcn_data=2, so only that axis crosses slices.
# WORKDIR must be one folder that every host sees (NFS, Filestore, a GCS FUSE mount): all hosts write
# their shards of each orbax checkpoint there; host 0 writes metrics, logs and samples.
# Not tested here (no TPU in this environment); the same code path runs on CPU in tests/test_multihost.py.
set -euo pipefail
CONFIG="${1:?usage: $0 CONFIG WORKDIR [--config.x=y ...]}"
WORKDIR="${2:?usage: $0 CONFIG WORKDIR [--config.x=y ...]}"
shift 2
export VIDJAX_DISTRIBUTED=auto
exec python -m vidjax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
