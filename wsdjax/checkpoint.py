"""The Orbax checkpoint tree: main and decay branches side by side under one workdir.

Layout:
  WORKDIR/checkpoints/<branch>/<step>/{state,meta}   one Orbax CheckpointManager per branch
  WORKDIR/checkpoints/manifest.json                  index of every finished save

Each save has two items: `state` (the train-state pytree) and `meta` (JSON: the manifest
entry of that state, plus the data position). The manifest is an index derived from the
metas of finished saves, written atomically; if a crash loses a manifest update, it is
rebuilt from the metas on the next open. A save is reported (and enters the manifest) only
once Orbax has finalised it on disk.

The `state` item is written by `state_handler.StateHandler`: Orbax's OCDBT layout of zarr
chunks, zstd-compressed or raw (`writer` 'orbax', `compression`), or raw arrays written
with direct I/O (`writer` 'direct', `raw_arrays`). A restore reads any of them, so a run
may change either setting between saves.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from wsdjax.process import faults
from wsdjax.files import atomic_write_text
from wsdjax import idle_thread
from wsdjax import raw_arrays
from wsdjax import state_handler
from wsdjax.plan import MAIN, StateRef

MANIFEST = "manifest.json"
WRITE_PRIORITIES = ("idle", "normal")
COMPRESSIONS = ("zstd", "none")
WRITERS = state_handler.WRITERS
_BRANCH_RE = re.compile(r"^(main|decay-\d+)$")


def resolve_compression(setting: str, backend: str, write_priority: str = "normal") -> str:
  """`checkpoint.compression` as written: 'auto' is 'none' on the CPU backend at normal write
  priority, else 'zstd'.

  On the CPU backend the write shares its cores with the train step. At normal priority its
  CPU time comes out of the step, and zstd (level 1) spends ~0.18 CPU-s per 100 MB to shrink
  a trained float32 state (weights, Adam moments) by only ~10%. At idle priority the write
  fills the step's idle gaps, and raw writes stalled the step more than zstd ones did (most
  of a raw write is the kernel's page-cache copy, likely not interrupted for the step's
  threads the way user-space compression is). Accelerator hosts have idle cores for zstd,
  and the bytes it saves matter more on network storage. docs/performance.md has the
  measurements.
  """
  if setting == "auto":
    return "none" if backend == "cpu" and write_priority == "normal" else "zstd"
  if setting not in COMPRESSIONS:
    raise ValueError(f"compression: {setting!r} is not one of {('auto',) + COMPRESSIONS}")
  return setting


def resolve_writer(setting: str, backend: str, compression: str, workdir) -> str:
  """`checkpoint.writer` as written: 'auto' is 'direct' on the CPU backend for a local
  workdir unless `checkpoint.compression` asks for 'zstd', else 'orbax'.

  On the CPU backend the write shares its cores with the train step. Orbax's TensorStore
  writes through the page cache, and on this project's 2-core VM filling 100 MB of fresh
  page cache costs ~0.2 CPU-s, 8-12% of a `configs/small.py` step per save; the direct
  writer's O_DIRECT write costs ~0.01 CPU-s and its copy into a reused buffer ~0.02 s
  (docs/performance.md). Accelerator hosts have idle cores for Orbax's writer, which also
  writes to cloud storage.
  """
  if setting == "auto":
    local = is_local(workdir)
    return "direct" if backend == "cpu" and local and compression != "zstd" else "orbax"
  if setting not in WRITERS:
    raise ValueError(f"writer: {setting!r} is not one of {('auto',) + WRITERS}")
  if setting == "direct" and compression == "zstd":
    raise ValueError("writer: 'direct' writes raw arrays; set checkpoint.compression to "
                     "'auto' or 'none', or checkpoint.writer to 'orbax' for zstd")
  if setting == "direct" and not is_local(workdir):
    raise CheckpointError(f"checkpoint.writer: 'direct' needs a local workdir, not "
                          f"{workdir}; set --config.checkpoint.writer=auto (or orbax)")
  return setting


class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete or unreadable."""


class BrokenCheckpoint(CheckpointError):
  """A finished save whose files are missing or truncated (see `CheckpointTree.damage`)."""

  def __init__(self, ref: StateRef, reason: str):
    self.ref, self.reason = ref, reason
    super().__init__(f"checkpoint: {ref.branch}@{ref.step} is broken: {reason}")


class SaveError(CheckpointError):
  """A save failed (e.g. a full disk); the checkpoints saved before it are intact."""


BROKEN = "broken"  # WORKDIR/checkpoints/broken/<branch>-<step>-<n>: unreadable saves, kept
INTEGRITY = "integrity"  # WORKDIR/checkpoints/integrity/<branch>-<step>.json: file sizes


def is_local(path) -> bool:
  """Whether `path` is on a local filesystem (not a URL such as gs://bucket/run)."""
  return "://" not in str(path)


def checkpoint_dir(workdir) -> epath.Path:
  """WORKDIR/checkpoints; a local path made absolute (Orbax refuses relative paths)."""
  if is_local(workdir):
    workdir = os.path.abspath(os.fspath(workdir))
  return epath.Path(workdir) / "checkpoints"


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON-able: {type(x)}")


def _entry_key(entry: dict) -> tuple[str, int]:
  return entry["branch"], int(entry["step"])


class CheckpointTree:
  """Saves, lists, restores and prunes the states of every branch of one run."""

  def __init__(self, workdir, async_save: bool = True, read_only: bool = False,
               write_priority: str = "normal", compression: str = "zstd",
               writer: str = "orbax"):
    """`write_priority` 'idle': Orbax's save() runs on an `idle_thread.IdleThread`, so the
    background write uses only CPU the train step leaves idle; 'normal': on the caller.
    `writer`: who writes new saves' arrays, 'orbax' (compressed by `compression`, 'zstd'
    or 'none') or 'direct' (raw, `raw_arrays`; local paths only)."""
    if write_priority not in WRITE_PRIORITIES:
      raise ValueError(f"write_priority: {write_priority!r} is not one of {WRITE_PRIORITIES}")
    if compression not in COMPRESSIONS:
      raise ValueError(f"compression: {compression!r} is not one of {COMPRESSIONS}")
    if writer not in WRITERS:
      raise ValueError(f"writer: {writer!r} is not one of {WRITERS}")
    self.writer = writer
    self.compression = "none" if writer == "direct" else compression
    self._staging = raw_arrays.StagingPool()  # the direct writer's buffers, for all branches
    self.root = checkpoint_dir(workdir)
    self.async_save = async_save
    self.write_priority = write_priority
    self._idle_thread: idle_thread.IdleThread | None = None
    self.read_only = read_only
    self.is_primary = jax.process_index() == 0
    if not read_only:
      self.root.mkdir(parents=True, exist_ok=True)
    self._managers: dict[str, ocp.CheckpointManager] = {}
    self._pending: list[tuple[str, int, dict]] = []
    self._entries: dict[tuple[str, int], dict] = {}
    self._failed = False  # a save failed (reported once as SaveError)
    self._rebuild_index()

  # ---- managers ----
  def branches(self) -> list[str]:
    if not self.root.exists():
      return []
    return sorted((p.name for p in self.root.iterdir()
                   if p.is_dir() and _BRANCH_RE.match(p.name)), key=_branch_order)

  def _manager(self, branch: str) -> ocp.CheckpointManager:
    if branch not in self._managers:
      if not _BRANCH_RE.match(branch):
        raise ValueError(f"branch: {branch!r} is not 'main' or 'decay-<step>'")
      options = ocp.CheckpointManagerOptions(
          max_to_keep=None, create=not self.read_only,
          cleanup_tmp_directories=not self.read_only and self.is_primary,
          enable_async_checkpointing=self.async_save)
      state = state_handler.StateHandler(self.writer, self.compression, self._staging)
      handlers = {"state": state, "meta": ocp.JsonCheckpointHandler()}
      self._managers[branch] = ocp.CheckpointManager(
          self.root / branch, options=options, item_handlers=handlers)
    return self._managers[branch]

  def steps(self, branch: str) -> list[int]:
    """Finished saves of `branch`, ascending."""
    if not (self.root / branch).exists():
      return []
    return sorted(self._manager(branch).all_steps())

  def has(self, ref: StateRef) -> bool:
    return ref.step in self.steps(ref.branch)

  # ---- manifest ----
  def _rebuild_index(self) -> None:
    """Index = metas of every finished save on disk (the manifest file is only a cache)."""
    cached = {}
    path = self.root / MANIFEST
    if path.exists():
      try:
        cached = {_entry_key(e): e for e in json.loads(path.read_text())}
      except (ValueError, KeyError, TypeError):
        cached = {}
    self._entries = {}
    for branch in self.branches():
      for step in self.steps(branch):
        entry = cached.get((branch, step))
        if entry is None:
          entry = self.read_meta(StateRef(branch, step)).get("entry")
        if entry is not None:
          self._entries[(branch, step)] = entry
    if not self.read_only and self.is_primary and (
        set(cached) != set(self._entries) or not path.exists()):
      self._write_manifest()

  def _write_manifest(self) -> None:
    if self.is_primary and not self.read_only:
      atomic_write_text(self.root / MANIFEST,
                        json.dumps(self.manifest(), indent=1, default=_json_default))

  def manifest(self) -> list[dict]:
    """One entry per finished save, ordered by branch then step."""
    return [self._entries[k] for k in sorted(self._entries,
                                             key=lambda k: (_branch_order(k[0]), k[1]))]

  def entry(self, ref: StateRef) -> dict | None:
    return self._entries.get((ref.branch, ref.step))

  def update_entry(self, ref: StateRef, **fields) -> None:
    """Add fields to a finished save's manifest entry (e.g. an eval loss computed later)."""
    self._entries[(ref.branch, ref.step)].update(fields)
    self._write_manifest()

  # ---- save / restore ----
  def save(self, ref: StateRef, state, entry: dict, extra_meta: dict | None = None) -> None:
    """Start saving `state` as `ref` (async). `entry` joins the manifest once it is on disk."""
    if self.read_only:
      raise CheckpointError("checkpoint tree opened read-only")
    meta = dict(extra_meta or {}, entry=entry)
    meta = json.loads(json.dumps(meta, default=_json_default))
    mgr = self._manager(ref.branch)
    flags = {k: True for k in ("fork_point", "decayed") if entry.get(k)}
    for branch, step, queued in self._pending:
      if (branch, step) == (ref.branch, ref.step):  # Same state, save under way: tag it.
        queued.update(flags)
        return
    if ref.step in mgr.all_steps():  # Already on disk (e.g. a rerun): keep it, tag it.
      if flags and (ref.branch, ref.step) in self._entries:
        self.update_entry(ref, **flags)
      return
    args = ocp.args.Composite(state=state_handler.StateSave(state),
                              meta=ocp.args.JsonSave(meta))
    with _save_errors(self, ref):
      self._call_writer(lambda: mgr.save(ref.step, args=args, force=True))
    self._pending.append((ref.branch, ref.step, meta["entry"]))
    faults.in_save(ref.branch, ref.step)
    if not self.async_save:
      self.poll()

  def _call_writer(self, fn):
    """fn() where saves start: the idle-priority thread, or the caller's ('normal')."""
    if self.write_priority == "normal":
      return fn()
    if self._idle_thread is None:
      self._idle_thread = idle_thread.IdleThread("wsdjax-checkpoint")
    return self._idle_thread.call(fn)

  @property
  def writes_at_idle_priority(self) -> bool:
    """Whether saves so far started on a thread the OS put at idle priority."""
    return self._idle_thread is not None and self._idle_thread.lowered

  def poll(self) -> list[dict]:
    """Entries of saves that finished since the last call (now in the manifest)."""
    done, still = [], []
    for branch, step, entry in self._pending:
      mgr = self._managers[branch]
      with _save_errors(self, StateRef(branch, step)):
        mgr.check_for_errors()
      if mgr.is_saving_in_progress():
        still.append((branch, step, entry))
      elif step in mgr.all_steps():
        done.append(entry)
        self._entries[(branch, step)] = entry
        self._record_files(StateRef(branch, step))
      else:  # Orbax gave up on it without an error we saw: not on disk, never reported
        self._failed = True
        raise SaveError(f"checkpoint: saving {branch}@{step} did not finish; free disk space "
                        "(or fix the storage) and rerun the same command: the checkpoints "
                        "saved before are intact")
    self._pending = still
    if done:
      self._write_manifest()
    return done

  @property
  def saving(self) -> bool:
    """Whether a save of this process is still being written."""
    return bool(self._pending)

  @property
  def failed(self) -> bool:
    """Whether a save failed (reported once as SaveError)."""
    return self._failed

  def pending_entry(self, ref: StateRef) -> dict | None:
    """The manifest entry of `ref` while its save is still being written, else None."""
    return next((entry for branch, step, entry in self._pending
                 if (branch, step) == (ref.branch, ref.step)), None)

  def wait(self) -> list[dict]:
    """Block until every save is on disk; return the entries that finished."""
    for branch, mgr in self._managers.items():
      pending = [step for b, step, _ in self._pending if b == branch]
      with _save_errors(self, StateRef(branch, pending[0] if pending else -1)):
        mgr.wait_until_finished()
    return self.poll()

  # ---- integrity ----
  def _files(self, ref: StateRef) -> dict[str, int]:
    """Relative path -> size of every file of a finished save."""
    top = self.root / ref.branch / str(ref.step)
    out, folders = {}, [top]
    while folders:  # a walk by listing: epath has no recursive glob on GCS
      for path in folders.pop().iterdir():
        if path.is_dir():
          folders.append(path)
        else:
          out[str(path.relative_to(top))] = path.stat().length
    return out

  def _record_files(self, ref: StateRef) -> None:
    if self.is_primary and not self.read_only:
      (self.root / INTEGRITY).mkdir(exist_ok=True)
      atomic_write_text(self.root / INTEGRITY / f"{ref.branch}-{ref.step}.json",
                        json.dumps(self._files(ref)))

  def damage(self, ref: StateRef) -> str | None:
    """What is wrong with the files of a finished save (missing, truncated, grown), judged
    against the sizes recorded when it finished; None if intact or never recorded."""
    record = self.root / INTEGRITY / f"{ref.branch}-{ref.step}.json"
    if not record.exists():
      return None
    expected, found = json.loads(record.read_text()), self._files(ref)
    missing = sorted(set(expected) - set(found))
    if missing:
      return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    changed = sorted(k for k in expected if found[k] != expected[k])
    if changed:
      k = changed[0]
      return f"{len(changed)} file(s) changed size, e.g. {k} ({found[k]} bytes, not {expected[k]})"
    return None

  def quarantine(self, ref: StateRef, reason: str) -> epath.Path:
    """Move an unreadable save out of its branch (kept under checkpoints/broken/ for a look,
    never deleted) so that resume uses the previous complete one."""
    if self.is_primary:
      n = 0
      while (dest := self.root / BROKEN / f"{ref.branch}-{ref.step}-{n}").exists():
        n += 1
      dest.parent.mkdir(parents=True, exist_ok=True)
      (self.root / ref.branch / str(ref.step)).rename(dest)
      atomic_write_text(dest / "REASON.txt", reason + "\n")
    _barrier(f"quarantine-{ref.branch}-{ref.step}")
    manager = self._managers.pop(ref.branch, None)
    if manager is not None:
      manager.close()
    (self.root / INTEGRITY / f"{ref.branch}-{ref.step}.json").unlink(missing_ok=True)
    self._entries.pop((ref.branch, ref.step), None)
    self._write_manifest()
    return dest

  def read_meta(self, ref: StateRef) -> dict:
    mgr = self._manager(ref.branch)
    try:
      return mgr.restore(ref.step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any read failure means a broken save
      raise CheckpointError(f"{ref.branch}@{ref.step}: cannot read its meta: {e}") from e

  def restore(self, ref: StateRef, target) -> tuple[Any, dict]:
    """Restore `ref` into the structure/shardings of `target` (abstract or concrete)."""
    if not self.has(ref):
      raise CheckpointError(f"{ref.branch}@{ref.step}: no such checkpoint "
                            f"(saved steps of {ref.branch}: {self.steps(ref.branch)})")
    damage = self.damage(ref)
    if damage:
      raise BrokenCheckpoint(ref, damage)
    mgr = self._manager(ref.branch)
    try:
      out = mgr.restore(ref.step, args=ocp.args.Composite(
          state=state_handler.StateRestore(target),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      damage = self.damage(ref)
      if damage:
        raise BrokenCheckpoint(ref, damage) from e
      text = " ".join(str(e).split())[:400]
      raise CheckpointError(
          f"checkpoint: cannot restore {ref.branch}@{ref.step} ({text}); if its files are "
          f"damaged, move {self.root / ref.branch / str(ref.step)} away and rerun to resume "
          "from the previous save") from e
    return out["state"], out["meta"]

  def delete(self, ref: StateRef) -> None:
    self._manager(ref.branch).delete(ref.step)
    self._entries.pop((ref.branch, ref.step), None)
    self._write_manifest()

  def prune(self, keep_main: int, protected: Iterable[StateRef]) -> list[StateRef]:
    """Retention: keep decayed checkpoints, `protected` states and the last `keep_main`
    main saves; delete other main saves. Intermediate saves of a decay branch are dropped
    once its decayed checkpoint (entry with `decayed`) is on disk. Returns what it deleted."""
    protected = set(protected)
    deleted = []
    for branch in self.branches():
      steps = self.steps(branch)
      if branch == MAIN:
        candidates = steps[:-keep_main] if keep_main > 0 else steps
      else:
        done = any((self._entries.get((branch, s)) or {}).get("decayed") for s in steps)
        candidates = steps if done else []
      for step in candidates:
        ref = StateRef(branch, step)
        entry = self._entries.get((branch, step)) or {}
        if ref in protected or entry.get("decayed") or entry.get("fork_point"):
          continue
        if any(p[0] == branch and p[1] == step for p in self._pending):
          continue
        self.delete(ref)
        deleted.append(ref)
    return deleted

  def close(self) -> None:
    try:
      if not self._failed:
        self.wait()
      for mgr in self._managers.values():
        try:
          mgr.close()
        except Exception:  # noqa: BLE001 - a failed save was already reported as SaveError
          if not self._failed:
            raise
      self._managers.clear()
    finally:
      if self._idle_thread is not None:
        self._idle_thread.close()
        self._idle_thread = None


class _save_errors:
  """Turn a failed write (full disk, quota, I/O error) into a one-line SaveError."""

  def __init__(self, tree: "CheckpointTree", ref: StateRef):
    self.tree, self.ref = tree, ref

  def __enter__(self):
    return self

  def __exit__(self, kind, error, _tb):
    if error is None or isinstance(error, CheckpointError) or not isinstance(error, Exception):
      return False
    tree, branch = self.tree, self.ref.branch
    failed = [step for b, step, _ in tree._pending if b == branch] or [self.ref.step]
    where = f"{branch}@{failed[0]}" if failed[0] >= 0 else branch
    tree._pending = [p for p in tree._pending if p[0] != branch]  # none of those is on disk
    tree._failed = True
    text = " ".join(str(error).split())[:300]
    raise SaveError(f"checkpoint: saving {where} failed ({type(error).__name__}: {text}); "
                    "free disk space (or fix the storage) and rerun the same command: the "
                    "checkpoints saved before are intact") from error


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _branch_order(branch: str) -> tuple[int, int]:
  return (0, 0) if branch == MAIN else (1, int(branch.split("-", 1)[1]))


def latest_step(tree: CheckpointTree, branch: str, before: int | None = None) -> int | None:
  """Newest finished save of `branch` (at or before `before`, if given)."""
  steps = [s for s in tree.steps(branch) if before is None or s <= before]
  return steps[-1] if steps else None


def restore(workdir, branch: str = MAIN, step: int | None = None, mesh=None):
  """Load a train state of a run: `branch` ('main' or 'decay-<N>') at `step` (default: its
  latest save). Onto `mesh` with the run's shardings, or as host numpy arrays without one.
  """
  from wsdjax import config as config_lib  # local: the tree itself needs neither
  from wsdjax import train_state
  cfg = config_lib.load_run_config(workdir)
  tree = CheckpointTree(workdir, read_only=True)
  steps = tree.steps(branch)
  if not steps:
    raise CheckpointError(
        f"branch: no saved states of {branch!r} in {workdir}; saved branches: {tree.branches()}")
  if mesh is None:
    abstract = train_state.abstract_state(cfg)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  else:
    target = train_state.abstract_state(cfg, mesh)
  if step is not None:
    return tree.restore(StateRef(branch, int(step)), target)[0]
  for newest in reversed(steps):  # the latest complete save of the branch
    try:
      return tree.restore(StateRef(branch, newest), target)[0]
    except BrokenCheckpoint as broken:
      if newest == steps[0]:
        raise
      print(f"wsdjax: {broken}; using the previous save", file=sys.stderr, flush=True)
  raise AssertionError("unreachable")

