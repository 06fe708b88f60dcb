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


TPU_WORKERS_ENV = "WSDJAX_TPU_WORKERS"  # set by launch/tpu_vm.py run on every worker
METADATA_URL = "http://{host}/computeMetadata/v1/instance/attributes/{key}"
METADATA_TIMEOUT_S = 2.0  # a query; up to METADATA_TRIES of them, 0.5 s apart
METADATA_TRIES = 3


def read_metadata(key: str) -> str | None:
  """The Cloud TPU VM's metadata attribute `key` (e.g. worker-network-endpoints), None when
  the VM has no such attribute. Raises OSError when the metadata server does not answer.

  The server is GCE_METADATA_IP (as jax reads it) or metadata.google.internal, asked
  without proxies, METADATA_TIMEOUT_S a try. Called only on a Cloud TPU VM (see
  `tpu_worker_count`), never on laptops or CI machines.
  """
  import time
  import urllib.error
  import urllib.request
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(METADATA_URL.format(host=host, key=key),
                                   headers={"Metadata-Flavor": "Google"})
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  for attempt in range(METADATA_TRIES):
    try:
      with opener.open(request, timeout=METADATA_TIMEOUT_S) as response:
        return response.read().decode()
    except urllib.error.HTTPError as e:
      if e.code == 404:
        return None
      error = e
    except OSError as e:  # refused, unreachable, timed out
      error = e
    if attempt + 1 < METADATA_TRIES:
      time.sleep(0.5)
  raise error


def on_cloud_tpu_vm() -> bool:
  """Whether jax found this machine to be a Cloud TPU VM (libtpu and TPU chips on PCI),
  as jax's own TPU cluster detection asks."""
  from jax._src import cloud_tpu_init  # private: jax has no public spelling of this
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _positive_int(env, key: str) -> int | None:
  """env[key] as an int >= 1; None when unset or empty; ValueError (one line) otherwise."""
  value = env.get(key, "")
  if not value.strip():
    return None
  try:
    count = int(value)
  except ValueError:
    count = 0
  if count < 1:
    raise ValueError(f"distributed: {key}={value!r} is not a count >= 1")
  return count


def _may_query_metadata(env, on_tpu_vm: bool | None) -> bool:
  """A metadata query is allowed only on a Cloud TPU VM whose jax may use the TPU:
  not with TPU_SKIP_MDS_QUERY (jax sets it where it found no TPU chips, GKE on its pods),
  nor when JAX_PLATFORMS excludes tpu (e.g. CPU tests run on a TPU VM)."""
  if "TPU_SKIP_MDS_QUERY" in env:
    return False
  platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms and "tpu" not in platforms:
    return False
  return on_cloud_tpu_vm() if on_tpu_vm is None else on_tpu_vm


def tpu_worker_count(env=None, metadata=None, on_tpu_vm: bool | None = None) -> int:
  """How many TPU worker hosts (one process each) this slice has; 1 when not on a TPU.

  First found wins: WSDJAX_TPU_WORKERS (launch/tpu_vm.py run sets it on every worker, from
  `gcloud ... describe` or --workers), TPU_PROCESS_ADDRESSES or TPU_WORKER_HOSTNAMES (GKE
  sets them; the entries are the hosts), then, on a Cloud TPU VM only (see
  `_may_query_metadata`), the entries of the VM's `worker-network-endpoints` metadata:
  what jax's own detection reads there. `metadata(key) -> str | None` replaces
  `read_metadata` (tests); `on_tpu_vm` replaces `on_cloud_tpu_vm()`. A metadata server that
  does not answer is a ValueError naming WSDJAX_TPU_WORKERS, never a silent single host.
  """
  env = os.environ if env is None else env
  count = _positive_int(env, TPU_WORKERS_ENV)
  if count is not None:
    return count
  for key in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):  # jax's order
    if env.get(key) is not None:
      return max(1, len([h for h in env[key].split(",") if h.strip()]))
  if not _may_query_metadata(env, on_tpu_vm):
    return 1
  metadata = read_metadata if metadata is None else metadata
  try:
    endpoints = metadata("worker-network-endpoints")
  except OSError as e:
    raise ValueError(f"distributed: this Cloud TPU VM's metadata server did not answer "
                     f"({e}); set {TPU_WORKERS_ENV} to the slice's worker count") from None
  return max(1, len([w for w in (endpoints or "").split(",") if w.strip()]))


def is_multiprocess_environment(env=None, metadata=None, on_tpu_vm: bool | None = None) -> bool:
  """Whether the environment says this process is one of several, first found wins:
  JAX_COORDINATOR_ADDRESS (launch/local.sh); SLURM_NTASKS > 1; OMPI_COMM_WORLD_SIZE > 1;
  MEGASCALE_NUM_SLICES > 1 (a TPU multislice); a TPU slice of several worker hosts
  (`tpu_worker_count`: the launcher's WSDJAX_TPU_WORKERS, GKE's TPU_WORKER_HOSTNAMES, or a
  Cloud TPU VM's metadata). A single-host TPU VM and a machine without a TPU are not.
  `metadata` and `on_tpu_vm` go to `tpu_worker_count` (tests inject them)."""
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_NUM_SLICES"):
    if int(env.get(key, "1") or 1) > 1:
      return True
  return tpu_worker_count(env, metadata, on_tpu_vm) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env=None) -> bool:
  """Start jax.distributed when this process is one of several; no-op otherwise.

  Sources, first found wins: the arguments (train.py's --coordinator_address,
  --num_processes, --process_id), then JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES
  and JAX_PROCESS_ID (launch/local.sh sets them), then jax's cluster auto-detection where
  `is_multiprocess_environment` says this is one of several processes: a TPU slice of
  several hosts (GKE, or a Cloud TPU VM: launch/tpu_vm.py's WSDJAX_TPU_WORKERS or the VM's
  metadata), a TPU multislice, SLURM or Open MPI. A single-host TPU VM never starts it
  (nothing to wait for). Timeouts (seconds) from the environment: JAX_INIT_TIMEOUT (all
  processes must connect in it; default 300) and JAX_HEARTBEAT_TIMEOUT (a process silent
  this long is declared dead and the job ends; default jax's, 100) and
  JAX_SHUTDOWN_TIMEOUT (how long a finishing process waits for the others at exit;
  default jax's, 300). Returns whether the runtime was started.
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
  if not address and (num_processes is not None or process_id is not None):
    raise ValueError("--coordinator_address: missing; --num_processes and --process_id "
                     "need it (host:port of process 0), or drop them for one process")
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
    jax.distributed.initialize(**timeouts)  # jax detects the cluster: TPU, SLURM, MPI
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
