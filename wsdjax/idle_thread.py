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

import os
import queue
import threading
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
  """One daemon thread at idle priority that runs the calls given to `call`, in order."""

  def __init__(self, name: str = "wsdjax-idle"):
    self._calls: queue.SimpleQueue = queue.SimpleQueue()
    self._ready = threading.Event()
    self.lowered = False  # whether the OS accepted SCHED_IDLE (else: normal priority)
    self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
    self._thread.start()
    self._ready.wait()

  def _serve(self) -> None:
    self.lowered = lower_current_thread()
    self._ready.set()
    while True:
      item = self._calls.get()
      if item is None:
        return
      fn, done, result = item
      try:
        result.append((True, fn()))
      except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
        result.append((False, error))
      done.set()

  def call(self, fn: Callable[[], Any]) -> Any:
    """fn() on the idle thread; blocks until it returns, then returns its value or raises
    its exception in the caller."""
    if threading.current_thread() is self._thread:
      return fn()
    if not self._thread.is_alive():
      raise RuntimeError("IdleThread: call() after close()")
    done, result = threading.Event(), []
    self._calls.put((fn, done, result))
    done.wait()
    ok, value = result[0]
    if ok:
      return value
    raise value

  def close(self) -> None:
    """Stop the thread once the calls queued before this one have run."""
    if self._thread.is_alive():
      self._calls.put(None)
      self._thread.join()
