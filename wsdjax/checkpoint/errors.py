"""What can go wrong with the checkpoint tree, as typed errors the CLIs show as one line."""

from __future__ import annotations

from wsdjax.runtime.errors import BadInput, Fault
from wsdjax.schedule.plan import StateRef


class CheckpointError(BadInput, RuntimeError):
  """A checkpoint is missing, incomplete or unreadable."""


class BrokenCheckpoint(CheckpointError):
  """A finished save whose files are missing, truncated or changed since it was written."""

  def __init__(self, ref: StateRef, reason: str):
    self.ref, self.reason = ref, reason
    super().__init__(f"checkpoint: {ref.branch}@{ref.step} is broken: {reason}")


class UnverifiedCheckpoint(CheckpointError):
  """A save with no readable integrity record (`checkpoint.integrity`): nothing vouches for
  its files, so the trainer never restores it; `reason` says why (no record, or an
  unreadable one)."""

  def __init__(self, ref: StateRef, reason: str, workdir):
    self.ref, self.reason = ref, reason
    super().__init__(
        f"checkpoint: {ref.branch}@{ref.step} is unverified ({reason}); check it with "
        f"python -m wsdjax.branches --workdir {workdir} --verify, and add --record to vouch "
        "for it as it is")


class SaveError(Fault, CheckpointError):
  """A save failed (e.g. a full disk); the checkpoints saved before it are intact."""


class WorkdirInUse(CheckpointError):
  """Another process holds the workdir's writer lock (see `checkpoint.lock`)."""


class WorkdirNotWritable(CheckpointError):
  """The workdir's writer lock cannot be taken: its files cannot be written (a read-only
  file system, no permission); nothing was written."""
