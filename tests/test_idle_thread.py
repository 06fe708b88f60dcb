"""The idle-priority thread that checkpoint saves start on (wsdjax/idle_thread.py)."""

import os
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from wsdjax import checkpoint as ckpt
from wsdjax import idle_thread
from wsdjax.plan import StateRef

LINUX_IDLE = hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_getscheduler")


@pytest.fixture
def worker():
  w = idle_thread.IdleThread("test-idle")
  yield w
  w.close()


def test_calls_run_on_the_thread_in_order_and_return(worker):
  seen = []
  for i in range(5):
    assert worker.call(lambda i=i: seen.append((i, threading.get_ident())) or i * i) == i * i
  assert [i for i, _ in seen] == list(range(5))
  assert {ident for _, ident in seen} != {threading.get_ident()}
  assert len({ident for _, ident in seen}) == 1


def test_an_exception_is_raised_in_the_caller_and_the_thread_goes_on(worker):
  def boom():
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    worker.call(boom)
  assert worker.call(lambda: "still serving") == "still serving"


def test_call_after_close_is_refused():
  w = idle_thread.IdleThread("test-closed")
  w.close()
  with pytest.raises(RuntimeError, match="after close"):
    w.call(lambda: None)
  w.close()  # closing twice is harmless


@pytest.mark.skipif(not LINUX_IDLE, reason="SCHED_IDLE is Linux-only")
def test_the_thread_and_the_threads_it_starts_run_at_idle_priority(worker):
  assert worker.lowered
  assert idle_thread.current_policy() != os.SCHED_IDLE  # the caller keeps its priority

  def policy_here_and_in_a_child():
    child = []
    t = threading.Thread(target=lambda: child.append(idle_thread.current_policy()))
    t.start()
    t.join()
    return idle_thread.current_policy(), child[0]

  assert worker.call(policy_here_and_in_a_child) == (os.SCHED_IDLE, os.SCHED_IDLE)


@pytest.mark.skipif(not LINUX_IDLE, reason="SCHED_IDLE is Linux-only")
@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_checkpoint_tree_starts_saves_at_its_write_priority(tmp_path, priority):
  tree = ckpt.CheckpointTree(tmp_path, async_save=True, write_priority=priority)
  policies = []
  original = ckpt.ocp.CheckpointManager.save

  def save(mgr, *args, **kwargs):  # what Orbax's save() and its threads inherit
    policies.append(idle_thread.current_policy())
    return original(mgr, *args, **kwargs)

  state = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "step": jnp.int32(7)}
  try:
    ckpt.ocp.CheckpointManager.save = save
    tree.save(StateRef("main", 7), state, {"branch": "main", "step": 7})
    assert [e["step"] for e in tree.wait()] == [7]
  finally:
    ckpt.ocp.CheckpointManager.save = original
  expected = os.SCHED_IDLE if priority == "idle" else idle_thread.current_policy()
  assert policies == [expected]
  assert tree.writes_at_idle_priority == (priority == "idle")
  restored, _ = tree.restore(StateRef("main", 7), state)
  np.testing.assert_array_equal(restored["w"], state["w"])
  tree.close()
  assert tree._idle_thread is None  # the thread is stopped with the tree


def test_an_unknown_write_priority_is_refused(tmp_path):
  with pytest.raises(ValueError, match="write_priority"):
    ckpt.CheckpointTree(tmp_path, write_priority="low")


def test_where_the_os_refuses_idle_the_calls_run_at_normal_priority(monkeypatch):
  def refuse(*_args):
    raise PermissionError(1, "Operation not permitted")

  monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
  w = idle_thread.IdleThread("test-refused")
  try:
    assert not w.lowered
    assert w.call(lambda: 42) == 42
  finally:
    w.close()
