"""Multi-process helpers: start jax.distributed when launched as one of several processes,
and the few collectives the trainer needs on the host (any-process flags, JSON gather).

Single-process runs never touch the distributed runtime: every helper short-cuts.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

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


_preemption_calls = 0


def reached_preemption(step: int) -> bool:
  """Whether the preemption sync point (e.g. a TPU maintenance event) is reached now.

  jax's sync protocol wants a step id that grows by one per call on every process; the
  trainer's `step` goes back at a fork (a WSD decay branch restarts from its fork step),
  so the id used is this process's count of calls, equal on all processes as every
  process checks after every step. `step` is kept for logging by Orbax.
  """
  global _preemption_calls
  if jax.process_count() == 1:
    return False
  _preemption_calls += 1
  del step
  return bool(ocp_multihost.reached_preemption(_preemption_calls))


def is_multiprocess_environment(env=None) -> bool:
  """Whether the environment says this process is one of several: JAX_COORDINATOR_ADDRESS
  (launch/local.sh), a TPU pod slice (several TPU worker hosts), SLURM, Open MPI."""
  env = os.environ if env is None else env
  tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return bool(env.get("JAX_COORDINATOR_ADDRESS")) or len(tpu_hosts) > 1 \
      or int(env.get("SLURM_NTASKS", "1") or 1) > 1 \
      or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env=None) -> bool:
  """Start jax.distributed when this process is one of several; no-op otherwise.

  Sources, first found wins: the arguments (train.py's --coordinator_address,
  --num_processes, --process_id), then JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES
  and JAX_PROCESS_ID (launch/local.sh sets them), then jax's cluster auto-detection on a
  TPU pod (several TPU workers), SLURM or Open MPI. Timeouts (seconds) from the
  environment: JAX_INIT_TIMEOUT (all processes must connect in it; default 300) and
  JAX_HEARTBEAT_TIMEOUT (a process silent this long is declared dead and the job ends;
  default jax's, 100) and JAX_SHUTDOWN_TIMEOUT (how long a finishing process waits for
  the others at exit; default jax's, 300). Returns whether the runtime was started.
  """
  env = os.environ if env is None else env
  if jax.distributed.is_initialized():
    return True
  timeouts = dict(initialization_timeout=int(env.get("JAX_INIT_TIMEOUT", "300")))
  if env.get("JAX_HEARTBEAT_TIMEOUT"):
    timeouts["heartbeat_timeout_seconds"] = int(env["JAX_HEARTBEAT_TIMEOUT"])
  if env.get("JAX_SHUTDOWN_TIMEOUT"):
    timeouts["shutdown_timeout_seconds"] = int(env["JAX_SHUTDOWN_TIMEOUT"])
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if address:
    count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if count is None or index is None:
      raise ValueError("distributed: a coordinator address needs the number of processes "
                       "and this process's id; set --num_processes and --process_id (or "
                       "JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    if int(count) == 1:
      return False
    jax.distributed.initialize(coordinator_address=address, num_processes=int(count),
                               process_id=int(index), **timeouts)
    return True
  if is_multiprocess_environment(env):
    jax.distributed.initialize(**timeouts)  # cluster auto-detection (TPU pod, SLURM, MPI)
    return True
  return False


def exit_if_failed(error: BaseException) -> None:
  """In a multi-process job, end this process now after `error` (an exception or a
  non-zero SystemExit), skipping jax.distributed's shutdown barrier.

  At a normal exit every process waits there for all the others; a process that failed
  alone would wait while the others block in their next collective, and the job would
  hang. Exiting at once drops this process from the job: jax's coordination service
  then ends the other processes (within the heartbeat timeout). No-op in a single-process
  run, and for a zero exit status.
  """
  code = error.code if isinstance(error, SystemExit) else 1
  if code in (None, 0) or not jax.distributed.is_initialized():
    return
  if not isinstance(error, SystemExit):
    traceback.print_exception(error)
  elif not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
