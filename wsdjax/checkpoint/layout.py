"""Where a run's checkpoints live and how their arrays are stored: the folder, its checks,
and the compression setting."""

from __future__ import annotations

import os

from etils import epath

from wsdjax.checkpoint.errors import CheckpointError
from wsdjax.runtime.files import is_local

MANIFEST = "manifest.json"
COMPRESSIONS = ("zstd", "none")


def resolve_compression(setting: str, backend: str) -> str:
  """`checkpoint.compression` as written: 'auto' is 'none' on the CPU backend, else 'zstd'.

  On the CPU backend the write shares its cores with the train step, and zstd costs more
  CPU time there than the few bytes it saves on a trained float32 state are worth;
  accelerator hosts have idle cores for it, and the bytes matter more on network storage
  (measured in docs/performance.md).
  """
  if setting == "auto":
    return "none" if backend == "cpu" else "zstd"
  if setting not in COMPRESSIONS:
    raise ValueError(f"compression: {setting!r} is not one of {('auto',) + COMPRESSIONS}")
  return setting


def checkpoint_dir(workdir) -> epath.Path:
  """WORKDIR/checkpoints; a local path made absolute (Orbax refuses relative paths)."""
  if is_local(workdir):
    workdir = os.path.abspath(os.fspath(workdir))
  return epath.Path(workdir) / "checkpoints"


def check_layout(root: epath.Path) -> None:
  """CheckpointError (one line) if `root` or its manifest is not what the tree needs."""
  if root.exists() and not root.is_dir():
    raise CheckpointError(f"workdir: {root} is a file, not the run's checkpoint folder; move "
                          "it away (or pass another --workdir)")
  if (root / MANIFEST).is_dir():
    raise CheckpointError(f"workdir: {root / MANIFEST} is a folder, not the manifest; remove "
                          "it (the manifest is rebuilt from the saves)")
