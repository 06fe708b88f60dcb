"""Per-file checksums of a finished save: recorded when the save completes, checked before
it is restored, so a truncated, deleted or bit-flipped file is reported instead of loaded.

A record is `WORKDIR/checkpoints/integrity/<branch>-<step>.json`: relative path -> size
and SHA-256 of every file under the save's directory (Orbax's metadata, the OCDBT
manifests and data files, the meta item); sizes only with `checkpoint.checksums=False`.

Integrity fails closed. A save is
  verified    its record is readable (`read(...).verified`): its files are checked
              against it before a restore, and a difference makes it DAMAGED;
  unverified  its record is missing (a run of an older wsdjax, a kill between Orbax's
              commit and the record, a deleted `integrity/`) or unreadable (empty, not
              JSON, not a list of files): nothing can tell its files changed, so the
              trainer never restores it (`checkpoint.UnverifiedCheckpoint`), and
              `checkpoint.restore` does so only with a warning. `python -m wsdjax.branches
              --verify --record` vouches for such a save as it is (a fresh record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from etils import epath

from wsdjax.runtime.files import atomic_write_text
from wsdjax.schedule.plan import StateRef

RECORDS = "integrity"
RECORDED, MISSING, UNREADABLE = "recorded", "missing", "unreadable"
_BLOCK = 1 << 20  # bytes per read; hashlib releases the GIL while it hashes each block


@dataclasses.dataclass(frozen=True)
class Record:
  """A save's integrity record as found on disk: `status` RECORDED (with `files`: relative
  path -> {"size", "sha256"?}), MISSING or UNREADABLE (with `why`, for messages)."""
  status: str
  files: dict | None = None
  why: str = ""

  @property
  def verified(self) -> bool:
    return self.status == RECORDED


def files_of(top: epath.Path) -> list[str]:
  """Relative paths of every file under `top`, sorted (a walk by listing: epath has no
  recursive glob on GCS)."""
  out, folders = [], [top]
  while folders:
    for path in folders.pop().iterdir():
      if path.is_dir():
        folders.append(path)
      else:
        out.append(str(path.relative_to(top)))
  return sorted(out)


def digest(path: epath.Path) -> dict:
  """{"size": bytes, "sha256": hex} of one file."""
  h, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while block := f.read(_BLOCK):
      h.update(block)
      size += len(block)
  return {"size": size, "sha256": h.hexdigest()}


def record_path(root: epath.Path, ref: StateRef) -> epath.Path:
  return root / RECORDS / f"{ref.branch}-{ref.step}.json"


def record(root: epath.Path, ref: StateRef, top: epath.Path, checksums: bool = True) -> None:
  """Write the checksums of every file of the finished save in `top` (sizes only, without
  `checksums`)."""
  digests = {rel: digest(top / rel) if checksums else {"size": (top / rel).stat().length}
             for rel in files_of(top)}
  (root / RECORDS).mkdir(exist_ok=True)
  atomic_write_text(record_path(root, ref), json.dumps(digests, indent=0))


def read(root: epath.Path, ref: StateRef) -> Record:
  """The save's record: RECORDED, MISSING, or UNREADABLE (empty, not JSON, not a map of
  files to sizes, or a read error). A torn record is never trusted: records are written
  atomically, so one only tears by hand or by a failing disk."""
  path = record_path(root, ref)
  try:
    text = path.read_text()
  except FileNotFoundError:
    return Record(MISSING, why="no integrity record")
  except OSError as e:
    return Record(UNREADABLE, why=f"integrity record unreadable: {e.strerror or e}")
  if not text.strip():
    return Record(UNREADABLE, why="integrity record unreadable: empty")
  try:
    files = json.loads(text)
  except ValueError:
    return Record(UNREADABLE, why="integrity record unreadable: not valid JSON")
  if not (isinstance(files, dict) and files and all(
      isinstance(v, dict) and isinstance(v.get("size"), int) for v in files.values())):
    return Record(UNREADABLE, why="integrity record unreadable: not a list of files and sizes")
  return Record(RECORDED, files)


def damage(expected: dict, top: epath.Path, share: tuple[int, int] = (0, 1)) -> str | None:
  """What is wrong with the files of the save in `top` against its record `expected`:
  missing, changed size, changed content; None if intact. `share` (i, n) checks only
  every n-th file from the i-th, so n processes can split the reading."""
  found = set(files_of(top))
  missing = sorted(set(expected) - found)
  if missing:
    return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
  index, count = share
  for rel in sorted(expected)[index::count]:
    want = expected[rel]
    size = (top / rel).stat().length
    if size != want["size"]:
      return f"{rel} changed size ({size} bytes, not {want['size']})"
    if want.get("sha256") and digest(top / rel)["sha256"] != want["sha256"]:
      return f"{rel} changed content (its SHA-256 differs from the one recorded at save)"
  return None
