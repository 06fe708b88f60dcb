"""`launch/tpu_vm.sh supervise`: keep a run going on preemptible TPU capacity until it has
finished every budget, recreating the slice after each preemption.

Every --poll seconds it looks at the queued resource, then (when ACTIVE) at every worker:

  queued resource   missing -> create it | waiting states -> wait (state, time waited)
                    SUSPENDING, SUSPENDED -> a preemption: count it, delete, recreate
                    FAILED -> a failure: count it, delete, recreate
  workers (ACTIVE)  a new VM -> set it up | the trainer never ran here -> start it
                    running -> wait (worker 0's last log line every --report seconds)
                    ended -> the trainer's exit status decides:
    0 and its final table    finished: print the table, delete the slice (--keep-slice
                             keeps it), exit 0
    2 (bad input)            stop at once with the trainer's one line, exit 2
    3 (NaN/Inf, full disk)   stop with its line and the remedy, exit 3
    anything else            (killed, crashed, stopped by SIGTERM on a live slice) a
                             failure: count it, stop the others, start the trainer again

Starting the trainer again resumes from the newest checkpoint in the workdir, so a run
preempted N times ends with the checkpoints of an uninterrupted one. More than
--max-preemptions preemptions or --max-failures failures (or as many gcloud/ssh errors in
a row) end supervision, exit 1, with the run saved. Every event is printed with a UTC time
stamp and appended to the events file (JSON lines); a rerun of the same command reads it
back (the counts go on) and picks up whatever state the slice is in. Ctrl-C asks every
trainer to save and stop, waits for them, keeps the slice and exits 130.
"""

from __future__ import annotations

import json
import os
import sys
import time

import tpu_vm
from tpu_vm import GcloudError, stamp

FINISHED_MARK = "done: "  # the trainer's last line once every budget is done
TABLE_MARK = "decayed checkpoints:"


def remedy(line: str) -> str:
  """What to do after the trainer's exit 3 (README, "When things go wrong")."""
  if "non-finite" in line:
    return ("rerun this command with a lower --config.schedule.peak_lr (or check the data): "
            "the run resumes from the last good checkpoint")
  return ("free space in the workdir's storage (or fix it) and rerun this command: the "
          "checkpoints saved before are intact")


class Supervisor:
  """One supervised run: the slice `g` (a tpu_vm.Gcloud), the flags of `supervise`, the
  config overrides, and the packed checkout `archive` that every new VM gets."""

  def __init__(self, g, args, overrides: list[str], archive: str):
    self.g, self.args, self.overrides, self.archive = g, args, overrides, archive
    self.counts = {"preemptions": 0, "failures": 0, "recreations": 0}
    self.errors_in_a_row = 0
    self.last_state = None
    self.ended_once = False  # an ending is acted on when two polls in a row see it
    self.mixed_once = False
    self.last_report = 0.0
    self.after_interrupt = False  # the last supervision ended by Ctrl-C: trainers stopped
    self.asked_at = time.monotonic()  # when the queued resource was last asked for
    self._restore()

  # ---- the events file ----
  def _restore(self) -> None:
    """Counts of earlier supervision of this run (same name and workdir), if any."""
    path = self.args.events
    if not os.path.exists(path):
      return
    for line in open(path):
      try:
        event = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      if (event.get("name"), event.get("workdir")) == (self.g.name, self.args.workdir):
        self.counts.update(event.get("counts", {}))
        self.after_interrupt = event.get("event") == "stopped"
    if any(self.counts.values()):
      self.event("resumed", "supervision resumed: " + self._counted())

  def _counted(self) -> str:
    c = self.counts
    return (f"{c['preemptions']} preemption(s), {c['recreations']} recreation(s), "
            f"{c['failures']} failure(s) so far")

  def event(self, kind: str, message: str) -> None:
    print(f"{stamp()} supervise: {message}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(self.args.events)), exist_ok=True)
    with open(self.args.events, "a") as f:
      f.write(json.dumps({"time": stamp(), "name": self.g.name, "workdir": self.args.workdir,
                          "event": kind, "message": message, "counts": self.counts}) + "\n")

  # ---- the loop ----
  def run(self) -> int:
    self.event("start", f"supervising {self.g.name} ({self.args.accelerator_type}, "
               f"{self.args.capacity}) for {self.args.config} -> {self.args.workdir}")
    try:
      while True:
        code = self.step()
        if code is not None:
          return code
        time.sleep(self.args.poll)
    except KeyboardInterrupt:
      return self.interrupted()

  def step(self) -> int | None:
    """One look at the slice and the run; an exit status when supervision ends."""
    try:
      state = self.g.queued_state()
      if state != self.last_state:
        waited = tpu_vm.duration(time.monotonic() - self.asked_at)
        self.event("state", f"queued resource {self.g.name}: {state or 'none'}"
                   + (f" (asked {waited} ago)" if state else ""))
      self.last_state = state
      if state is None:
        return self.create()
      if state in tpu_vm.QUEUED_WAITING or state == "DELETING":
        return None
      if state in ("SUSPENDING", "SUSPENDED"):
        return self.preempted(state)
      if state != "ACTIVE":
        return self.lost_slice(state)
      code = self.on_active()
      self.errors_in_a_row = 0
      return code
    except GcloudError as e:
      self.errors_in_a_row += 1
      self.event("gcloud_error", f"gcloud: {e} ({self.errors_in_a_row} in a row)")
      if self.errors_in_a_row > self.args.max_failures:
        return self.give_up(f"{self.errors_in_a_row} gcloud/ssh errors in a row, more than "
                            f"--max-failures {self.args.max_failures}")
      return None

  # ---- the slice ----
  def create(self) -> int | None:
    if self.counts["preemptions"] or self.counts["failures"]:
      self.counts["recreations"] += 1
      self.event("recreate", f"recreating {self.g.name} ({self._counted()})")
    else:
      self.event("create", f"creating queued resource {self.g.name}")
    self.asked_at = time.monotonic()
    if self.g.run(*tpu_vm.create_commands(self.g, self.args)):
      return self.failure(f"gcloud refused to create {self.g.name}")
    return None

  def preempted(self, state: str) -> int | None:
    self.counts["preemptions"] += 1
    self.event("preempted", f"preempted: queued resource {self.g.name} is {state} "
               f"({self._counted()})")
    if self.counts["preemptions"] > self.args.max_preemptions:
      return self.give_up(f"{self.counts['preemptions']} preemptions, more than "
                          f"--max-preemptions {self.args.max_preemptions}", delete=True)
    self._delete()
    return None

  def lost_slice(self, state: str) -> int | None:
    code = self.failure(f"queued resource {self.g.name} is {state}")
    if code is None:
      self._delete()
    return code

  def _delete(self) -> None:
    self.event("delete", f"deleting queued resource {self.g.name} and its node")
    if self.g.run(self.g.queued_delete()):
      raise GcloudError(f"deleting {self.g.name} failed")

  # ---- the workers ----
  def worker_states(self) -> list[str]:
    """Each worker's state (tpu_vm.status_script): one ssh to all of them."""
    workers, _ = self.g.node_workers()
    out = self.g.query(self.g.ssh(tpu_vm.status_script()))
    states = [line.split(None, 2)[2].strip() for line in out.splitlines()
              if line.startswith(tpu_vm.WORKER_MARK) and len(line.split()) >= 3]
    if workers < 1 or len(states) != workers:
      raise GcloudError(f"{len(states)} of {workers} workers answered the status ssh")
    self.workers = workers
    return states

  def on_active(self) -> int | None:
    states = self.worker_states()
    if "nosetup" in states:
      return self.setup()
    if all(s == "none" for s in states):
      return self.start("starting the trainer")
    ended = [s for s in states if s.startswith("exited") or s == "died"]
    if ended and len(ended) < len(states):
      return self.mixed(states)
    self.mixed_once = False
    if not ended:
      self.ended_once = False
      self.report()
      return None
    return self.ended(states)

  def setup(self) -> int | None:
    self.event("setup", f"setting up {self.g.name}: the code packed at start, "
               f"wsdjax[{self.args.extra}]")
    if self.g.run(*tpu_vm.setup_commands(self.g, self.args, self.archive)):
      return self.failure("setting up the workers failed")
    return None

  def start(self, why: str) -> int | None:
    self.event("run", f"{why} on {self.workers} worker(s)")
    script = tpu_vm.train_script(self.args.config, self.args.workdir, self.overrides,
                                 self.workers)
    if self.g.run(self.g.ssh(script)):
      return self.failure("starting the trainer failed")
    self.last_report = time.monotonic()
    return None

  def mixed(self, states: list[str]) -> int | None:
    """Some workers ended, others still run (they usually follow within jax's heartbeat):
    seen twice in a row, ask the rest to save and stop."""
    if self.mixed_once:
      self.event("stop", f"workers {states}: asking the others to save and stop")
      self.g.run(*tpu_vm.stop_commands(self.g, self.args))
    self.mixed_once = True
    return None

  def report(self) -> None:
    if time.monotonic() - self.last_report < self.args.report:
      return
    self.last_report = time.monotonic()
    lines = self.log_tail(1)
    self.event("progress", f"running; worker 0: {lines[-1] if lines else '(no log yet)'}")

  def log_tail(self, lines: int) -> list[str]:
    out = self.g.query(self.g.ssh(f"tail -n {lines} {tpu_vm.LOG_DIR}/train.log", worker="0"))
    return [line for line in out.splitlines() if line.strip()]

  # ---- how the trainer ended ----
  def ended(self, states: list[str]) -> int | None:
    codes = [int(s.split()[1]) if s.startswith("exited ") and s.split()[1].isdigit() else None
             for s in states]
    tail = self.log_tail(200)
    said = [line for line in tail if line.startswith("wsdjax: ")]
    if 2 in codes:
      return self.trainer_error(2, said, "")
    if 3 in codes:
      return self.trainer_error(3, said, remedy(said[-1] if said else ""))
    if all(c == 0 for c in codes) and finished(tail):
      return self.finished(tail)
    if self.after_interrupt and all(c == 0 for c in codes):  # saved and stopped by Ctrl-C
      self.after_interrupt = False
      return self.start("starting the trainer again (it was stopped by Ctrl-C)")
    if not self.ended_once:  # a status still being written, or a slice about to be lost
      self.ended_once = True
      return None
    self.ended_once = False
    code = self.failure(f"the trainer ended on a live slice ({', '.join(states)}): "
                        f"{said[-1] if said else 'no message'}")
    return code if code is not None else self.start("starting the trainer again")

  def trainer_error(self, code: int, said: list[str], what_to_do: str) -> int:
    line = said[-1] if said else f"wsdjax: the trainer exited with status {code}"
    self.event("trainer_error", f"the trainer stopped with status {code}: {line}")
    print(line + (f"\nwsdjax: supervise: {what_to_do}" if what_to_do else ""),
          file=sys.stderr, flush=True)
    return code

  def finished(self, tail: list[str]) -> int:
    start = max(i for i, line in enumerate(tail) if line.startswith(TABLE_MARK))
    print("\n".join(tail[start:]), flush=True)
    self.event("finished", f"finished every budget ({self._counted()})")
    if not self.args.keep_slice:
      self._delete()
    return 0

  # ---- ending supervision ----
  def failure(self, why: str) -> int | None:
    self.counts["failures"] += 1
    self.event("failure", f"failure: {why} ({self._counted()})")
    if self.counts["failures"] > self.args.max_failures:
      return self.give_up(f"{self.counts['failures']} failures, more than --max-failures "
                          f"{self.args.max_failures}")
    return None

  def give_up(self, why: str, delete: bool = False) -> int:
    if delete:
      self._delete()
    self.event("gave_up", f"gave up: {why}")
    print(f"wsdjax: supervise: gave up after {why}; the run is saved in "
          f"{self.args.workdir}: rerun this command (with larger limits) to go on",
          file=sys.stderr, flush=True)
    return 1

  def interrupted(self) -> int:
    """Ctrl-C: every trainer saves and stops; the slice is kept."""
    self.event("interrupt", "Ctrl-C: asking every trainer to save and stop")
    try:
      self.g.run(*tpu_vm.stop_commands(self.g, self.args))
      deadline = time.monotonic() + self.args.stop_timeout
      while time.monotonic() < deadline:
        if not any(s in ("running", "starting") for s in self.worker_states()):
          break
        time.sleep(min(self.args.poll, 10))
    except (GcloudError, KeyboardInterrupt) as e:
      self.event("interrupt", f"not waiting for the trainers ({type(e).__name__})")
    self.event("stopped", f"stopped; {self.g.name} is kept: rerun this command to go on, "
               "or launch/tpu_vm.sh delete")
    return 130


def finished(tail: list[str]) -> bool:
  """Whether worker 0's log ends with the trainer's final table and `done:` line (a
  trainer stopped by SIGTERM also exits 0, with `wsdjax: stopped at ...` last)."""
  last_done = max((i for i, line in enumerate(tail) if line.startswith(FINISHED_MARK)),
                  default=-1)
  has_table = any(line.startswith(TABLE_MARK) for line in tail[:last_done])
  stopped_after = any(line.startswith("wsdjax: stopped at") for line in tail[last_done + 1:])
  return last_done >= 0 and has_table and not stopped_after
