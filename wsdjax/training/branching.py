"""Branches made beside a run, behind `python -m wsdjax.branch` and `python -m wsdjax.merge`:
a decay of a saved main step after the fact (`decay_after_the_fact`), a merge of main's
saves (`merge`), and the client side of a live request to the job running in a workdir
(`request_live`, `wait_for_branch`; the job's side: `training.live_requests`).

Each writes the run's checkpoint tree under the workdir's writer lock, or refuses with a
`BadInput` (exit 2) naming the flag to change.
"""

from __future__ import annotations

import json
import time

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.checkpoint import lock
from wsdjax.runtime.errors import BadInput
from wsdjax.schedule import plan as plan_lib
from wsdjax.schedule.plan import MAIN, StateRef
from wsdjax.training import live_requests
from wsdjax.training import merges
from wsdjax.training import trainer as trainer_lib


def decay_after_the_fact(workdir: str, from_step: int, decay_steps: int | None,
                         decay_shape: str | None, min_lr_ratio: float | None) -> dict:
  """Decay main@from_step into a new decay branch; return its manifest entry."""
  cfg = config_lib.load_run_config(workdir)
  lock.acquire(workdir)  # before reading: a run writing the tree refuses us here
  try:
    seg = _decay_segment(cfg, workdir, from_step, decay_steps, decay_shape, min_lr_ratio)
    config_lib.validate(cfg, None)
    with trainer_lib.Trainer(cfg, workdir) as trainer:
      return trainer.run_branch(seg)  # resumes a branch this command began, if any
  finally:
    lock.release(workdir)


def _decay_segment(cfg, workdir, from_step, decay_steps, decay_shape, min_lr_ratio):
  """The after-the-fact segment from main@from_step; ConfigError naming the flag when
  main@from_step is not saved or its branch exists with another decay."""
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    saved = tree.steps(MAIN)
    if from_step not in saved:
      near = ckpt.nearest_steps(saved, from_step)
      raise config_lib.ConfigError(
          "--from_step", f"main has no saved state at step {from_step}",
          f"use a saved main step, e.g. {', '.join(map(str, near))}" if near else
          "this run has no saved main states")
    decay_steps = decay_steps or live_requests.default_decay_steps(
        from_step, cfg.schedule.decay_fraction)
    seg = plan_lib.after_the_fact(cfg.schedule, from_step, decay_steps, decay_shape,
                                  min_lr_ratio)
    recipe = json.loads(json.dumps(seg.schedule_dict()))
    saved = [tree.entry(StateRef(seg.branch, s)) for s in tree.steps(seg.branch)]
    if any(e is None or e.get("schedule") != recipe for e in saved):
      raise config_lib.ConfigError(
          "--decay_steps", f"branch {seg.branch} already exists in {workdir} with another "
          "decay (or from a planned segment)", "pick another --decay-steps (the branch name "
          "is decay-<from_step + decay_steps>); the same command resumes its own branch")
  return seg


def merge(workdir: str, at: int, window: int, weights: str = "uniform") -> dict:
  """Average main's saves in (at - window, at] into branch merge-<at>; its entry."""
  cfg = config_lib.load_run_config(workdir)
  config_lib.validate(cfg, None)
  with trainer_lib.Trainer(cfg, workdir) as trainer:  # holds the workdir's writer lock
    sources = merges.sources_of(trainer.tree.steps(MAIN), at, window)
    ref = StateRef(plan_lib.merge_branch_name(at), at)
    if trainer.tree.steps(ref.branch):
      raise config_lib.ConfigError("--at", f"branch {ref.branch} already exists in {workdir}",
                                   "merge at another step")
    return merges.average_into_tree(trainer.tree, trainer.steps.abstract, trainer.eval_loss,
                                    at, sources, window, weights)


def request_live(workdir: str, decay_steps: int | None, decay_shape: str | None,
                 min_lr_ratio: float | None, queue: bool = False) -> live_requests.Request:
  """Ask the job running in `workdir` to fork a decay branch at its next main step; with
  `queue`, leave the request for the next run when no job is running (else BadInput)."""
  config_lib.load_run_config(workdir)  # a clear error if W holds no run
  if lock.holder(workdir) is None and not queue:
    raise BadInput(
        f"--now: no job is running in {workdir} (nobody holds its writer lock); start "
        "it with python -m wsdjax.train, decay a saved step with --from-step N, or pass "
        "--queue to leave the request for the next run")
  return live_requests.submit(workdir, decay_steps, decay_shape, min_lr_ratio)


def wait_for_branch(workdir: str, request_id: str,
                    timeout: float) -> tuple[live_requests.Request, float | None] | None:
  """(the finished request, its branch's eval loss) once the job has made the branch of
  request `request_id`; BadInput if the job refused it; None after `timeout` seconds."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    finished = live_requests.finished(workdir, request_id)
    if finished is not None:
      if finished.error:
        raise BadInput(f"--now: the job refused the request: {finished.error}")
      entry = ckpt.CheckpointTree(workdir, read_only=True).entry(
          StateRef(finished.branch, finished.end))
      return finished, entry.get("eval_loss") if entry else None
    time.sleep(0.5)
  return None
