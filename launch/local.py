"""Run `python -m wsdjax.train` as N processes on this machine, the way a pod runs it.

  python launch/local.py N CONFIG WORKDIR [--devices K] [--config.a.b=value ...]
  launch/local.sh N CONFIG WORKDIR [--devices K] [--config.a.b=value ...]

Each process gets K forced CPU devices (N*K global devices) and finds the others through
jax.distributed on 127.0.0.1 (a free port), from the environment variables that
`wsdjax.runtime.distributed.initialize` reads: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID. Process 0's output goes to the console; every process also logs to
WORKDIR/logs/process_<i>.log. With N=1 it is a plain single-process run.

Failure handling (the watchdog): when a process dies, the others get `--grace` seconds to
exit on their own (jax's heartbeat or a failed collective usually ends them), then
SIGTERM, then SIGKILL. Ctrl-C / SIGTERM to this launcher is passed on to every process
(the trainer saves and stops). Exit status: 0 if every process succeeded, else the first
failure's status (128+signal for a killed process). Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from wsdjax.runtime import hugepages  # standard library only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  """A TCP port that was free a moment ago (bound to port 0, then released)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict, index: int, count: int, devices: int, port: int,
                platform: str = "cpu", heartbeat_s: int = 0) -> dict:
  """The environment of process `index` of `count`: coordinator, id, devices, and glibc's
  huge pages where they help (`hugepages.environment`)."""
  env = hugepages.environment(base)
  env["PYTHONUNBUFFERED"] = "1"
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  else:  # one process per group of `devices` GPUs
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index * devices + d) for d in range(devices))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  if count > 1:
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    env["JAX_NUM_PROCESSES"] = str(count)
    env["JAX_PROCESS_ID"] = str(index)
    if heartbeat_s:
      env["JAX_HEARTBEAT_TIMEOUT"] = str(heartbeat_s)
  return env


def train_command(config: str, workdir: str, overrides: list[str],
                  python: str = sys.executable) -> list[str]:
  return [python, "-m", "wsdjax.train", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(
      prog="launch/local.sh", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("processes", type=int, help="number of processes (N)")
  p.add_argument("config", help="config file, e.g. configs/tiny.py")
  p.add_argument("workdir", help="run directory (resumed if it holds the run)")
  p.add_argument("--devices", type=int, default=1,
                 help="CPU devices per process (GPUs per process with --platform gpu)")
  p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  p.add_argument("--grace", type=float, default=30.0,
                 help="seconds the other processes get to exit after one fails")
  p.add_argument("--heartbeat", type=int, default=20,
                 help="jax.distributed heartbeat timeout in seconds: a process silent this "
                 "long ends the job (0: jax's default, 100)")
  p.add_argument("--log-dir", default="", help="default: WORKDIR/logs")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--")]
  if args.processes < 1:
    _fail(f"N: must be >= 1, got {args.processes}; pass the number of processes")
  if args.devices < 1:
    _fail(f"--devices: must be >= 1, got {args.devices}; e.g. --devices 4")
  if bad:
    _fail(f"arguments: unexpected {' '.join(bad)!r}; pass overrides as --config.a.b=value")
  return args, rest


def _fail(message: str) -> None:
  print(f"wsdjax: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _die_with_parent() -> None:
  """In the child: get SIGKILL when the launcher dies (Linux), so no process outlives it."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _stop(procs: list[subprocess.Popen], sig: int) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        p.send_signal(sig)
      except ProcessLookupError:
        pass


def _status(code: int) -> int:
  return 128 - code if code < 0 else code  # Popen gives -SIG for a killed child


def launch(args: argparse.Namespace, overrides: list[str]) -> int:
  """Start the processes, watch them, and return the job's exit status."""
  n = args.processes
  port = args.port or free_port()
  log_dir = args.log_dir or os.path.join(args.workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  cmd = train_command(args.config, args.workdir, overrides)
  env_base = dict(os.environ)
  env_base["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env_base.get("PYTHONPATH")]))
  procs, logs = [], []
  stopping = {"signal": None}

  def forward(signum, _frame):
    stopping["signal"] = signum
    _stop(procs, signal.SIGTERM)

  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    for i in range(n):
      log = open(os.path.join(log_dir, f"process_{i}.log"), "ab")
      logs.append(log)
      env = process_env(env_base, i, n, args.devices, port, args.platform, args.heartbeat)
      out = None if i == 0 else log  # process 0 to the console (and tee'd below)
      procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if i == 0 else out,
                                    stderr=subprocess.STDOUT, cwd=os.getcwd(),
                                    preexec_fn=_die_with_parent))
    print(f"launch: {n} process(es) x {args.devices} {args.platform} device(s)"
          + (f", coordinator 127.0.0.1:{port}" if n > 1 else "") + f"; logs in {log_dir}; "
          f"pids {' '.join(str(p.pid) for p in procs)}", flush=True)
    return _watch(procs, logs, args.grace, stopping)
  finally:
    _stop(procs, signal.SIGKILL)
    for log in logs:
      log.close()
    for s, h in old.items():
      signal.signal(s, h)


def _watch(procs, logs, grace: float, stopping: dict) -> int:
  """Tee process 0's output; after the first failure, wait `grace` s, then end the rest."""
  import threading

  def tee():
    for line in iter(procs[0].stdout.readline, b""):
      sys.stdout.buffer.write(line)
      sys.stdout.flush()
      logs[0].write(line)
      logs[0].flush()

  reader = threading.Thread(target=tee, daemon=True)
  reader.start()
  first_failure, failed_at, escalated = None, None, False
  while True:
    codes = [p.poll() for p in procs]
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if failed and first_failure is None:
      # A process killed by a signal is the cause when others failed in the same instant.
      first_failure = min(failed, key=lambda f: (f[1] >= 0, f[0]))
      failed_at = time.monotonic()
      if stopping["signal"] is None:
        i, c = first_failure
        print(f"launch: process {i} exited with status {_status(c)}; stopping the others "
              f"(grace {grace:.0f} s)", file=sys.stderr, flush=True)
    if all(c is not None for c in codes):
      break
    if failed_at is not None and time.monotonic() - failed_at > grace:
      _stop(procs, signal.SIGKILL if escalated else signal.SIGTERM)
      escalated, failed_at = True, time.monotonic() - grace + 5.0
    time.sleep(0.2)
  reader.join(timeout=5)
  if first_failure is None:
    return 0
  return _status(first_failure[1])


def main(argv: list[str] | None = None) -> int:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  return launch(args, overrides)


if __name__ == "__main__":
  sys.exit(main())
