#!/usr/bin/env bash
# Rehearse a multi-host run on one machine: N CPU processes with D devices each, talking through
# jax.distributed (a coordinator on localhost) and gloo collectives, exactly as the hosts of a pod would.
#
#   launch/local_multiprocess.sh [-n N] [-d D] [-p PORT] [-l LOGDIR] -- python -m vidjax.train --config ... [flags]
#
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
# vidjax.parallel.distributed.initialize() reads, and XLA_FLAGS asking for D host devices
# (plus $VIDJAX_XLA_FLAGS, e.g. --xla_backend_optimization_level=0 for faster compiles).
# Logs go to LOGDIR/process_<i>.log. If any process fails, the others are stopped and the
# script exits with that status (a dead peer would otherwise leave them waiting in a collective).
set -euo pipefail

N=2
D=4
PORT=""
LOGDIR=""
while getopts "n:d:p:l:h" opt; do
  case "$opt" in
    n) N="$OPTARG" ;;
    d) D="$OPTARG" ;;
    p) PORT="$OPTARG" ;;
    l) LOGDIR="$OPTARG" ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  echo "usage: $0 [-n N] [-d D] [-p PORT] [-l LOGDIR] -- command ..." >&2
  exit 2
fi
PYTHON="${PYTHON:-python3}"  # the interpreter for the port probe (tests pass the one running them)
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOGDIR="${LOGDIR:-${TMPDIR:-/tmp}/vidjax_local_${PORT}}"
mkdir -p "$LOGDIR"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
  XLA_FLAGS="--xla_force_host_platform_device_count=${D} ${VIDJAX_XLA_FLAGS:-}" \
    "$@" >"$LOGDIR/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "started $N processes × $D CPU devices (coordinator 127.0.0.1:$PORT); logs in $LOGDIR" >&2

status=0
for ((k = 0; k < N; k++)); do
  if ! wait -n; then
    status=1
    echo "a process failed; stopping the others. Last lines of the logs:" >&2
    for ((i = 0; i < N; i++)); do echo "--- process $i" >&2; tail -n 5 "$LOGDIR/process_$i.log" >&2; done
    break
  fi
done
exit "$status"
