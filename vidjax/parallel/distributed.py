"""Multi-process (multi-host) runs: ``jax.distributed`` start-up and process-local input.

``initialize(config)`` starts ``jax.distributed`` when this process is one of several, from
(in order): ``config.distributed`` (``coordinator``, ``num_processes``, ``process_id``), the
variables ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (set by
``launch/local_multiprocess.sh``), an ``srun`` step of more than one task (SLURM), a TPU slice
whose ``TPU_WORKER_HOSTNAMES`` lists several hosts, or ``VIDJAX_DISTRIBUTED=auto`` (set by
``launch/tpu_pod.sh``); the last three use JAX's own cluster detection. It must run before any
JAX computation. On CPU the cross-process collectives go through gloo.

Input: every process reads only the rows of each global batch that its own devices hold
(``process_rows``) from the same index-deterministic grain pipeline (``process_dataset``), and
``global_batch`` assembles the global ``jax.Array`` with ``jax.make_array_from_process_local_data``.
The global batch at step s is therefore the same whatever the number of processes.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from vidjax.parallel.sharding import batch_sharding

log = logging.getLogger(__name__)


def _setting(config, key: str, env: str, default):
    """``config.distributed.<key>`` when set, else the environment variable ``env``, else ``default``.
    "Not set" is the default value itself (``process_id=-1``, ``num_processes=0``, ``coordinator=""``), so 0 is a
    valid process id."""
    section = config.get("distributed") if config is not None and hasattr(config, "get") else None
    value = section.get(key) if section is not None else None
    if value is None or value == "" or value == default:
        value = os.environ.get(env, default)
    return type(default)(value) if value is not None else None


def initialize(config=None) -> bool:
    """Start ``jax.distributed`` if the environment or ``config.distributed`` asks for several processes.

    Returns True when this is a multi-process run. Safe to call twice.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator = _setting(config, "coordinator", "JAX_COORDINATOR_ADDRESS", "")
    num = _setting(config, "num_processes", "JAX_NUM_PROCESSES", 0)
    pid = _setting(config, "process_id", "JAX_PROCESS_ID", -1)
    slurm = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    tpu_pod = tpu_pod or os.environ.get("VIDJAX_DISTRIBUTED", "") == "auto"
    if coordinator and num > 1:
        if pid < 0:
            raise ValueError(f"distributed run with {num} processes at {coordinator}: set JAX_PROCESS_ID "
                             "(or config.distributed.process_id) to this process's index")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects the CPU client
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    elif slurm or tpu_pod:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
    else:
        return False
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


def is_primary() -> bool:
    """True on the process that writes logs, metrics and summaries."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (no-op with one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_rows(mesh, global_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch held by this process's devices (batch over ``data × fsdp``)."""
    index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_size,))
    bounds = sorted({(idx[0].indices(global_size)[0], idx[0].indices(global_size)[1]) for idx in index_map.values()})
    start, stop = bounds[0][0], max(b[1] for b in bounds)
    covered = sum(b[1] - b[0] for b in bounds)
    if covered != stop - start:  # the mesh puts this process's rows in several blocks
        raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {bounds}; order the mesh "
                         "devices by process (make_mesh does)")
    return start, stop


class _Rows(grain.MapDataset):
    """Element j -> parent[(j // b) · B + start + j mod b]: rows [start, start + b) of every global batch of B."""

    def __init__(self, parent: grain.MapDataset, global_size: int, rows: tuple[int, int]):
        super().__init__(parent)
        self._B, (self._start, stop) = global_size, rows
        self._b = stop - self._start

    def __len__(self) -> int:
        return len(self._parent) // self._B * self._b

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        j = int(index)
        return self._parent[(j // self._b) * self._B + self._start + j % self._b]

    def __str__(self) -> str:
        return f"_Rows(B={self._B}, start={self._start}, b={self._b})"


def process_dataset(source, transform, *, global_size: int, rows: tuple[int, int], seed: int,
                    num_threads: int = 2) -> grain.IterDataset:
    """This process's rows of the global batches that ``vidjax.data.loader.make_dataset`` would produce.

    Same grain chain (seed, shuffle, repeat, random_map) indexed globally, then only rows
    ``[start, stop)`` of each global batch are read and transformed here.
    """
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat().random_map(transform)
    ds = _Rows(ds, global_size, rows)
    b = rows[1] - rows[0]
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * b))
    return ds.batch(b, drop_remainder=True)


def global_batch(local: dict, mesh, global_size: int) -> dict:
    """Global ``jax.Array`` s (batch split over ``data × fsdp``) from this process's rows."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v),
                                                      (global_size, *np.shape(v)[1:]))
            for k, v in local.items()}


__all__ = ["barrier", "global_batch", "initialize", "is_primary", "process_dataset", "process_rows"]
