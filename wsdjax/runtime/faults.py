"""Fault injection for tests of the fault paths (kill, preemption, NaN): off unless set.

`WSDJAX_FAULTS="action@branch:step[,...]"`, e.g. `kill_in_save@main:10,term_after_step@main:7`:
  kill_after_step   SIGKILL this process once update `step` of `branch` is done
  term_after_step   send this process SIGTERM there (the graceful stop path)
  int_after_step    send this process SIGINT there (Ctrl-C: the same path)
  kill_in_save      SIGKILL right after the async save of branch@step has started
  nan_at_step       feed NaN params into the update that produces `step` (its loss is NaN)
  int_at_startup    SIGINT once the trainer is built, before its first step compiles
                    (Ctrl-C during start-up; give it as int_at_startup@main:0)
  kill_after_shard  SIGKILL `python -m wsdjax.prepare` once it has written `step` shards
                    and their progress records (give it as kill_after_shard@prepare:N)
Without the variable every hook is a dictionary lookup that finds nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "WSDJAX_FAULTS"
ACTIONS = ("kill_after_step", "term_after_step", "int_after_step", "kill_in_save", "nan_at_step",
           "int_at_startup", "kill_after_shard")


def parse(spec: str) -> set[tuple[str, str, int]]:
  """`action@branch:step,...` -> {(action, branch, step)}; ValueError names a bad item."""
  faults = set()
  for item in filter(None, (s.strip() for s in spec.split(","))):
    action, _, where = item.partition("@")
    branch, _, step = where.rpartition(":")
    if action not in ACTIONS or not branch or not step.isdigit():
      raise ValueError(f"{ENV}: bad item {item!r}; use action@branch:step with action in "
                       f"{', '.join(ACTIONS)}")
    faults.add((action, branch, int(step)))
  return faults


_FAULTS = parse(os.environ.get(ENV, ""))


def _armed(action: str, branch: str, step: int) -> bool:
  return bool(_FAULTS) and (action, branch, int(step)) in _FAULTS


def before_step(branch: str, step: int, state):
  """Hook before the update that produces `step` of `branch`; returns the state to use."""
  if _armed("nan_at_step", branch, step):
    import jax  # pylint: disable=g-import-not-at-top - only here: prepare imports this module
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
  return state


def after_step(branch: str, step: int) -> None:
  """Hook once the update producing `step` of `branch` is done (before any save there)."""
  if _armed("kill_after_step", branch, step):
    os.kill(os.getpid(), signal.SIGKILL)
  if _armed("term_after_step", branch, step):
    os.kill(os.getpid(), signal.SIGTERM)
  if _armed("int_after_step", branch, step):
    os.kill(os.getpid(), signal.SIGINT)


def in_save(branch: str, step: int) -> None:
  """Hook just after the save of branch@step was started (still being written)."""
  if _armed("kill_in_save", branch, step):
    os.kill(os.getpid(), signal.SIGKILL)


def at_startup() -> None:
  """Hook once the trainer is built, before the first step is compiled."""
  if _armed("int_at_startup", "main", 0):
    os.kill(os.getpid(), signal.SIGINT)


_shards_written = [0]


def after_shard() -> None:
  """Hook once `python -m wsdjax.prepare` has written a shard flush and its record."""
  _shards_written[0] += 1
  if _armed("kill_after_shard", "prepare", _shards_written[0]):
    os.kill(os.getpid(), signal.SIGKILL)
