"""The Orbax handler of a checkpoint's `state` item: Orbax's own PyTree format, or raw
arrays written with direct I/O (`raw_arrays`), chosen per tree by `checkpoint.writer`.

Restores look at what the item directory holds, so a tree of either writer reads saves of
both (and saves from before the option existed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from typing import Any

import orbax.checkpoint as ocp

from wsdjax import raw_arrays

WRITERS = ("orbax", "direct")


class StateHandler(ocp.AsyncCheckpointHandler):
  """Saves a train state with `writer` ('orbax': PyTreeCheckpointHandler, zstd or raw
  zarr chunks by `compression`; 'direct': `raw_arrays`, copying into buffers of
  `staging`, which handlers may share), restores either."""

  def __init__(self, writer: str = "orbax", compression: str = "zstd",
               staging: raw_arrays.StagingPool | None = None):
    if writer not in WRITERS:
      raise ValueError(f"writer: {writer!r} is not one of {WRITERS}")
    self.writer = writer
    self._pytree = ocp.PyTreeCheckpointHandler(use_compression=compression == "zstd")
    self._staging = staging if staging is not None else raw_arrays.StagingPool()

  async def async_save(self, directory, args: "StateSave"):
    if self.writer == "orbax":
      return await self._pytree.async_save(directory, args=ocp.args.PyTreeSave(args.state))
    snap = raw_arrays.snapshot(args.state, self._staging)  # before the caller donates

    async def commit():
      try:
        snap.write(directory)
      finally:
        snap.release()

    return [ocp.future.CommitFutureAwaitingContractedSignals(commit(), name="wsdjax_raw")]

  def save(self, directory, args: "StateSave") -> None:
    async def run():
      for f in await self.async_save(directory, args) or []:
        f.result()
    try:
      asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case
      asyncio.run(run())
      return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # not inside a running loop
      pool.submit(asyncio.run, run()).result()

  def restore(self, directory, args: "StateRestore"):
    if raw_arrays.is_raw(directory):
      return raw_arrays.read(directory, args.target)
    restore_args = ocp.checkpoint_utils.construct_restore_args(args.target)
    return self._pytree.restore(directory, args=ocp.args.PyTreeRestore(
        args.target, restore_args=restore_args))

  def metadata(self, directory):
    return None if raw_arrays.is_raw(directory) else self._pytree.metadata(directory)

  def finalize(self, directory) -> None:
    if not raw_arrays.is_raw(directory):
      self._pytree.finalize(directory)

  def close(self) -> None:
    self._pytree.close()


@ocp.args.register_with_handler(StateHandler, for_save=True)
@dataclasses.dataclass
class StateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(StateHandler, for_restore=True)
@dataclasses.dataclass
class StateRestore(ocp.args.CheckpointArgs):
  target: Any
