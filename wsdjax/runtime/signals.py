"""Stop requests: SIGTERM/SIGINT caught while the loop runs (so it can save and exit 0),
and the agreement of all processes of a job that one of them was asked to stop."""

from __future__ import annotations

import signal

import jax

from wsdjax.runtime import distributed


class StopRequests:
  """`with StopRequests() as stop:` SIGTERM and SIGINT set a flag instead of ending the
  process; `stop.requested(step, every)` says when to stop (with jax's preemption notice)."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self) -> "StopRequests":
    def handler(signum, _frame):
      self.signum = signum
    self._old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._old.items():
      signal.signal(s, h)

  def requested(self, step: int, every: int) -> bool:
    """A signal or preemption asks to stop. One process checks every step; several agree
    every `every` steps (a collective each step would stall the step pipeline)."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local or distributed.reached_preemption(step)
    if step % every:
      return False
    return distributed.any_process(local) or distributed.reached_preemption(step)
