"""Where a command may write what it makes (an export folder, `--json`, `--plot`): the one
rule every command asks before its work starts, and the one form of a write that failed.

The rule:
- Never inside a run's tree: a run folder (one holding `checkpoints/` or `writer.lock`, or
  `config.json` beside `metrics.jsonl`) and everything under it belong to the commands that
  write runs (train, branch, merge), which take its writer lock; readers (eval, export,
  sample, ...) write their outputs elsewhere.
- A file output goes into an existing, writable folder (tried by creating a file there)
  and is not itself a folder.
- A folder output is new or empty; a non-empty one is replaced only with `--overwrite` and
  only if it holds the command's own marker file (the command made it), never one that
  holds a run.
- Temporary files and folders a killed command left beside an output (`NAME.tmp-PID`,
  `.NAME.tmp-PID` of a process that is gone) are removed by the next write there
  (`files.clean_stale_temps`).

Errors are one line: `ConfigError` (exit 2) for a path that cannot take the output,
`OutputFault` (exit 3) for a write that failed for lack of space or an I/O error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile

from wsdjax.runtime import files
from wsdjax.runtime.errors import ConfigError, Fault

# errno values that say the place cannot be written (bad input, exit 2); others that a
# write failed there (a fault, exit 3).
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                 errno.ENOENT, errno.EEXIST)


class OutputFault(Fault):
  """A write of a command's output that failed (full disk, I/O error): exit 3."""


def is_run_folder(folder: str) -> bool:
  """Whether `folder` is a run's workdir (python -m wsdjax.train made it)."""
  return (os.path.isdir(os.path.join(folder, "checkpoints"))
          or os.path.exists(os.path.join(folder, "writer.lock"))
          or (os.path.isfile(os.path.join(folder, "config.json"))
              and os.path.exists(os.path.join(folder, "metrics.jsonl"))))


def run_holding(path) -> str | None:
  """The run folder that `path` is (or lies) in, None if it lies in none (local paths)."""
  if not files.is_local(path):
    return None
  here = os.path.abspath(os.path.expanduser(str(path)))
  while True:
    if os.path.isdir(here) and is_run_folder(here):
      return here
    parent = os.path.dirname(here)
    if parent == here:
      return None
    here = parent


def _runs_below(folder: str) -> str | None:
  for root, dirs, _ in os.walk(folder):
    if is_run_folder(root):
      return root
    dirs[:] = [d for d in dirs if d != "checkpoints"]
  return None


def _not_in_a_run(flag: str, path: str, workdir=None) -> None:
  run = run_holding(path)
  if run is None and workdir is not None and not files.is_local(path):
    run = str(workdir) if str(path).startswith(str(workdir).rstrip("/") + "/") else None
  if run is not None:
    raise ConfigError(flag, f"{path} is inside the run {run}, whose files only the commands "
                      "that train it write", "write it outside the run's folder")


def _writable_folder(flag: str, folder: str) -> None:
  """The folder exists, is a folder, and takes a new file (a probe file, removed)."""
  if not os.path.exists(folder):
    raise ConfigError(flag, f"the folder {folder} does not exist",
                      "create it, or write into an existing folder")
  if not os.path.isdir(folder):
    raise ConfigError(flag, f"{folder} is a file, not a folder", "pass a path in a folder")
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".wsdjax-probe-"):
      pass
  except OSError as e:
    raise write_error(flag, folder, e) from None


def check_file(flag: str, path: str | None, workdir=None) -> None:
  """ConfigError unless the file `path` may be written (module rule); nothing to check
  without a path. Remote paths: only the rule about runs (against `workdir`)."""
  if not path:
    return
  _not_in_a_run(flag, path, workdir)
  if not files.is_local(path):
    return
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    raise ConfigError(flag, f"{path} is a folder", "pass a file path")
  _writable_folder(flag, os.path.dirname(path))


def check_folder(flag: str, path: str | None, marker: str, overwrite: bool = False) -> str:
  """The absolute local folder `path` if it may take a command's output folder (module
  rule; `marker` is the file that command leaves in what it makes); ConfigError if not."""
  if not path:
    raise ConfigError(flag, "missing", f"pass {flag} DIR, a new folder")
  if not files.is_local(path):
    raise ConfigError(flag, f"{path} is not a local path", "write to a local folder")
  path = os.path.abspath(os.path.expanduser(path)).rstrip(os.sep) or os.sep
  _not_in_a_run(flag, path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(flag, f"{path} is a file", "pass a new or empty folder")
  if os.path.isdir(path) and os.listdir(path):
    if not overwrite:
      raise ConfigError(flag, f"{path} is not empty",
                        "pass a new or empty folder, or --overwrite to replace what this "
                        "command wrote there before")
    if not os.path.isfile(os.path.join(path, marker)):
      raise ConfigError(flag, f"{path} was not made by this command (no {marker} in it), so "
                        "--overwrite leaves it alone", "pass a new or empty folder")
    if (run := _runs_below(path)) is not None:
      raise ConfigError(flag, f"{path} holds the run {run}", "pass a new or empty folder")
  check_creatable(flag, os.path.dirname(path))
  return path


def check_creatable(flag: str, folder: str) -> None:
  """ConfigError unless the local `folder`, or the nearest existing folder above it (where
  it would be made), takes a new file; nothing to check for remote paths."""
  if not files.is_local(folder):
    return
  here = os.path.abspath(os.path.expanduser(folder))
  while not os.path.exists(here):
    here = os.path.dirname(here)
  _writable_folder(flag, here)


def write_error(flag: str, path, error: BaseException) -> Exception:
  """The one-line error of a write to `path` that raised `error`."""
  code = getattr(error, "errno", None)
  reason = os.strerror(code) if code else " ".join(str(error).split())
  if code in _NOT_WRITABLE:
    return ConfigError(flag, f"cannot write {path} ({reason})", "choose a folder you may write")
  return OutputFault(f"{flag}: writing {path} failed ({reason}); free space (or fix the "
                     "device) and run the same command again")


@contextlib.contextmanager
def writing(flag: str, path):
  """Turns an OSError of the writes inside into `write_error` (one line)."""
  try:
    yield
  except OSError as e:
    raise write_error(flag, path, e) from None


def write_json(flag: str, path: str, value) -> None:
  """`value` as JSON at `path` (local or gs://), atomically; a failure as one line."""
  with writing(flag, path):
    files.atomic_write_text(path, json.dumps(value, indent=1, default=str) + "\n")
