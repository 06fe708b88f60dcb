"""Train on a Cloud TPU VM (one host or a pod slice) with `gcloud compute tpus tpu-vm`.

  launch/tpu_vm.sh --name NAME --zone ZONE [--project P] [--dry-run] SUBCOMMAND [options]

  create  --accelerator-type v4-64 [--version IMAGE] [--spot | --best-effort | --reserved]
          [--poll S]                   ask for the slice as a queued resource (named NAME, its
                                       node NAME) and wait, with progress, until it is ACTIVE
  setup   [--repo URL [--ref REF]]     copy this checkout (default) or clone URL to every
                                       worker; install wsdjax with the TPU jax extra in a venv
  prepare --input 'gs://BUCKET/corpus/*.parquet' --output gs://BUCKET/store [--workers N]
          [--tokenizer ... and the other flags of python -m wsdjax.prepare]
                                       tokenize a corpus into a token store on every worker,
                                       detached: worker I of N runs `python -m
                                       wsdjax.prepare --shard I/N`; the last to finish joins
  run     --config CONFIG --workdir gs://BUCKET/run [--workers N] [--config.a.b=value ...]
                                       start `python -m wsdjax.train` on every worker,
                                       detached (nohup), one log per worker
  logs    [--worker N] [--lines L] [--follow] [--log prepare]    tail a worker's log
  stop    SIGTERM to the trainer on every worker: each saves a checkpoint and exits; `run`
          with the same arguments resumes
  delete  delete the queued resource and its TPU VM (a TPU VM made without one: the VM)
  supervise --config CONFIG --workdir gs://BUCKET/run --accelerator-type v4-64 [--spot ...]
          [--max-preemptions N] [--max-failures M] [--poll S] [--config.a.b=value ...]
                                       keep the run going until every budget is done:
                                       recreate, set up and rerun after each preemption
                                       (launch/tpu_supervisor.py)

Every worker runs the same command, with WSDJAX_TPU_WORKERS set to the slice's worker
count (`--workers N`, else read from `gcloud ... describe`: its network endpoints, one a
worker). With several workers each one starts jax.distributed, which finds the others
itself (`wsdjax.runtime.distributed.initialize`); a single-host TPU VM never waits for peers. A
pod's workers share nothing but the network, so the workdir must be on GCS (checkpoints,
manifest, TensorBoard events and metrics go there).
`--dry-run` prints the exact commands instead of running them. NAME and ZONE default to
$TPU_NAME and $TPU_ZONE; the project to gcloud's default.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from preflight import fail  # standard library only at import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "~/wsdjax"  # the code on each worker
LOG_DIR = "~/wsdjax_logs"  # train.log, train.pid, train.status on each worker
ARCHIVE = "wsdjax-src.tgz"
# Default TPU VM images by accelerator family (cloud.google.com/tpu/docs/runtimes).
VERSIONS = (("v6e", "v2-alpha-tpuv6e"), ("v5p", "v2-alpha-tpuv5"),
            ("v5litepod", "v2-alpha-tpuv5-lite"), ("v5e", "v2-alpha-tpuv5-lite"),
            ("v4", "tpu-ubuntu2204-base"), ("v3", "tpu-ubuntu2204-base"),
            ("v2", "tpu-ubuntu2204-base"))
# The images ship Python 3.10; wsdjax needs >= 3.11, so setup installs 3.11 from Ubuntu.
REMOTE_PYTHON = "python3.11"
# The trainer's signal of how many workers the slice has (wsdjax/runtime/distributed.py reads it).
WORKERS_ENV = "WSDJAX_TPU_WORKERS"
# Queued resource states (cloud.google.com/tpu/docs/queued-resources): still on the way.
QUEUED_WAITING = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")


GCLOUD_MISSING = ("gcloud: not found on PATH; install the Google Cloud CLI "
                  "(cloud.google.com/sdk/docs/install) and run gcloud auth login")


class GcloudError(RuntimeError):
  """A gcloud query that failed (status and the last line of its stderr)."""


def default_version(accelerator_type: str) -> str:
  for prefix, version in VERSIONS:
    if accelerator_type.startswith(prefix):
      return version
  fail(f"--version: no default image for accelerator type {accelerator_type!r}; pass "
       f"--version (see gcloud compute tpus tpu-vm versions list)")


class Gcloud:
  """Builds `gcloud compute tpus tpu-vm ...` commands and runs (or prints) them."""

  def __init__(self, name: str, zone: str, project: str | None, dry_run: bool):
    self.name, self.zone, self.project, self.dry_run = name, zone, project, dry_run

  def tpu_vm(self, verb: str, *args: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={self.zone}"]
    return cmd + ([f"--project={self.project}"] if self.project else [])

  def queued(self, verb: str, *args: str, alpha: bool = False) -> list[str]:
    cmd = ["gcloud", *(["alpha"] if alpha else []), "compute", "tpus", "queued-resources",
           verb, *args, f"--zone={self.zone}"]
    return cmd + ([f"--project={self.project}"] if self.project else [])

  def ssh(self, command: str, worker: str = "all") -> list[str]:
    return self.tpu_vm("ssh", self.name, f"--worker={worker}", f"--command={command}")

  def scp(self, local: str, remote: str, worker: str = "all") -> list[str]:
    return self.tpu_vm("scp", local, f"{self.name}:{remote}", f"--worker={worker}")

  def query(self, cmd: list[str]) -> str:
    """Run a read-only gcloud command, return its stdout; GcloudError when it fails."""
    try:
      out = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
      fail(GCLOUD_MISSING)
    if out.returncode:
      lines = [line for line in out.stderr.splitlines() if line.strip()]
      raise GcloudError(f"{_verb(cmd)} failed with status {out.returncode}"
                        + (f" ({lines[-1].strip()})" if lines else ""))
    return out.stdout

  def query_json(self, cmd: list[str]) -> dict:
    try:
      return json.loads(self.query(cmd))
    except ValueError:
      raise GcloudError(f"{_verb(cmd)} did not print JSON") from None

  def queued_describe(self) -> list[str]:
    return self.queued("describe", self.name, "--format=json")

  def queued_delete(self) -> list[str]:
    """Deletes the queued resource and, with --force, its node."""
    return self.queued("delete", self.name, "--force", "--quiet")

  def node_describe(self) -> list[str]:
    return self.tpu_vm("describe", self.name, "--format=json")

  def queued_state(self) -> str | None:
    """The queued resource's state (WAITING_FOR_RESOURCES, ACTIVE, SUSPENDED, FAILED, ...);
    None when there is none of this name."""
    try:
      info = self.query_json(self.queued_describe())
    except GcloudError as e:
      if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
        return None
      raise
    return (info.get("state") or {}).get("state", "UNKNOWN")

  def node_workers(self) -> tuple[int, str]:
    """(workers, state) of the TPU VM: its network endpoints in `gcloud ... describe`
    (one a worker); GcloudError when the describe fails."""
    info = self.query_json(self.node_describe())
    return len(info.get("networkEndpoints") or []), info.get("state", "?")

  def worker_count(self) -> int | None:
    """The TPU VM's worker count (`node_workers`), fail() without one. Prints the query;
    with --dry-run runs nothing and returns None."""
    print(shlex.join(self.node_describe()), flush=True)
    if self.dry_run:
      return None
    try:
      workers, state = self.node_workers()
    except GcloudError as e:
      fail(f"gcloud: {e}; check --name, --zone and --project, or pass --workers N")
    if workers < 1:
      fail(f"gcloud: TPU VM {self.name} lists no workers (state {state}); "
           f"wait until it is READY, or pass --workers N")
    return workers

  def run(self, *commands: list[str]) -> int:
    for cmd in commands:
      print(shlex.join(cmd), flush=True)
      if self.dry_run:
        continue
      try:
        code = subprocess.call(cmd)
      except FileNotFoundError:
        fail(GCLOUD_MISSING)
      if code:
        print(f"wsdjax: command failed with status {code}: {shlex.join(cmd[:6])} ...",
              file=sys.stderr, flush=True)
        return code
    return 0


def _verb(cmd: list[str]) -> str:
  """What a `gcloud [alpha] compute tpus GROUP VERB NAME ...` command does: 'VERB NAME'."""
  at = cmd.index("compute") + 3
  return " ".join(cmd[at:at + 2])


# ---- sub-commands: each returns the commands it runs ----
def create_commands(g: Gcloud, args) -> list[list[str]]:
  """A queued resource NAME for node NAME; its capacity on-demand unless --spot,
  --best-effort (gcloud alpha) or --reserved."""
  version = args.version or default_version(args.accelerator_type)
  extra = [] if args.capacity == "on-demand" else [f"--{args.capacity}"]
  return [g.queued("create", g.name, f"--node-id={g.name}",
                   f"--accelerator-type={args.accelerator_type}",
                   f"--runtime-version={version}", *extra,
                   alpha=args.capacity == "best-effort")]


def stamp() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def duration(seconds: float) -> str:
  return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m{int(seconds % 60):02d}s"


def wait_active(g: Gcloud, poll_s: float, say=print, report_every_s: float = 600) -> str | None:
  """Poll the queued resource until it leaves the waiting states; say its state (and the
  time waited) at each change and every `report_every_s`. Returns the final state."""
  start = last_said = time.monotonic()
  last = "-"
  while True:
    state = g.queued_state()
    now = time.monotonic()
    if state != last or now - last_said >= report_every_s:
      say(f"{stamp()} queued resource {g.name}: {state} (waiting {duration(now - start)})")
      last, last_said = state, now
    if state not in QUEUED_WAITING:
      return state
    time.sleep(poll_s)


def create(g: Gcloud, args) -> int:
  """Ask for the queued resource, then wait until it is ACTIVE (exit 0) or ends
  otherwise (exit 3, naming the state)."""
  code = g.run(*create_commands(g, args))
  if code or g.dry_run:
    if g.dry_run:
      print(f"# then every {args.poll:g} s until its state is ACTIVE:\n"
            + shlex.join(g.queued_describe()))
    return code
  try:
    state = wait_active(g, args.poll, lambda line: print(line, flush=True))
  except GcloudError as e:
    fail(f"gcloud: {e}")
  if state == "ACTIVE":
    return 0
  print(f"wsdjax: create: queued resource {g.name} is {state}, not ACTIVE; run "
        f"launch/tpu_vm.sh delete, then create again (another zone or capacity may help)",
        file=sys.stderr, flush=True)
  return 3


def install_script(extra: str = "tpu", python: str = REMOTE_PYTHON) -> str:
  """Shell run on every worker after the code is in REMOTE_DIR: a venv with wsdjax[tpu]."""
  return " && ".join([
      f"(command -v {python} >/dev/null || (sudo apt-get update -q && "
      f"sudo apt-get install -y -q {python} {python}-venv))",
      f"cd {REMOTE_DIR}",
      f"{python} -m venv .venv",
      ".venv/bin/pip install -q --upgrade pip",
      # gs:// workdirs: gcsfs for etils.epath (no TensorFlow), google-cloud-storage for
      # tensorboardX's event files; Orbax reaches GCS through tensorstore by itself.
      f".venv/bin/pip install -q -e '.[{extra}]' gcsfs google-cloud-storage",
      ".venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), "
      "jax.devices()[0].device_kind)'",
  ])


def source_files(repo: str = REPO) -> list[str]:
  """Files of this checkout to copy: git's tracked and untracked-but-not-ignored files."""
  out = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, check=True)
  return sorted(f for f in out.stdout.decode().split("\0") if f and os.path.isfile(
      os.path.join(repo, f)))


def pack(archive: str, repo: str = REPO) -> int:
  """Write this checkout's source files (see `source_files`) to a .tgz; return how many."""
  import tarfile
  files = source_files(repo)
  with tarfile.open(archive, "w:gz") as tar:
    for f in files:
      tar.add(os.path.join(repo, f), arcname=f)
  return len(files)


def setup_commands(g: Gcloud, args, archive: str) -> list[list[str]]:
  """Fetch the code on every worker (clone `args.repo`, or unpack `archive`), install."""
  if args.repo:
    ref = f" && git -C {REMOTE_DIR} checkout -q {shlex.quote(args.ref)}" if args.ref else ""
    fetch = [g.ssh(f"rm -rf {REMOTE_DIR} && git clone -q {shlex.quote(args.repo)} "
                   f"{REMOTE_DIR}{ref}")]
  else:
    fetch = [g.scp(archive, f"~/{ARCHIVE}"),
             g.ssh(f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && "
                   f"tar -xzf ~/{ARCHIVE} -C {REMOTE_DIR}")]
  return fetch + [g.ssh(install_script(args.extra))]


def train_script(config: str, workdir: str, overrides: list[str], workers: int | str) -> str:
  """Shell run on every worker: the trainer in the background with WORKERS_ENV=`workers`
  (the same on every worker), under a shell that keeps its pid (train.pid, for `stop`) and
  its exit status (train.status, for `supervise`); train.started marks the start."""
  train = shlex.join([".venv/bin/python", "-m", "wsdjax.train", f"--config={config}",
                      f"--workdir={workdir}", *overrides])
  logs = LOG_DIR.replace("~", "$HOME", 1)
  keeper = f"{train} & echo $! > {logs}/train.pid; wait $!; echo $? > {logs}/train.status"
  return (f"mkdir -p {LOG_DIR} && cd {REMOTE_DIR} && "
          f"rm -f {LOG_DIR}/train.pid {LOG_DIR}/train.status && "
          f"date -u +%FT%TZ > {LOG_DIR}/train.started && "
          f"({WORKERS_ENV}={workers} nohup sh -c {shlex.quote(keeper)} >> {LOG_DIR}/train.log "
          f"2>&1 < /dev/null &) && echo \"$(hostname): started, log {LOG_DIR}/train.log\"")


WORKER_MARK = "WSDJAX-WORKER"


def status_script() -> str:
  """Shell run on every worker; prints `WSDJAX-WORKER <host> <state>`: nosetup (no venv:
  a new VM), none (never started here), starting, running, `exited <status>`, or died
  (gone without a status: its keeper shell was killed too)."""
  d = LOG_DIR
  return (f"if [ ! -x {REMOTE_DIR}/.venv/bin/python ]; then s=nosetup; "
          f"elif [ -f {d}/train.status ]; then s=\"exited $(cat {d}/train.status)\"; "
          f"elif [ -f {d}/train.pid ] && kill -0 $(cat {d}/train.pid) 2>/dev/null; then "
          f"s=running; elif [ -f {d}/train.pid ]; then s=died; "
          f"elif [ -f {d}/train.started ]; then s=starting; else s=none; fi; "
          f"echo \"{WORKER_MARK} $(hostname) $s\"")


def prepare_script(worker: int, workers: int, flags: list[str]) -> str:
  """Shell run on worker `worker`: its share of `python -m wsdjax.prepare`, detached."""
  prepare = shlex.join([".venv/bin/python", "-m", "wsdjax.prepare", *flags,
                        f"--shard={worker}/{workers}"])
  return (f"mkdir -p {LOG_DIR} && cd {REMOTE_DIR} && "
          f"(nohup {prepare} >> {LOG_DIR}/prepare.log 2>&1 < /dev/null &) && "
          f"echo \"$(hostname): preparing share {worker}/{workers}, log {LOG_DIR}/prepare.log\"")


def prepare_commands(g: Gcloud, args, flags: list[str], workers: int | None) -> list[list[str]]:
  """One ssh a worker (each gets its own --shard I/N); with several workers the output
  must be on GCS."""
  if workers != 1 and not args.output.startswith("gs://"):
    fail(f"--output: {args.output!r} is not on GCS, but the workers share no disk; pass "
         "--output gs://BUCKET/store")
  if workers is None:
    print("# one ssh a worker, I = 0 .. <workers> - 1 (--workers N skips the describe)",
          flush=True)
    return [g.ssh(prepare_script("<I>", "<workers>", flags), worker="<I>")]
  return [g.ssh(prepare_script(i, workers, flags), worker=str(i)) for i in range(workers)]


def check_workdir(args) -> None:
  if not args.workdir.startswith("gs://") and not args.local_workdir:
    fail(f"--workdir: {args.workdir!r} is not on GCS, but a pod's workers share no disk; "
         f"pass --workdir gs://BUCKET/PATH (or --local-workdir on a single-host TPU VM)")


def run_commands(g: Gcloud, args, overrides: list[str], workers: int | None) -> list[list[str]]:
  """The trainer on every worker (`--worker=all`), told the slice has `workers` workers
  (None: unknown in a dry run, printed as <workers>)."""
  if workers is not None and workers > 1 and args.local_workdir:
    fail(f"--local-workdir: the TPU VM has {workers} workers, which share no disk; pass "
         f"--workdir gs://BUCKET/PATH")
  if workers is None:
    print("# <workers>: the number of networkEndpoints the describe above lists "
          "(--workers N skips it)", flush=True)
  script = train_script(args.config, args.workdir, overrides,
                        "<workers>" if workers is None else workers)
  return [g.ssh(script)]


def logs_commands(g: Gcloud, args) -> list[list[str]]:
  follow = " -F" if args.follow else ""
  return [g.ssh(f"tail -n {args.lines}{follow} {LOG_DIR}/{args.log}.log", worker=str(args.worker))]


def stop_commands(g: Gcloud, args) -> list[list[str]]:
  # SIGTERM: the trainer saves at an agreed step on every worker, then exits.
  return [g.ssh(f"if [ -f {LOG_DIR}/train.pid ]; then kill -TERM $(cat {LOG_DIR}/train.pid) "
                f"2>/dev/null && echo \"$(hostname): stopping\" || echo \"$(hostname): not "
                f"running\"; fi")]


def delete_commands(g: Gcloud, args) -> list[list[str]]:
  """The queued resource and its node (--force); a TPU VM made without a queued
  resource (wsdjax before them) is deleted as a VM."""
  if not g.dry_run:
    try:
      if g.queued_state() is None:
        return [g.tpu_vm("delete", g.name, "--quiet")]
    except GcloudError as e:
      fail(f"gcloud: {e}")
  return [g.queued_delete()]


def check_supervise(args, overrides: list[str]) -> None:
  """Everything checked here before a VM is asked for: the numbers, the workdir, the
  accelerator type and the config (loaded with its overrides, validated for the slice's
  chips, as wsdjax.train will on the workers)."""
  for flag in ("max_preemptions", "max_failures"):
    if getattr(args, flag) < 1:
      fail(f"--{flag.replace('_', '-')}: {getattr(args, flag)} is not a count >= 1; pass e.g. "
           f"--{flag.replace('_', '-')} {100 if flag == 'max_preemptions' else 5}")
  for flag in ("poll", "report", "stop_timeout"):
    if not getattr(args, flag) > 0:
      fail(f"--{flag.replace('_', '-')}: {getattr(args, flag)} is not a number of seconds > 0")
  if not args.workdir.startswith("gs://") and not args.shared_workdir:
    fail(f"--workdir: {args.workdir!r} is not on GCS, and a preempted VM's disk is gone with "
         f"it; pass --workdir gs://BUCKET/PATH (or --shared-workdir for a mount every VM has)")
  try:
    import preflight
    import ml_collections  # noqa: F401 - what loading the config needs
  except ImportError as e:
    fail(f"supervise: checks the config here first, but {sys.executable} cannot import "
         f"wsdjax ({e}); run it with a venv that has it: PYTHON=.venv/bin/python "
         f"launch/tpu_vm.sh ...")
  chips = preflight.tpu_slice(args.accelerator_type).chips
  args.config = preflight.config_path(args.config)
  preflight.load_config(args.config, overrides, chips)
  args.version = args.version or default_version(args.accelerator_type)
  args.events = args.events or os.path.join(
      os.path.expanduser("~"), ".wsdjax", f"supervise-{args.name}.jsonl")


def supervise(g: Gcloud, args, overrides: list[str]) -> int:
  """Check, pack the checkout once (every VM made later gets the same code), supervise."""
  check_supervise(args, overrides)
  import tpu_supervisor
  if g.dry_run:
    print("# every --poll seconds, as the slice needs: create, setup, run, status, delete")
    archive = os.path.join(tempfile.gettempdir(), ARCHIVE)
    for cmd in (create_commands(g, args) + [g.queued_describe()]
                + setup_commands(g, args, archive)
                + [g.ssh(train_script(args.config, args.workdir, overrides, "<workers>")),
                   g.ssh(status_script()), g.queued_delete()]):
      print(shlex.join(cmd))
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    archive = os.path.join(tmp, ARCHIVE)
    if not args.repo:
      print(f"# packed {pack(archive)} files of {REPO} into {archive}", flush=True)
    return tpu_supervisor.Supervisor(g, args, overrides, archive).run()


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/tpu_vm.sh", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--name", default=os.environ.get("TPU_NAME"), help="TPU VM name ($TPU_NAME)")
  p.add_argument("--zone", default=os.environ.get("TPU_ZONE"), help="zone ($TPU_ZONE)")
  p.add_argument("--project", default=os.environ.get("TPU_PROJECT"), help="GCP project")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  sub = p.add_subparsers(dest="command", required=True)
  c = sub.add_parser("create", help="ask for the slice (a queued resource) and wait for it")
  slice_flags(c)
  s = sub.add_parser("setup", help="copy or clone the code to every worker and install it")
  s.add_argument("--repo", default="", help="git URL to clone instead of copying this checkout")
  s.add_argument("--ref", default="", help="branch, tag or commit to check out (with --repo)")
  s.add_argument("--extra", default="tpu", help="pip extra of wsdjax to install (tpu)")
  r = sub.add_parser("run", help="start training on every worker (detached)")
  r.add_argument("--config", required=True, help="config file, relative to the repo")
  r.add_argument("--workdir", required=True, help="gs://BUCKET/PATH shared by the workers")
  r.add_argument("--local-workdir", action="store_true",
                 help="allow a workdir on the worker's disk (single-host TPU VMs only)")
  r.add_argument("--workers", type=int, default=None,
                 help="the TPU VM's worker count (default: from gcloud ... describe)")
  pr = sub.add_parser("prepare", help="tokenize a corpus into a token store on every worker "
                      "(detached; other flags go to python -m wsdjax.prepare)")
  pr.add_argument("--input", required=True, help="files, folder or glob on GCS (quoted)")
  pr.add_argument("--output", required=True, help="gs://BUCKET/store")
  pr.add_argument("--workers", type=int, default=None,
                  help="the TPU VM's worker count (default: from gcloud ... describe)")
  lg = sub.add_parser("logs", help="tail a worker's training (or prepare) log")
  lg.add_argument("--log", choices=("train", "prepare"), default="train")
  lg.add_argument("--worker", type=int, default=0)
  lg.add_argument("--lines", type=int, default=50)
  lg.add_argument("--follow", action="store_true", help="keep following (Ctrl-C to end)")
  sub.add_parser("stop", help="ask every worker's trainer to save and stop (SIGTERM)")
  sub.add_parser("delete", help="delete the queued resource and its TPU VM")
  supervise_flags(sub.add_parser(
      "supervise", help="keep the run going until it is done: recreate, set up and rerun "
      "after each preemption (other flags: --config.a.b=value overrides)"))
  return p


def slice_flags(p: argparse.ArgumentParser) -> None:
  """What `create` and `supervise` ask for: the slice, its image and its capacity."""
  p.add_argument("--accelerator-type", required=True, help="e.g. v4-64, v5litepod-64, v4-8")
  p.add_argument("--version", default="", help="TPU VM image (default: by accelerator type)")
  capacity = p.add_mutually_exclusive_group()
  for kind, what in (("spot", "spot (preemptible) capacity"),
                     ("best-effort", "best-effort capacity (gcloud alpha)"),
                     ("reserved", "your reservation")):
    capacity.add_argument(f"--{kind}", dest="capacity", action="store_const", const=kind,
                          help=what)
  p.set_defaults(capacity="on-demand")
  p.add_argument("--poll", type=float, default=60.0,
                 help="seconds between looks at the queued resource (60)")


def supervise_flags(p: argparse.ArgumentParser) -> None:
  slice_flags(p)
  p.add_argument("--config", required=True, help="config file, relative to the repo")
  p.add_argument("--workdir", required=True, help="gs://BUCKET/PATH: outlives every VM")
  p.add_argument("--shared-workdir", action="store_true",
                 help="allow a workdir path that is not gs:// (a Filestore or gcsfuse mount "
                 "every VM has)")
  p.add_argument("--max-preemptions", type=int, default=100,
                 help="recreate the slice after up to this many preemptions (100)")
  p.add_argument("--max-failures", type=int, default=5,
                 help="rerun after up to this many failures (and as many gcloud errors in "
                 "a row) (5)")
  p.add_argument("--report", type=float, default=600.0,
                 help="seconds between progress lines while the trainer runs (600)")
  p.add_argument("--stop-timeout", type=float, default=600.0,
                 help="after Ctrl-C, seconds to wait for the trainers to save (600)")
  p.add_argument("--events", default="", help="events file (default "
                 "~/.wsdjax/supervise-NAME.jsonl); a rerun reads its counts back")
  p.add_argument("--keep-slice", action="store_true", help="keep the slice when the run is done")
  p.add_argument("--repo", default="", help="git URL to clone instead of copying this checkout")
  p.add_argument("--ref", default="", help="branch, tag or commit to check out (with --repo)")
  p.add_argument("--extra", default="tpu", help="pip extra of wsdjax to install (tpu)")


def main(argv: list[str] | None = None) -> int:
  args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
  if args.command == "prepare":
    if any(a.split("=")[0] in ("--shard", "--join") for a in rest):
      fail("--shard: set per worker by the launcher; pass the other flags of "
           "python -m wsdjax.prepare")
  elif rest and (args.command not in ("run", "supervise")
                 or any(not a.startswith("--config.") for a in rest)):
    fail(f"arguments: unexpected {' '.join(rest)!r}; only `run` and `supervise` take "
         f"--config.a.b=value overrides")
  if not args.name:
    fail("--name: missing; pass --name NAME (or set TPU_NAME)")
  if not args.zone:
    fail("--zone: missing; pass --zone ZONE, e.g. us-central2-b (or set TPU_ZONE)")
  g = Gcloud(args.name, args.zone, args.project, args.dry_run)
  if args.command == "setup" and not args.repo:
    with tempfile.TemporaryDirectory() as tmp:
      archive = os.path.join(tmp, ARCHIVE)
      if args.dry_run:
        print(f"# would pack {len(source_files())} files of {REPO} into {archive}")
      else:
        print(f"# packed {pack(archive)} files of {REPO} into {archive}", flush=True)
      return g.run(*setup_commands(g, args, archive))
  if args.command == "create":
    return create(g, args)
  if args.command == "supervise":
    return supervise(g, args, rest)
  builders = {"logs": logs_commands, "stop": stop_commands, "delete": delete_commands}
  if args.command == "run":
    check_workdir(args)
    if args.workers is not None and args.workers < 1:
      fail(f"--workers: {args.workers} is not a count >= 1")
    workers = args.workers or g.worker_count()
    return g.run(*run_commands(g, args, rest, workers))
  if args.command == "prepare":
    if args.workers is not None and args.workers < 1:
      fail(f"--workers: {args.workers} is not a count >= 1")
    workers = args.workers or g.worker_count()
    flags = [f"--input={args.input}", f"--output={args.output}", *rest]
    return g.run(*prepare_commands(g, args, flags, workers))
  if args.command == "setup":
    return g.run(*setup_commands(g, args, ""))
  return g.run(*builders[args.command](g, args))


if __name__ == "__main__":
  sys.modules.setdefault("tpu_vm", sys.modules[__name__])  # one module for tpu_supervisor
  sys.exit(main())
