"""One writer per workdir: `WORKDIR/writer.lock` names the process that writes its tree.

Whatever writes the checkpoint tree (the trainer, `wsdjax.branch --from-step`, a merge)
holds the lock from start to close; a second writer is refused at start with
`WorkdirInUse`, naming the holder (host, pid, since when, command). Readers
(`wsdjax.branches`, `checkpoint.restore`) take no lock.

- A local workdir: an exclusive `flock` on the file. The kernel drops it when its process
  dies, however it dies, so a lock left by a killed run is stale by construction and the
  next run takes it over; the holder's record in the file is only for the message.
- A remote workdir (`gs://...`), where there is no flock: the record itself, refreshed
  every `HEARTBEAT_S` by a daemon thread; a record older than `STALE_AFTER_S`, or one
  naming a dead process on this host, is stale and taken over.
- A multi-process job holds one lock: process 0 takes it and every process learns the
  answer, so either all start or all stop with the same message.
- A workdir whose files cannot be written (a read-only mount, no permission) is refused
  at start with `WorkdirNotWritable`, naming the lock file and the OS's reason; nothing
  is written.

Holds are counted per process and workdir, so a trainer and the tree it opens share one.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time

import jax
from etils import epath

from wsdjax.checkpoint.errors import WorkdirInUse, WorkdirNotWritable
from wsdjax.runtime.errors import ConfigError
from wsdjax.runtime.files import atomic_write_text, is_local, pid_alive

LOCK_FILE = "writer.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def _holder_record() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
          "heartbeat": time.time(), "command": _command()}


def _command() -> str:
  """This process's command line, `python -m wsdjax.X ...` for a wsdjax front door."""
  argv = list(sys.argv)
  parts = os.path.normpath(argv[0] if argv else "").split(os.sep)
  if len(parts) >= 2 and parts[-2] == "wsdjax" and parts[-1].endswith(".py"):
    argv[0] = f"python -m wsdjax.{parts[-1][:-3]}"
  return " ".join(argv)[:300]


def describe(holder: dict | None) -> str:
  if not holder:
    return "another process (it has not written its name yet)"
  return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
          f"({holder.get('command') or 'unknown command'})")


def _refusal(workdir, holder: dict | None) -> str:
  return (f"workdir: {workdir} is in use by {describe(holder)}; wait for it to finish, stop "
          "it, or use another --workdir")


def _unwritable(path, error: OSError) -> str:
  full = error.errno in (errno.ENOSPC, errno.EDQUOT)
  fix = "free disk space" if full else "make the workdir writable, or copy the run elsewhere"
  return (f"workdir: cannot take the writer lock {path} "
          f"({error.strerror or type(error).__name__}); {fix}")


class _FlockHold:
  """An exclusive flock on the lock file of a local workdir."""

  def __init__(self, path: epath.Path):
    self.path = path
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _Held(holder) from None
      raise
    self.fd = fd
    self.previous = _read(fd)  # a record left by a process that died holding it
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(_holder_record()).encode(), 0)
      os.fsync(fd)
    except OSError:  # e.g. a full disk: not held
      os.close(fd)
      raise

  def release(self) -> None:
    os.ftruncate(self.fd, 0)  # no stale name for the next reader
    os.close(self.fd)  # drops the flock


def _read(fd: int) -> dict | None:
  try:
    return json.loads(os.pread(fd, 1 << 16, 0).decode() or "null")
  except ValueError:
    return None


class _RecordHold:
  """A lock record with a heartbeat, for storage without flock (GCS)."""

  def __init__(self, path: epath.Path):
    self.path = path
    holder = read_holder(path)
    if holder is not None and not _stale(holder):
      raise _Held(holder)
    self.previous = holder
    self.record = _holder_record()
    atomic_write_text(path, json.dumps(self.record))
    time.sleep(0.2)  # two starts at once: the later write wins, the earlier one backs off
    if read_holder(path) != self.record:
      raise _Held(read_holder(path))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, daemon=True, name="wsdjax-lock")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      self.record["heartbeat"] = time.time()
      try:
        atomic_write_text(self.path, json.dumps(self.record))
      except OSError:
        pass  # a transient storage error: the next beat tries again

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    if read_holder(self.path) == self.record:
      self.path.unlink(missing_ok=True)


def read_holder(path: epath.Path) -> dict | None:
  """The record in a lock file, None if there is none (or it is empty or torn)."""
  try:
    text = epath.Path(path).read_text()
  except (FileNotFoundError, OSError):
    return None
  try:
    return json.loads(text) if text.strip() else None
  except ValueError:
    return None


def _stale(holder: dict) -> bool:
  if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0))):
    return True
  return time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S


class _Held(Exception):
  def __init__(self, holder: dict | None):
    self.holder = holder


@dataclasses.dataclass
class _Count:
  hold: object | None  # None on processes other than 0 of a multi-process job
  count: int = 1


_HOLDS: dict[str, _Count] = {}
_GUARD = threading.Lock()


def _key(workdir) -> str:
  return os.path.abspath(os.fspath(workdir)) if is_local(workdir) else str(workdir)


def acquire(workdir, use_flock: bool | None = None) -> dict | None:
  """Hold the writer lock of `workdir` (created if absent) for this process, or raise
  `WorkdirInUse` naming the holder (`WorkdirNotWritable` if its files cannot be written).
  Returns the record of a stale holder taken over (None if there was none). A collective
  in a multi-process job (every process calls it)."""
  key = _key(workdir)
  with _GUARD:
    if key in _HOLDS:
      _HOLDS[key].count += 1
      return None
    root = epath.Path(key)
    if root.exists() and not root.is_dir():
      raise ConfigError("workdir", f"{workdir} is a file, not a directory",
                        "pass a directory (created if absent) as --workdir")
    hold, problem, previous = None, None, None
    if jax.process_index() == 0:
      flock = is_local(key) if use_flock is None else use_flock
      try:
        root.mkdir(parents=True, exist_ok=True)
        hold = (_FlockHold if flock else _RecordHold)(root / LOCK_FILE)
        previous = hold.previous
      except _Held as held:
        problem = ("in use", _refusal(workdir, held.holder))
      except OSError as e:  # a read-only file system, no permission
        problem = ("not writable", _unwritable(root / LOCK_FILE, e))
    if jax.process_count() > 1:
      from wsdjax.runtime import distributed
      problem = distributed.allgather_json(problem)[0]
    if problem:
      kind, message = problem
      raise (WorkdirInUse if kind == "in use" else WorkdirNotWritable)(message)
    _HOLDS[key] = _Count(hold)
    return previous


def release(workdir) -> None:
  """Drop one hold of `workdir`'s lock; the last one releases it."""
  key = _key(workdir)
  with _GUARD:
    held = _HOLDS.get(key)
    if held is None:
      return
    held.count -= 1
    if held.count == 0:
      del _HOLDS[key]
      if held.hold is not None:
        held.hold.release()


def holder(workdir, use_flock: bool | None = None) -> dict | None:
  """Who holds `workdir`'s lock now, as its record; None if nobody does."""
  path = epath.Path(_key(workdir)) / LOCK_FILE
  if not path.exists():
    return None
  if is_local(str(path)) if use_flock is None else use_flock:
    fd = os.open(os.fspath(path), os.O_RDWR)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return _read(fd) or {}
    finally:
      os.close(fd)  # a probe that got the lock drops it here
    return None
  record = read_holder(path)
  return None if record is None or _stale(record) else record
