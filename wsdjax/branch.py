"""`python -m wsdjax.branch`: decay the main branch when you like.

After the fact:  --workdir W --from-step N [--decay-steps D] [--decay-shape S] [--min-lr-ratio R]
  restores main@N (a saved main step) with its data position, decays for D steps, saves and
  evaluates the result as branch decay-<N+D>, and adds it to the manifest.
Live:            --workdir W --now [--decay-steps D] [--decay-shape S] [--min-lr-ratio R]
  asks the job running in W to fork a decay branch at its next main step (a request file in
  W/requests/, see wsdjax/training/live_requests.py); `--wait` blocks until the branch is saved.
D defaults to the run's decay_fraction of the budget the branch ends at.
"""

from __future__ import annotations

import json
import time

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_FROM = flags.DEFINE_integer("from_step", None, "Saved main step to decay from.")
_NOW = flags.DEFINE_bool("now", False, "Ask the running job to fork at its next step.")
_WAIT = flags.DEFINE_bool("wait", False, "With --now: wait until the branch is saved.")
_TIMEOUT = flags.DEFINE_float("timeout", 3600.0, "With --now --wait: give up after seconds "
                               "(and withdraw the request if the job has not accepted it).")
_QUEUE = flags.DEFINE_bool("queue", False, "With --now and no job running: leave the request "
                           "for the next run of the workdir.")
_DECAY_STEPS = flags.DEFINE_integer("decay_steps", None, "Decay length in steps.")
_SHAPE = flags.DEFINE_string("decay_shape", None, "linear | cosine | 1-sqrt | exponential.")
_MIN_LR = flags.DEFINE_float("min_lr_ratio", None, "End LR as a fraction of peak.")


def check_args() -> None:
  from wsdjax.schedule.builders import DECAY_SHAPES
  if _NOW.value == (_FROM.value is not None):
    cli.fail("--from_step/--now: give exactly one; --from-step N decays a saved main step, "
             "--now asks the running job")
  if _DECAY_STEPS.value is not None and _DECAY_STEPS.value <= 0:
    cli.fail(f"--decay_steps: must be a positive number of steps, got {_DECAY_STEPS.value}; "
             f"e.g. --decay-steps 100")
  if _SHAPE.value is not None and _SHAPE.value not in DECAY_SHAPES:
    cli.fail(f"--decay_shape: unknown shape {_SHAPE.value!r}; use one of "
             f"{', '.join(DECAY_SHAPES)}")
  if _MIN_LR.value is not None and not 0.0 <= _MIN_LR.value <= 1.0:
    cli.fail(f"--min_lr_ratio: must be in [0, 1], got {_MIN_LR.value}; e.g. 0.1")
  if _SHAPE.value == "exponential" and _MIN_LR.value == 0.0:
    cli.fail("--min_lr_ratio: exponential decay needs min_lr_ratio > 0; e.g. 0.01")


def after_the_fact(workdir: str, from_step: int, decay_steps: int | None,
                   decay_shape: str | None, min_lr_ratio: float | None) -> dict:
  """Decay main@from_step into a new decay branch; return its manifest entry."""
  from wsdjax import config as config_lib
  from wsdjax.checkpoint import lock
  cfg = config_lib.load_run_config(workdir)
  lock.acquire(workdir)  # before reading: a run writing the tree refuses us here
  try:
    return _decay(cfg, workdir, from_step, decay_steps, decay_shape, min_lr_ratio)
  finally:
    lock.release(workdir)


def _decay(cfg, workdir, from_step, decay_steps, decay_shape, min_lr_ratio) -> dict:
  from wsdjax import checkpoint as ckpt
  from wsdjax import config as config_lib
  from wsdjax.training import live_requests as live_branch
  from wsdjax.schedule import plan as plan_lib
  from wsdjax.training import trainer as trainer_lib
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    saved = tree.steps(plan_lib.MAIN)
    if from_step not in saved:
      near = ckpt.nearest_steps(saved, from_step)
      raise config_lib.ConfigError(
          "--from_step", f"main has no saved state at step {from_step}",
          f"use a saved main step, e.g. {', '.join(map(str, near))}" if near else
          "this run has no saved main states")
    decay_steps = decay_steps or live_branch.default_decay_steps(
        from_step, cfg.schedule.decay_fraction)
    seg = plan_lib.after_the_fact(cfg.schedule, from_step, decay_steps, decay_shape,
                                  min_lr_ratio)
    recipe = json.loads(json.dumps(seg.schedule_dict()))
    saved = [tree.entry(ckpt.StateRef(seg.branch, s)) for s in tree.steps(seg.branch)]
    if any(e is None or e.get("schedule") != recipe for e in saved):
      raise config_lib.ConfigError(
          "--decay_steps", f"branch {seg.branch} already exists in {workdir} with another "
          "decay (or from a planned segment)", "pick another --decay-steps (the branch name "
          "is decay-<from_step + decay_steps>); the same command resumes its own branch")
  config_lib.validate(cfg, None)
  with trainer_lib.Trainer(cfg, workdir) as trainer:
    return trainer.run_branch(seg)  # resumes a branch this command began, if any


def live(workdir: str, wait: bool, timeout: float) -> None:
  from wsdjax import checkpoint as ckpt
  from wsdjax import config as config_lib
  from wsdjax.training import live_requests as live_branch
  from wsdjax.checkpoint import lock
  config_lib.load_run_config(workdir)  # a clear error if W holds no run
  if lock.holder(workdir) is None and not _QUEUE.value:
    cli.fail(f"--now: no job is running in {workdir} (nobody holds its writer lock); start "
             "it with python -m wsdjax.train, decay a saved step with --from-step N, or pass "
             "--queue to leave the request for the next run")
  request = live_branch.submit(workdir, _DECAY_STEPS.value, _SHAPE.value, _MIN_LR.value)
  print(f"requested a decay branch from the job in {workdir} (request {request.id})")
  if not wait:
    return
  deadline = time.time() + timeout
  while time.time() < deadline:
    finished = live_branch.finished(workdir, request.id)
    if finished is not None:
      if finished.error:
        cli.fail(f"--now: the job refused the request: {finished.error}")
      entry = ckpt.CheckpointTree(workdir, read_only=True).entry(
          ckpt.StateRef(finished.branch, finished.end))
      loss = entry.get("eval_loss") if entry else None
      print(f"{finished.branch}: forked at main@{finished.fork_step}, eval loss {loss}")
      return
    time.sleep(0.5)
  withdrawn = live_branch.withdraw(workdir, request.id)
  cli.fail(f"--timeout: no branch after {timeout:.0f} s; "
           + ("the request is withdrawn" if withdrawn else "the job accepted it, so the "
              "branch will still be made"), 1)


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value)
  check_args()
  if _NOW.value:
    live(_WORKDIR.value, _WAIT.value, _TIMEOUT.value)
    return
  entry = after_the_fact(_WORKDIR.value, _FROM.value, _DECAY_STEPS.value, _SHAPE.value,
                         _MIN_LR.value)  # SIGTERM/SIGINT: Stop, which cli.run reports
  print(f"{entry['branch']}: decayed from main@{entry['fork_step']} to step {entry['step']}, "
        f"eval loss {entry['eval_loss']:.4f}")


if __name__ == "__main__":
  cli.run(main)
