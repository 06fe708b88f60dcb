"""`restore(workdir, branch, step)`: a train state of a finished or running run, for users.

A damaged save (its files differ from its integrity record) is refused at an explicit
step, and passed over with a warning for the newest. An unverified one (no readable
record: `checkpoint.integrity`) is restored as it is, with one warning line on stderr:
`wsdjax: <branch>@<step> is unverified (<why>); ...`."""

from __future__ import annotations

import sys

import jax
import numpy as np

from wsdjax.training import ema as ema_lib
from wsdjax.checkpoint.errors import BrokenCheckpoint, CheckpointError
from wsdjax.checkpoint.tree import CheckpointTree
from wsdjax.schedule.plan import MAIN, StateRef


def nearest_steps(steps: list[int], n: int, k: int = 3) -> list[int]:
  """The `k` saved steps nearest `n`, ascending (for errors that suggest one)."""
  return sorted(sorted(steps, key=lambda s: (abs(s - n), s))[:k])


def latest_step(tree: CheckpointTree, branch: str, before: int | None = None) -> int | None:
  """Newest finished save of `branch` (at or before `before`, if given)."""
  steps = [s for s in tree.steps(branch) if before is None or s <= before]
  return steps[-1] if steps else None


def restore(workdir, branch: str = MAIN, step: int | None = None, mesh=None):
  """Load a train state of a run: `branch` ('main', 'decay-<N>', 'merge-<N>', or an EMA
  shadow 'ema-<decay>', whose params it returns as the state's params) at `step` (default:
  its latest complete save, passing over broken ones with a warning; an unverified one is
  restored with a warning). Onto `mesh` with the run's shardings, or as host numpy arrays
  without one. Takes no lock: it works while a run writes the tree."""
  from wsdjax import config as config_lib  # local: the tree itself needs neither
  cfg = config_lib.load_run_config(workdir)
  tree = CheckpointTree(workdir, read_only=True)
  try:
    if ema_lib.decay_of(branch) is not None:
      return _restore_shadow(tree, cfg, branch, step, mesh)
    steps = tree.steps(branch)
    if not steps:
      raise CheckpointError(f"branch: no saved states of {branch!r} in {workdir}; saved "
                            f"branches: {tree.branches()}")
    target = _target(cfg, mesh)
    if step is not None:
      return _restore_warning(tree, StateRef(branch, int(step)), target)[0]
    for newest in reversed(steps):  # the latest complete save of the branch
      try:
        return _restore_warning(tree, StateRef(branch, newest), target)[0]
      except BrokenCheckpoint as broken:
        if newest == steps[0]:
          raise
        print(f"wsdjax: {broken}; using the previous save", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")
  finally:
    tree.close()


def _restore_warning(tree: CheckpointTree, ref: StateRef, target):
  """`tree.restore(ref, target)`, an unverified save too, with one warning line for it."""
  record = tree.verification(ref)
  out = tree.restore(ref, target, unverified_ok=True)
  if not record.verified:
    print(f"wsdjax: {ref.branch}@{ref.step} is unverified ({record.why}); restored it as it "
          "is, unchecked (python -m wsdjax.branches --workdir "
          f"{tree.workdir} --verify checks it, --verify --record vouches for it)",
          file=sys.stderr, flush=True)
  return out


def _target(cfg, mesh):
  """The restore target: the run's abstract state on `mesh`, or host zeros without one."""
  from wsdjax.training import state as train_state  # local: the tree itself does not need it
  if mesh is None:
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), train_state.abstract_state(cfg))
  return train_state.abstract_state(cfg, mesh)


def _restore_shadow(tree: CheckpointTree, cfg, shadow: str, step: int | None, mesh):
  """The saved state holding EMA shadow `shadow` at `step` (default: the newest evaluated
  one), with that shadow as its params."""
  listed = {e["step"]: e for e in ema_lib.shadow_entries(tree.manifest())
            if e["branch"] == shadow}
  if not listed:
    raise CheckpointError(f"branch: no EMA shadow {shadow!r} in this run (train.ema_decays="
                          f"{tuple(cfg.train.ema_decays)}); saved branches: {tree.branches()}")
  if step is not None and int(step) not in listed:
    raise CheckpointError(f"step: {shadow} was evaluated at steps {sorted(listed)}, not "
                          f"{step}; pass one of those")
  source = listed[max(listed) if step is None else int(step)]["source"]
  decays = [ema_lib.name(d) for d in cfg.train.ema_decays]
  state = _restore_warning(tree, StateRef(source["branch"], source["step"]),
                           _target(cfg, mesh))[0]
  return state.replace(params=state.ema[decays.index(shadow)])
