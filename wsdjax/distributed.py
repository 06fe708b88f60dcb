"""Multi-process helpers: start jax.distributed when launched as one of several processes,
and the few collectives the trainer needs on the host (any-process flags, JSON gather).

Single-process runs never touch the distributed runtime: every helper short-cuts.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (e.g. one process got SIGTERM)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.array([int(bool(flag))], np.int32))
  return bool(np.asarray(flags).any())


def allgather_json(obj) -> list:
  """Every process's JSON-able `obj`, as a list indexed by process."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(rows[i, :int(sizes.reshape(-1)[i])])) for i in range(rows.shape[0])]


def my_position(positions: list | None) -> dict | None:
  """This process's entry of a per-process list saved by `allgather_json`."""
  if not positions:
    return None
  index = jax.process_index()
  if len(positions) != jax.process_count():
    # Process count changed since the save: positions that are step-indexed are identical
    # for every process and still valid; stateful streams cannot be re-split.
    if all(p == positions[0] for p in positions):
      return positions[0]
    raise ValueError(
        f"data: the checkpoint holds stream positions of {len(positions)} processes but this "
        f"job has {jax.process_count()}; resume with the same number of processes")
  return positions[index]


def reached_preemption(step: int) -> bool:
  """Whether a preemption sync point (e.g. a TPU maintenance event) is reached at `step`."""
  if jax.process_count() == 1:
    return False
  return bool(ocp_multihost.reached_preemption(step))


def initialize() -> None:
  """Start jax.distributed when this process is one of several; no-op otherwise.

  Multi-process is detected from the usual environment: JAX_COORDINATOR_ADDRESS with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (launch/local.sh sets them), a TPU pod (several
  TPU workers), or SLURM/Open MPI variables that jax's own cluster detection handles.
  """
  import os
  if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
    return
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]),
        initialization_timeout=int(env.get("JAX_INIT_TIMEOUT", "120")))
    return
  tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in tpu_hosts.split(",") if h]) > 1 or env.get("SLURM_NTASKS", "1") != "1" \
      or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()  # cluster auto-detection (TPU pod, SLURM, Open MPI)
