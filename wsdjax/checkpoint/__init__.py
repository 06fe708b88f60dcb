"""The checkpoint tree of a run: main and decay branches side by side under one workdir,
in Orbax's standard format (any Orbax user restores a state without wsdjax).

  tree.py       CheckpointTree: save (async), manifest, restore, prune, quarantine
  layout.py     the checkpoint folder, its checks, the arrays' compression
  integrity.py  checksums of every file of a save, recorded at save, checked at restore;
                a save without a readable record is unverified, never trusted silently
  verify.py     every save checked against its record; unverified ones vouched for
  lock.py       one writer per workdir
  load.py       restore(workdir, branch, step): a state for users
  errors.py     CheckpointError, BrokenCheckpoint, UnverifiedCheckpoint, SaveError,
                WorkdirInUse, WorkdirNotWritable
"""

from wsdjax.checkpoint.errors import (BrokenCheckpoint, CheckpointError, SaveError,
                                      UnverifiedCheckpoint, WorkdirInUse, WorkdirNotWritable)
from wsdjax.checkpoint.load import latest_step, nearest_steps, restore
from wsdjax.checkpoint.layout import COMPRESSIONS, checkpoint_dir, resolve_compression
from wsdjax.checkpoint.tree import CheckpointTree
from wsdjax.schedule.plan import StateRef

__all__ = ["BrokenCheckpoint", "CheckpointError", "CheckpointTree", "COMPRESSIONS",
           "SaveError", "StateRef", "UnverifiedCheckpoint", "WorkdirInUse",
           "WorkdirNotWritable", "checkpoint_dir", "latest_step", "nearest_steps",
           "resolve_compression", "restore"]
