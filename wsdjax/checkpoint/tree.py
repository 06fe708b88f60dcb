"""`CheckpointTree`: the states of every branch of one run, saved, listed, restored, pruned.

Layout:
  WORKDIR/checkpoints/<branch>/<step>/{state,meta}   one Orbax CheckpointManager per branch
  WORKDIR/checkpoints/manifest.json                  index of every finished save
  WORKDIR/checkpoints/config_changes.json            fields changed on resume, and where
  WORKDIR/checkpoints/integrity/<branch>-<step>.json checksums of each save's files
  WORKDIR/checkpoints/broken/<branch>-<step>-<n>/    saves set aside (damaged, unreadable
                                                     or unverified), kept for a look, with
                                                     REASON.txt and their record, if any

`state` is Orbax's standard PyTree checkpoint of the train state (OCDBT, zarr chunks,
zstd-compressed or raw by `compression`): `ocp.StandardCheckpointer().restore(path)`
reads it without wsdjax. `meta` (JSON) holds the state's manifest entry and data position.
The manifest is derived from the metas of finished saves and written atomically; a save
enters it (and is reported) only once Orbax has committed it on disk.

Integrity fails closed (`checkpoint.integrity`): `restore` refuses a save without a
readable record (`UnverifiedCheckpoint`) unless asked to take it unchecked, and a save
whose files differ from its record (`BrokenCheckpoint`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from wsdjax.checkpoint import integrity, lock
from wsdjax.checkpoint.layout import COMPRESSIONS, MANIFEST, check_layout, checkpoint_dir
from wsdjax.checkpoint.errors import (BrokenCheckpoint, CheckpointError, SaveError,
                                      UnverifiedCheckpoint)
from wsdjax.runtime.files import atomic_write_text, is_local
from wsdjax.schedule.plan import MAIN, StateRef
from wsdjax.runtime import faults

CONFIG_CHANGES = "config_changes.json"
BROKEN = "broken"
_BRANCH_RE = re.compile(r"^(main|decay-\d+|merge-\d+)$")
_RAW_FORMAT_FILE = "raw_tree.json"  # what wsdjax's removed raw-array writer left in `state`


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
  """Saves, lists, restores and prunes the states of every branch of one run. A writable
  tree holds the workdir's writer lock (`checkpoint.lock`) until `close()`."""

  def __init__(self, workdir, async_save: bool = True, read_only: bool = False,
               compression: str = "zstd", checksums: bool = True):
    """`compression`: how new saves store their arrays, 'zstd' or 'none' (restores read
    either). `checksums`: record a SHA-256 of every file of a save (else sizes only)."""
    if compression not in COMPRESSIONS:
      raise ValueError(f"compression: {compression!r} is not one of {COMPRESSIONS}")
    self.workdir = workdir
    self.compression = compression
    self.checksums = checksums
    self.root = checkpoint_dir(workdir)
    self.async_save = async_save
    self.read_only = read_only
    self.is_primary = jax.process_index() == 0
    check_layout(self.root)
    if not read_only:
      lock.acquire(workdir)
      self.root.mkdir(parents=True, exist_ok=True)
    self._closed = False
    self._managers: dict[str, ocp.CheckpointManager] = {}
    self._pending: list[tuple[str, int, dict]] = []
    self._entries: dict[tuple[str, int], dict] = {}
    self._failed = False  # a save failed (reported once as SaveError)
    self._recorder = concurrent.futures.ThreadPoolExecutor(1, "wsdjax-checksums")
    self._records: list[concurrent.futures.Future] = []
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
        raise ValueError(f"branch: {branch!r} is not 'main', 'decay-<step>' or 'merge-<step>'")
      options = ocp.CheckpointManagerOptions(
          max_to_keep=None, create=not self.read_only,
          cleanup_tmp_directories=not self.read_only and self.is_primary,
          enable_async_checkpointing=self.async_save,
          # Orbax's save-progress barrier has a fixed name per manager; with one manager
          # per branch saving at once, unprefixed names collide ("already ongoing").
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=branch))
      state = ocp.PyTreeCheckpointHandler(use_compression=self.compression == "zstd")
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

  def path(self, ref: StateRef) -> epath.Path:
    """The directory of a save (its `state` item is a plain Orbax PyTree checkpoint)."""
    return self.root / ref.branch / str(ref.step)

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
          try:
            entry = self.read_meta(StateRef(branch, step)).get("entry")
          except CheckpointError as e:  # e.g. an empty step folder, a lost meta item
            if not self.read_only:
              self.quarantine(StateRef(branch, step), str(e))
            continue
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

  def config_changes(self) -> list[dict]:
    """Config fields changed on a resume, oldest first: {"branch", "step" (the state the
    run went on from; None before any save), "changes": {field: [old, new]}}. Kept apart
    from the saves' entries, so retention never drops them."""
    path = self.root / CONFIG_CHANGES
    return json.loads(path.read_text()) if path.exists() else []

  def record_config_change(self, ref: StateRef | None, changes: dict) -> None:
    if self.is_primary and not self.read_only:
      record = {"branch": ref.branch if ref else None, "step": ref.step if ref else None,
                "changes": changes}
      atomic_write_text(self.root / CONFIG_CHANGES,
                        json.dumps(self.config_changes() + [record], indent=1,
                                   default=_json_default))

  # ---- save ----
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
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(_as_item(state)),
                              meta=ocp.args.JsonSave(meta))
    with _save_errors(self, ref):
      mgr.save(ref.step, args=args, force=True)
    self._pending.append((ref.branch, ref.step, meta["entry"]))
    faults.in_save(ref.branch, ref.step)
    if not self.async_save:
      self.poll()

  def poll(self) -> list[dict]:
    """Entries of saves that finished since the last call (now in the manifest); their
    checksums are computed in the background (`wait` waits for them)."""
    done, still = [], []
    newest = {}
    for branch, step, _ in self._pending:
      newest[branch] = max(step, newest.get(branch, step))
    for branch, step, entry in self._pending:
      mgr = self._managers[branch]
      with _save_errors(self, StateRef(branch, step)):
        mgr.check_for_errors()
      # A manager writes one save at a time (save() waits for the one before it), so only
      # the branch's newest save can still be in flight. Asking Orbax first keeps the
      # storage (a stat per step, a network call on gs://) out of the steps a save spans.
      if step == newest[branch] and mgr.is_saving_in_progress():
        still.append((branch, step, entry))
      elif self._committed(StateRef(branch, step)):
        done.append(entry)
        self._entries[(branch, step)] = entry
        self._start_record(StateRef(branch, step))
      else:  # not on disk, never reported: its error, if the write ended after the check
        with _save_errors(self, StateRef(branch, step)):  # above, names the reason
          mgr.check_for_errors()
        self._failed = True
        raise SaveError(f"checkpoint: saving {branch}@{step} did not finish; free disk space "
                        "(or fix the storage) and rerun the same command: the checkpoints "
                        "saved before are intact")
    self._pending = still
    if done:
      self._write_manifest()
    self._check_records(block=False)
    return done

  def _committed(self, ref: StateRef) -> bool:
    """Whether Orbax has finalised the save of `ref`: locally its folder is renamed into
    place at the end; on object stores it gets commit_success.txt. (A manager lists a step
    from the moment its save starts, so `all_steps` cannot tell.)"""
    top = self.path(ref)
    return top.exists() and (is_local(top) or (top / "commit_success.txt").exists())

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
    """Block until every save (and its checksums) is on disk; return the entries that
    finished."""
    for branch, mgr in self._managers.items():
      pending = [step for b, step, _ in self._pending if b == branch]
      with _save_errors(self, StateRef(branch, pending[0] if pending else -1)):
        mgr.wait_until_finished()
    done = self.poll()
    self._check_records(block=True)
    return done

  # ---- integrity ----
  def _start_record(self, ref: StateRef) -> None:
    if self.is_primary and not self.read_only:
      self._records.append(self._recorder.submit(self._record, ref))

  def _record(self, ref: StateRef) -> None:
    top = self.path(ref)
    if top.exists():  # else pruned meanwhile
      integrity.record(self.root, ref, top, self.checksums)

  def _check_records(self, block: bool) -> None:
    """Raise the error of a checksum record that failed (e.g. a full disk) as SaveError."""
    keep = []
    for future in self._records:
      if not (block or future.done()):
        keep.append(future)
        continue
      try:
        future.result()
      except OSError as e:
        self._failed = True
        raise SaveError(f"checkpoint: recording checksums failed ({e}); free disk space "
                        "and rerun the same command") from e
    self._records = keep

  def verification(self, ref: StateRef) -> integrity.Record:
    """The save's integrity record as found on disk (cheap: the files are not read); a
    record this process is still writing is waited for first."""
    if self._records:
      self._check_records(block=True)
    return integrity.read(self.root, ref)

  def damage(self, ref: StateRef, collective: bool = True,
             record: integrity.Record | None = None) -> str | None:
    """What is wrong with the files of a finished save (missing, truncated, changed),
    judged against the checksums recorded when it finished (`record`, read if not given);
    None if intact or unverified (no readable record: `verification`). `collective`: in a
    multi-process job every process checks a share of the files and all get the answer
    (every process must call it)."""
    record = record or self.verification(ref)
    if not record.verified:
      return None
    if not collective or jax.process_count() == 1:
      return integrity.damage(record.files, self.path(ref))
    from wsdjax.runtime import distributed
    mine = integrity.damage(record.files, self.path(ref),
                            (jax.process_index(), jax.process_count()))
    return next((d for d in distributed.allgather_json(mine) if d), None)

  def quarantine(self, ref: StateRef, reason: str) -> epath.Path:
    """Move an unreadable, damaged or unverified save out of its branch (kept under
    checkpoints/broken/ for a look, with REASON.txt and its integrity record, never
    deleted) so that resume uses the previous complete one."""
    n = 0
    while (dest := self.root / BROKEN / f"{ref.branch}-{ref.step}-{n}").exists():
      n += 1
    if self.is_primary:
      dest.parent.mkdir(parents=True, exist_ok=True)
      self.path(ref).rename(dest)
      atomic_write_text(dest / "REASON.txt", reason + "\n")
    _barrier(f"quarantine-{ref.branch}-{ref.step}")
    manager = self._managers.pop(ref.branch, None)
    if manager is not None:
      manager.close()
    self._pending = [p for p in self._pending if p[0] != ref.branch or p[1] != ref.step]
    record = integrity.record_path(self.root, ref)
    if self.is_primary and record.exists():  # kept with the save: what it was judged by
      record.rename(dest / f"{integrity.RECORDS}.json")
    self._entries.pop((ref.branch, ref.step), None)
    self._write_manifest()
    return dest

  # ---- restore ----
  def read_meta(self, ref: StateRef) -> dict:
    mgr = self._manager(ref.branch)
    try:
      return mgr.restore(ref.step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any read failure means a broken save
      text = " ".join(str(e).split())[:300]
      raise CheckpointError(f"checkpoint: {ref.branch}@{ref.step}: cannot read its meta "
                            f"({text})") from e

  def restore(self, ref: StateRef, target, unverified_ok: bool = False) -> tuple[Any, dict]:
    """Restore `ref` into the structure/shardings of `target` (abstract or concrete).
    BrokenCheckpoint if its files differ from those recorded when it was saved (or, with
    no record to judge by, Orbax cannot read them); UnverifiedCheckpoint if it has no
    readable record, unless `unverified_ok` (the caller warns that it is unchecked)."""
    if not self.has(ref):
      raise CheckpointError(f"{ref.branch}@{ref.step}: no such checkpoint "
                            f"(saved steps of {ref.branch}: {self.steps(ref.branch)})")
    if (self.path(ref) / "state" / _RAW_FORMAT_FILE).exists():
      raise CheckpointError(
          f"checkpoint: {ref.branch}@{ref.step} was written by wsdjax's raw-array writer, "
          "which was removed (saves are Orbax's standard format now) and cannot be "
          "restored; start a new --workdir")
    record = self.verification(ref)
    if not (record.verified or unverified_ok):
      raise UnverifiedCheckpoint(ref, record.why, self.workdir)
    damage = self.damage(ref, record=record)
    if damage:
      raise BrokenCheckpoint(ref, damage)
    item = _as_item(target)
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    try:
      out = self._manager(ref.branch).restore(ref.step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item, restore_args=restore_args),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      damage = self.damage(ref, collective=False, record=record)
      text = " ".join(str(e).split())[:400]
      if damage:
        raise BrokenCheckpoint(ref, damage) from e
      if not record.verified:  # files not vouched for: unreadable
        raise BrokenCheckpoint(ref, f"unreadable ({text})") from e
      raise CheckpointError(
          f"checkpoint: cannot restore {ref.branch}@{ref.step} ({text}); if its files are "
          f"damaged, move {self.path(ref)} away and rerun to resume from the previous "
          "save") from e
    state = out["state"]
    return (target.replace(**state) if item is not target else state), out["meta"]

  # ---- retention ----
  def delete(self, ref: StateRef) -> None:
    self._check_records(block=True)  # no checksum record being written for it
    self._manager(ref.branch).delete(ref.step)
    if self.is_primary:
      integrity.record_path(self.root, ref).unlink(missing_ok=True)
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
    """Wait for pending saves (unless one failed), close the managers, drop the lock."""
    if self._closed:
      return
    self._closed = True
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
      self._recorder.shutdown(wait=True)
      if not self.read_only:
        lock.release(self.workdir)

  def __enter__(self) -> "CheckpointTree":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _save_errors:
  """Turn a failed write (full disk, quota, I/O error) into a one-line SaveError."""

  def __init__(self, tree: CheckpointTree, ref: StateRef):
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
    raise SaveError(f"checkpoint: saving {where} failed ({_why(error)}); free disk space "
                    "(or fix the storage) and rerun the same command: the checkpoints saved "
                    "before are intact") from error


_DISK_FULL = ("No space left on device", "File too large", "Disk quota exceeded")


def _as_item(state):
  """What a save stores of `state`: a dataclass (the TrainState) as the dict of its fields
  but the empty ones (e.g. no EMA shadows), so saves made before a field existed restore
  and every save is a plain nested dict for Orbax users; anything else as it is."""
  if not dataclasses.is_dataclass(state):
    return state
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return {k: v for k, v in fields.items() if not (isinstance(v, tuple) and not v)}


def _why(error: Exception) -> str:
  """A write error in a few words: the OS's reason where it names a full disk (TensorStore
  wraps it in a long spec) and the save's folder, else the error's first 300 characters."""
  text = " ".join(str(error).split())
  reason = next((r for r in _DISK_FULL if r in text), None)
  if reason is None:
    return f"{type(error).__name__}: {text[:300]}"
  folder = re.search(r'(/[^"\s]*/checkpoints/[^/"\s]+/\d+)', text)
  return reason + (f" under {folder.group(1)}" if folder else "")


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _branch_order(branch: str) -> tuple[int, int]:
  return (0, 0) if branch == MAIN else (1, int(branch.split("-", 1)[1]))
