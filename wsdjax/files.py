"""Files of a run: crash-safe writes of its small text files (manifest, integrity records,
live-branch requests), where a reader sees the old file or the new one, never half of one;
and whether a path is local."""

from __future__ import annotations

import os

from etils import epath


def atomic_write_text(path: epath.Path, text: str) -> None:
  """Write `text` so a reader sees the old or the new file, never half of one."""
  path = epath.Path(path)
  if str(path).startswith("gs://"):
    path.write_text(text)  # GCS object writes are atomic.
    return
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def is_local(path) -> bool:
  """Whether `path` is on a local filesystem (not a URL such as gs://bucket/run)."""
  return "://" not in str(path)
