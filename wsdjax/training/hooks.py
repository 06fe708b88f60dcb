"""Hooks: what the training loop runs besides training, in the manner of levanter's
`trainer.add_hook(fn, every=n)`.

A hook is a function of one `Context` (the step, its segment, the state in hand and the
services a hook may use); it never sees the trainer. `Hooks.add(fn, every=n, when=...)`:

  when="step"  after the update producing step t of a segment (t < its end), once that
               step's eval and save are done, if t % n == 0
  when="end"   at a segment's end state, before it is saved; the hook may return an
               `Evaluation`, recorded in the state's metric row and manifest entry
  when="done"  once a planned segment's end state is saved (or a rerun finds it saved)

Hooks of one `when` run in the order they were added; a hook's error propagates and ends
the run like the loop's own errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

WHEN = ("step", "end", "done")


@dataclasses.dataclass(frozen=True)
class Context:
  """What a hook sees. `save` and `run_branch` are for step hooks only, `check_finite` not
  at "done": None where they do not apply."""
  step: int  # the step the state is at
  seg: Any  # the segment (`schedule.plan.Segment`): branch, start, end, schedule
  run_steps: int | None  # updates the run has executed at `step`; None at "done"
  live: Any  # the state at `step` with its data position (`trainer.Live`); None at "done"
  extra: bool  # a decay branch outside the plan (after the fact, or live)
  tree: Any  # the checkpoint tree: read it; only a merge saves its own branch into it
  abstract: Any  # the train state's shapes and shardings, to restore a save
  eval_loss: Callable[[Any], float]  # params -> loss on the run's validation batches
  print: Callable[[str], None]  # a line on the console and in the run's log
  wait_for_saves: Callable[[], None]  # wait for pending saves, reporting each
  save: Callable[..., None] | None = None  # save(lr, **entry fields): `live` at `step`
  check_finite: Callable[[], None] | None = None  # raise if the last update was not finite
  run_branch: Callable[[Any], dict] | None = None  # run a decay segment from `live`

  @property
  def branch(self) -> str:
    return self.seg.branch


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What an "end" hook found about a segment's end state: scalars for its metric row and
  fields for its manifest entry."""
  metrics: dict
  entry: dict


@dataclasses.dataclass(frozen=True)
class Hook:
  fn: Callable[[Context], Any]
  every: int
  when: str


class Hooks:
  """The hooks of a trainer, by `when`, in the order added."""

  def __init__(self):
    self._hooks: list[Hook] = []

  def add(self, fn: Callable[[Context], Any], every: int = 1, when: str = "step") -> None:
    """Run `fn(context)` at `when` (one of WHEN) wherever the step is a multiple of
    `every`; ValueError for another `when` or `every` < 1."""
    if when not in WHEN:
      raise ValueError(f"when: {when!r} is not one of {', '.join(WHEN)}")
    if int(every) < 1:
      raise ValueError(f"every: must be >= 1, got {every!r}")
    self._hooks.append(Hook(fn, int(every), when))

  def run(self, when: str, context: Context) -> list:
    """Run the hooks of `when` due at `context.step`, in order; what they returned (None
    left out)."""
    found = []
    for hook in self._hooks:
      if hook.when == when and context.step % hook.every == 0:
        result = hook.fn(context)
        if result is not None:
          found.append(result)
    return found
