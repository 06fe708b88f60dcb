"""Documents from local text files, and the deterministic train/validation split.

A document is a file, or a block of a file between blank lines: every file is split on
runs of blank (empty or whitespace-only) lines, so a file without blank lines is one
document. Files may be plain or gzip-compressed (`.gz`), UTF-8 (undecodable bytes become
U+FFFD). The same split rule (`split_train_val`) serves the bundled corpus.
"""

import glob
import gzip
import hashlib
import os
import re

from wsdjax.data.errors import DataConfigError

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def list_files(pattern: str) -> list[str]:
  """Files matching `pattern` (a path, a directory, or a glob with `**`), sorted by path."""
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "**", "*")
  paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise DataConfigError(f"data.path: no file matches {pattern!r}; give an existing file, folder or glob")
  return paths


def read_text(path: str) -> str:
  """The text of one file, gunzipped if its name ends in `.gz`; newlines normalised."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # a bad or truncated .gz, an unreadable file
    raise DataConfigError(f"data.path: cannot read {path} ({type(e).__name__}: {e}); fix or "
                          "remove that file") from None
  return data.decode("utf-8", errors="replace").replace("\r\n", "\n")


def split_documents(text: str) -> list[str]:
  """The non-empty blank-line-separated blocks of `text`, stripped of outer whitespace."""
  blocks = (b.strip() for b in _BLANK_LINES.split(text))
  return [b for b in blocks if b]


def read_documents(pattern: str) -> list[str]:
  """All documents of the files matching `pattern`, in path order then file order."""
  docs = []
  for path in list_files(pattern):
    docs.extend(split_documents(read_text(path)))
  if not docs:
    raise DataConfigError(f"data.path: the files matching {pattern!r} hold no text; point it at text files")
  return docs


def unit_hash(doc: str) -> float:
  """A uniform number in [0, 1) that depends only on the document's text."""
  digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2.0**64


def split_train_val(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
  """Splits documents into (train, validation), each in input order.

  A document is held out iff a hash of its text is below `val_fraction`: the split needs
  no seed, does not depend on the order or number of documents or processes, and copies
  of one text always land on the same side. If no document hashes below the fraction,
  the one with the smallest hash is held out, so validation is never empty.
  """
  if not 0.0 < val_fraction < 1.0:
    raise DataConfigError(f"data.val_fraction: is {val_fraction}; must be in (0, 1)")
  if len(docs) < 2:
    raise DataConfigError(
        f"data.path: {len(docs)} document(s) found; the train/validation split needs at least "
        "2 (separate documents by blank lines or use several files)")
  hashes = [unit_hash(d) for d in docs]
  held = [h < val_fraction for h in hashes]
  if not any(held):
    held[min(range(len(docs)), key=hashes.__getitem__)] = True
  if all(held):
    held[max(range(len(docs)), key=hashes.__getitem__)] = False
  train = [d for d, v in zip(docs, held) if not v]
  val = [d for d, v in zip(docs, held) if v]
  return train, val
