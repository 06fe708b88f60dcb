"""A stand-in `gcloud` for launch/tpu_vm.py's tests: it plays a queued resource's life on
this machine and records every command it gets (JSON lines in $FAKE_GCLOUD_LOG).

State lives in $FAKE_TPU_ROOT: the queued resource (state.json) and one home folder per
worker ($FAKE_TPU_WORKERS, default 1), which `ssh` runs commands in (bash, HOME set to it,
a new session each); a multi-worker slice gets jax.distributed's variables for 127.0.0.1.
The setup's install step links the tests' venv instead of installing. Life:
  queued-resources create    WAITING_FOR_RESOURCES for $FAKE_QR_WAITS describes (1), then
                             PROVISIONING once, then ACTIVE; refused (quota) the first
                             $FAKE_CREATE_REFUSALS times
  preemptions                $FAKE_PREEMPTIONS: WSDJAX_FAULTS specs separated by ';', the
                             k-th given to the k-th trainer started (none where empty),
                             counted across calls; once that trainer has
                             ended, the next describe finds every worker killed and the
                             queued resource SUSPENDED (its node PREEMPTED)
  ssh                        fails (status 255) the first $FAKE_SSH_FAILURES times, and
                             while the slice is not ACTIVE
  queued-resources delete    kills every worker's processes and removes their homes
"""

import json
import os
import shutil
import signal
import subprocess
import sys

ROOT = os.environ["FAKE_TPU_ROOT"]
STATE = os.path.join(ROOT, "state.json")
COUNTERS = os.path.join(ROOT, "counters.json")
WORKERS = int(os.environ.get("FAKE_TPU_WORKERS", "1"))


def load(path, default):
  return json.load(open(path)) if os.path.exists(path) else default


def save(path, value):
  with open(path + ".tmp", "w") as f:
    json.dump(value, f)
  os.replace(path + ".tmp", path)


def take(counter: str, env: str) -> bool:
  """Whether this call is one of the first $env calls of its kind (and count it)."""
  counters = load(COUNTERS, {})
  counters[counter] = counters.get(counter, 0) + 1
  save(COUNTERS, counters)
  return counters[counter] <= int(os.environ.get(env, "0"))


def home(i: int) -> str:
  return os.path.join(ROOT, f"worker-{i}")


def flag(args, name):
  return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def kill_workers(state):
  for pgid in state.get("sessions", []):
    try:
      os.killpg(pgid, signal.SIGKILL)
    except OSError:
      pass
  state["sessions"] = []


def trainer_ended(state) -> bool:
  return any(os.path.exists(os.path.join(home(i), "wsdjax_logs", "train.status"))
             for i in range(WORKERS))


def queued(verb, args):
  state = load(STATE, None)
  if verb == "create":
    if take("create", "FAKE_CREATE_REFUSALS"):
      sys.exit("ERROR: (gcloud.compute.tpus.queued-resources.create) Quota exceeded for "
               "quota metric 'TPUs' in region us-central2")
    for i in range(WORKERS):
      os.makedirs(home(i), exist_ok=True)
    save(STATE, {"state": "WAITING_FOR_RESOURCES", "waits": int(os.environ.get(
        "FAKE_QR_WAITS", "1")), "sessions": [], "armed": False,
        "port": 20000 + os.getpid() % 20000})
    return
  if state is None:
    sys.exit(f"ERROR: (gcloud.compute.tpus.queued-resources.{verb}) NOT_FOUND: "
             f"Resource 'projects/p/locations/z/queuedResources/{args[0]}' was not found")
  if verb == "describe":
    advance(state)
    print(json.dumps({"name": args[0], "state": {"state": state["state"]}}))
  elif verb == "delete":
    kill_workers(state)
    for i in range(WORKERS):
      shutil.rmtree(home(i), ignore_errors=True)
    os.remove(STATE)


def advance(state):
  """One step of the queued resource's life, as seen by a describe."""
  if state["state"] == "WAITING_FOR_RESOURCES":
    state["waits"] -= 1
    if state["waits"] < 0:
      state["state"] = "PROVISIONING"
  elif state["state"] == "PROVISIONING":
    state["state"] = "ACTIVE"
  elif state["state"] == "ACTIVE" and state["armed"] and trainer_ended(state):
    kill_workers(state)  # the VMs vanish: nothing more is written
    state["state"], state["armed"] = "SUSPENDED", False
  save(STATE, state)


def worker_env(i: int, state) -> dict:
  env = dict(os.environ, HOME=home(i))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "WSDJAX_FAULTS"):
    env.pop(key, None)
  if WORKERS > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{state['port']}",
               JAX_NUM_PROCESSES=str(WORKERS), JAX_PROCESS_ID=str(i))
  return env


def ssh(args):
  state = load(STATE, None)
  if take("ssh", "FAKE_SSH_FAILURES") or state is None or state["state"] != "ACTIVE":
    sys.exit("ssh: connect to host 10.0.0.2 port 22: Connection timed out")  # status 1
  command = flag(args, "command")
  worker = flag(args, "worker")
  faults = None
  if "wsdjax.train" in command:  # a trainer start: the k-th gets the k-th preemption
    plays = os.environ.get("FAKE_PREEMPTIONS", "").split(";")
    starts = load(COUNTERS, {}).get("trainer_starts", 0)
    take("trainer_starts", "NO_SUCH_VARIABLE")
    if starts < len(plays) and plays[starts]:
      faults, state["armed"] = plays[starts], True
  if " -m venv " in command:  # the install step: link the tests' venv
    command = f"mkdir -p ~/wsdjax && ln -sfn {os.environ['FAKE_VENV']} ~/wsdjax/.venv"
  code = 0
  for i in range(WORKERS) if worker == "all" else [int(worker)]:
    env = worker_env(i, state)
    if faults:
      env["WSDJAX_FAULTS"] = faults
    proc = subprocess.Popen(["bash", "-c", command], cwd=home(i), env=env,
                            start_new_session=True)
    code = proc.wait() or code
    if "wsdjax.train" in command:
      state["sessions"].append(proc.pid)
  save(STATE, state)
  sys.exit(code)


def scp(args):
  local, remote = args[0], args[1].split(":", 1)[1]
  for i in range(WORKERS):
    shutil.copy(local, os.path.join(home(i), remote.removeprefix("~/")))


def node(verb, args):
  state = load(STATE, None)
  if state is None:
    sys.exit(f"ERROR: (gcloud.compute.tpus.tpu-vm.{verb}) NOT_FOUND: {args[0]}")
  if verb == "ssh":
    ssh(args)
  elif verb == "scp":
    scp(args)
  elif verb == "describe":
    print(json.dumps({"state": "PREEMPTED" if state["state"] == "SUSPENDED" else "READY",
                      "networkEndpoints": [{"ipAddress": f"10.0.0.{i}"}
                                           for i in range(WORKERS)]}))


def main(argv):
  os.makedirs(ROOT, exist_ok=True)
  with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
  args = argv[1:] if argv[:1] == ["alpha"] else argv
  if args[:3] == ["compute", "tpus", "queued-resources"]:
    queued(args[3], args[4:])
  elif args[:3] == ["compute", "tpus", "tpu-vm"]:
    node(args[3], args[4:])
  else:
    sys.exit(f"stand-in gcloud: {' '.join(argv)} is not played")


if __name__ == "__main__":
  main(sys.argv[1:])
