"""A thread that gets a CPU core only when no other thread of the host wants it.

Linux's SCHED_IDLE policy (sched(7)): the scheduler runs such a thread only on a core that
normal threads leave idle, and a normal thread that wakes up takes the core back at once.
Threads inherit the policy of the thread that starts them, so everything a call made on
`IdleThread` starts runs at idle priority too: Orbax's background save threads and
TensorStore's worker pool (its overseer and workers are started by the thread that first
hands it work, and exit after 20 s idle). With `checkpoint.write_priority='idle'`,
`checkpoint.py` makes Orbax's save() calls here, so the background write of a checkpoint
takes CPU time the train step leaves over, instead of taking it from the step.

The caller blocks until its call returns: what the call must do before the next step may
run (Orbax's device-to-host copy) runs while the step's cores are idle anyway. Idle
priority yields to every process on the host, and an unprivileged thread cannot leave it:
where other processes keep every core busy, these calls (and what they start) wait.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable


def lower_current_thread() -> bool:
  """Put the calling thread under SCHED_IDLE; False where the OS has no such policy."""
  if not (hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")):
    return False
  try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
  except OSError:  # e.g. a seccomp profile that forbids it: run at normal priority
    return False
  return True


def current_policy() -> int | None:
  """The calling thread's scheduling policy (os.SCHED_*), None where unknown."""
  if not hasattr(os, "sched_getscheduler"):
    return None
  return os.sched_getscheduler(0)


class IdleThread:
  """One thread at idle priority that runs the calls given to `call`, in order: a
  one-worker `ThreadPoolExecutor` whose initializer lowers its thread."""

  def __init__(self, name: str = "wsdjax-idle"):
    self.lowered = False  # whether the OS accepted SCHED_IDLE (else: normal priority)
    self._closed = False
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=name, initializer=self._lower)
    self._pool.submit(lambda: None).result()  # start the thread now, so `lowered` is known

  def _lower(self) -> None:
    self.lowered = lower_current_thread()

  def call(self, fn: Callable[[], Any]) -> Any:
    """fn() on the idle thread; blocks until it returns, then returns its value or raises
    its exception in the caller."""
    if self._closed:
      raise RuntimeError("IdleThread: call() after close()")
    return self._pool.submit(fn).result()

  def close(self) -> None:
    """Stop the thread once the calls queued before this one have run."""
    self._closed = True
    self._pool.shutdown(wait=True)
