"""Files of a run: crash-safe writes of its small text files (manifest, integrity records,
live-branch requests), where a reader sees the old file or the new one, never half of one;
the clean-up of what a killed writer left; and whether a path is local."""

from __future__ import annotations

import os
import re
import shutil

from etils import epath


def atomic_write_text(path: epath.Path, text: str) -> None:
  """Write `text` so a reader sees the old or the new file, never half of one."""
  path = epath.Path(path)
  if str(path).startswith("gs://"):
    path.write_text(text)  # GCS object writes are atomic.
    return
  clean_stale_temps(path)  # what a killed writer of this file left
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def is_local(path) -> bool:
  """Whether `path` is on a local filesystem (not a URL such as gs://bucket/run)."""
  return "://" not in str(path)


_TEMP = re.compile(r"^\.?(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def clean_stale_temps(path) -> list[str]:
  """Remove what killed writers left beside `path` (`NAME.tmp-PID`, `.NAME.tmp-PID` of a
  process not running on this host); returns what was removed. Local paths only."""
  if not is_local(path):
    return []
  path = os.path.abspath(str(path))
  folder, name = os.path.split(path)
  removed = []
  try:
    entries = os.listdir(folder)
  except OSError:
    return []
  for entry in entries:
    m = _TEMP.match(entry)
    pid = int(m.group("pid")) if m else 0
    if not m or m.group("name") != name or pid == os.getpid() or pid_alive(pid):
      continue
    full = os.path.join(folder, entry)
    if os.path.isdir(full) and not os.path.islink(full):
      shutil.rmtree(full, ignore_errors=True)
    else:
      try:
        os.unlink(full)
      except OSError:
        continue
    removed.append(full)
  return removed


def pid_alive(pid: int) -> bool:
  """Whether process `pid` runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
