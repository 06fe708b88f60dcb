"""One writer per workdir (wsdjax/checkpoint/lock.py): a second writer is refused naming
the holder; a lock left by a killed process is taken over; readers need no lock."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO, run_cli, subprocess_env

from wsdjax import checkpoint as ckpt
from wsdjax.checkpoint import lock
from wsdjax.runtime.errors import ConfigError

_HOLD = textwrap.dedent("""
    import sys, time
    from wsdjax.checkpoint import lock
    lock.acquire(sys.argv[1], use_flock=sys.argv[2] == "flock")
    print("held", flush=True)
    time.sleep(600)
""")


def _holder_process(workdir, kind="flock") -> subprocess.Popen:
  """Another process holding `workdir`'s lock (until killed)."""
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir), kind], cwd=REPO,
                          env=subprocess_env(1), stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


@pytest.mark.parametrize("kind", ["flock", "record"])
def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path, kind):
  proc = _holder_process(tmp_path, kind)
  try:
    with pytest.raises(ckpt.WorkdirInUse, match=rf"is in use by pid {proc.pid} on \S+ since "):
      lock.acquire(tmp_path, use_flock=kind == "flock")
    assert lock.holder(tmp_path, use_flock=kind == "flock")["pid"] == proc.pid
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  previous = lock.acquire(tmp_path, use_flock=kind == "flock")  # stale: taken over
  try:
    assert previous["pid"] == proc.pid
  finally:
    lock.release(tmp_path)
  assert lock.holder(tmp_path, use_flock=kind == "flock") is None


def test_holds_in_one_process_are_counted(tmp_path):
  lock.acquire(tmp_path)
  lock.acquire(tmp_path)  # e.g. the trainer, then the tree it opens
  lock.release(tmp_path)
  assert lock.holder(tmp_path)["pid"] == os.getpid()
  lock.release(tmp_path)
  assert lock.holder(tmp_path) is None


def test_a_stale_record_of_a_remote_lock_is_judged_by_its_heartbeat(tmp_path, monkeypatch):
  path = tmp_path / lock.LOCK_FILE
  far = {"host": "other-host", "pid": 1, "since": "then", "heartbeat": time.time()}
  path.write_text(json.dumps(far))
  with pytest.raises(ckpt.WorkdirInUse, match="pid 1 on other-host"):
    lock.acquire(tmp_path, use_flock=False)
  path.write_text(json.dumps(far | {"heartbeat": time.time() - lock.STALE_AFTER_S - 1}))
  assert lock.acquire(tmp_path, use_flock=False)["host"] == "other-host"
  assert json.loads(path.read_text())["pid"] == os.getpid()
  lock.release(tmp_path)
  assert not path.exists()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "run").write_text("")
  with pytest.raises(ConfigError, match="workdir: .* is a file"):
    lock.acquire(tmp_path / "run")


def test_writing_trees_take_the_lock_and_readers_do_not(tmp_path):
  proc = _holder_process(tmp_path)
  try:
    with pytest.raises(ckpt.WorkdirInUse):
      ckpt.CheckpointTree(tmp_path)
    with ckpt.CheckpointTree(tmp_path, read_only=True) as reader:
      assert reader.branches() == []
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_train_and_branch_on_a_workdir_in_use_exit_2_in_one_line(tmp_path):
  args = ["--config", "configs/tiny.py", "--config.schedule.budgets=(8,)",
          "--config.checkpoint.every=4", "--workdir", str(tmp_path)]
  first = run_cli("wsdjax.train", *args, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  proc = _holder_process(tmp_path)  # a run still writing the tree
  try:
    for cmd in (["wsdjax.train", *args],
                ["wsdjax.branch", "--workdir", str(tmp_path), "--from-step", "4"],
                ["wsdjax.merge", "--workdir", str(tmp_path), "--at", "8", "--window", "8"]):
      out = run_cli(*cmd, timeout=600)
      assert out.returncode == 2, (cmd, out.stderr[-2000:])
      assert out.stderr.strip().splitlines() == [
          f"wsdjax: workdir: {tmp_path} is in use by pid {proc.pid} on "
          f"{os.uname().nodename} since " + out.stderr.split(" since ", 1)[1].strip()]
    listed = run_cli("wsdjax.branches", "--workdir", str(tmp_path), "--json", timeout=600)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert ckpt.restore(str(tmp_path), "decay-8") is not None
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
