"""Every save of a run checked against its integrity record, and unverified ones vouched for
(behind `python -m wsdjax.branches --verify [--record]`).

`verify(workdir)` rehashes the files of each finished save and finds it
  intact      its files match its record,
  damaged     they differ from it (`detail`: what: a missing file, a changed size or
              content), or
  unverified  it has no readable record (`detail`: why: none, or an unreadable one), so
              nothing can tell whether its files changed.
It takes no lock and writes nothing (beside a running run, its newest save may show
unverified until the run's background thread has written its record). With `record=True` it holds the workdir's writer lock
(`checkpoint.lock`: it cannot race a running trainer) and writes a fresh record of each
unverified save whose meta item and state metadata Orbax reads back, saying so first: the
user vouches for those files as they are now. A damaged save is never recorded again.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import orbax.checkpoint as ocp

from wsdjax.checkpoint import integrity, lock
from wsdjax.checkpoint.errors import CheckpointError
from wsdjax.checkpoint.tree import CheckpointTree
from wsdjax.schedule.plan import StateRef

INTACT, DAMAGED, UNVERIFIED, RECORDED = "intact", "damaged", "unverified", "recorded"


@dataclasses.dataclass(frozen=True)
class Finding:
  """What `verify` found of one save: `status` INTACT, DAMAGED, UNVERIFIED or RECORDED (an
  unverified save vouched for by `record=True`), with `detail` (what differs, why it is
  unverified, or why it could not be recorded)."""
  ref: StateRef
  status: str
  detail: str = ""

  def line(self) -> str:
    name = f"{self.ref.branch}@{self.ref.step}"
    return f"{name:<14} {self.status}" + (f" ({self.detail})" if self.detail else "")


def verify(workdir, record: bool = False, checksums: bool = True,
           say: Callable[[str], None] = print) -> list[Finding]:
  """Check every finished save of `workdir` (branch order, then step); with `record`,
  vouch for the unverified ones Orbax can read (a record of sizes and, with `checksums`,
  SHA-256s), announcing each with `say` before it is written."""
  if record:
    lock.acquire(workdir)  # WorkdirInUse while a trainer writes the tree
  try:
    with CheckpointTree(workdir, read_only=True) as tree:
      found = [_check(tree, StateRef(b, s)) for b in tree.branches() for s in tree.steps(b)]
      if record:
        found = [_record(tree, f, checksums, say) if f.status == UNVERIFIED else f
                 for f in found]
    return found
  finally:
    if record:
      lock.release(workdir)


def _check(tree: CheckpointTree, ref: StateRef) -> Finding:
  record = tree.verification(ref)
  if not record.verified:
    return Finding(ref, UNVERIFIED, record.why)
  damage = tree.damage(ref, collective=False, record=record)
  return Finding(ref, DAMAGED, damage) if damage else Finding(ref, INTACT)


def _record(tree: CheckpointTree, finding: Finding, checksums: bool,
            say: Callable[[str], None]) -> Finding:
  """Vouch for one unverified save: Orbax must read its meta item and its state's
  metadata; then a fresh record of its files as they are."""
  ref = finding.ref
  try:
    tree.read_meta(ref)
    ocp.PyTreeCheckpointHandler().metadata(tree.path(ref) / "state")
  except Exception as e:  # noqa: BLE001 - any read failure: not vouched for
    text = " ".join(str(e).split())[:200]
    return Finding(ref, UNVERIFIED, f"{finding.detail}; not recorded: Orbax cannot read it "
                   f"({text})")
  say(f"recording {ref.branch}@{ref.step}: it is unverified ({finding.detail}) and Orbax "
      "reads it; writing a fresh integrity record of its files as they are now")
  integrity.record(tree.root, ref, tree.path(ref), checksums)
  return Finding(ref, RECORDED, f"was unverified: {finding.detail}")


def summary(found: list[Finding]) -> str:
  """One line: how many saves, how many of each status."""
  counts = {s: sum(f.status == s for f in found) for s in (INTACT, RECORDED, DAMAGED,
                                                           UNVERIFIED)}
  return f"{len(found)} save(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()
                                               if n or s != RECORDED)


def problem(workdir, found: list[Finding]) -> CheckpointError | None:
  """The one-line error for damaged or unverified saves (None if there are none)."""
  damaged = [f for f in found if f.status == DAMAGED]
  unverified = [f for f in found if f.status == UNVERIFIED]
  if not (damaged or unverified):
    return None
  parts, fixes = [], []
  if damaged:
    parts.append(f"{len(damaged)} damaged ({_names(damaged)})")
    fixes.append("rerun the train command: it sets aside the damaged saves it needs (to "
                 "checkpoints/broken/) and rebuilds them")
  if unverified:
    parts.append(f"{len(unverified)} unverified ({_names(unverified)})")
    fixes.append("vouch for unverified saves as they are with --verify --record, if you "
                 "trust their files")
  return CheckpointError(f"--verify: of {len(found)} save(s) in {workdir}, "
                         f"{' and '.join(parts)}; {'; '.join(fixes)}")


def _names(found: list[Finding]) -> str:
  return ", ".join(f"{f.ref.branch}@{f.ref.step}" for f in found)
