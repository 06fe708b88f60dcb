"""The token store: a corpus tokenized once (`python -m wsdjax.prepare`), read by random access.

Layout of a store folder (local path or gs://bucket/prefix; every file is written whole
and atomically, through TensorStore's key-value stores, which Orbax also uses):

  store.json                 the manifest (below); written last: a store without it is not
                             complete and is never read
  train/FFFFF-KKKKK.npy      1-D numpy arrays of tokens, uint16 when the vocabulary has at
  val/FFFFF-KKKKK.npy        most 65,536 ids, else uint32: doc EOS doc EOS ... of input file
                             F's documents, cut at document ends into shards K = 0, 1, ...
  tokenizer/...              the tokenizer: sentencepiece.model, or tokenizer.json and
                             tokenizer_config.json; none for bytes
  prepare/                   the preparing job's arguments and per-input-file progress

A split's token stream is the concatenation of its shards in manifest order (input files
in path order). Anyone can read it without wsdjax: `np.load(path, mmap_mode='r')` per
shard, in the order `store.json` lists them. Why `.npy` (as OLMo-core writes): the most
portable array file there is, random access by byte offset on any storage, no chunking
to tune; TensorStore reads byte ranges of it from local disk and GCS alike.

Manifest (`store.json`): format, version, dtype, tokenizer {kind, vocab_size, eos_id,
sha256, files}, documents/tokens per split, split {val_fraction, rule}, inputs [{path,
size, format, documents, tokens}], shards {train: [{path, tokens, offset}], val: [...]}
(offset: where the data starts, after the .npy header), and `id`, a SHA-256 of what
identifies the tokens (tokenizer and shards).
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from wsdjax.data.errors import DataConfigError
from wsdjax.data.packing import token_dtype  # noqa: F401 - the store's dtype rule

FORMAT = "wsdjax-token-store"
VERSION = 1
MANIFEST = "store.json"
SPLITS = ("train", "val")


def kvstore_spec(path: str):
  """The TensorStore key-value store of a folder: a local path, gs://..., or memory://..."""
  path = str(path)
  if "://" in path:
    return path.rstrip("/") + "/"
  return {"driver": "file", "path": os.path.abspath(os.path.expanduser(path)) + "/"}


_CONTEXT = []  # one TensorStore context a process: shared connection and cache pools


def open_kvstore(path: str):
  """The folder as a TensorStore KvStore (in this process's one context, so that a
  memory:// folder is the same folder to every reader in the process)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  if not _CONTEXT:
    _CONTEXT.append(ts.Context())
  return ts.KvStore.open(kvstore_spec(path), context=_CONTEXT[0]).result()


def npy_bytes(tokens: np.ndarray) -> tuple[bytes, int]:
  """The .npy file of a 1-D array, and the byte offset where its data starts."""
  buf = io.BytesIO()
  np.lib.format.write_array(buf, np.ascontiguousarray(tokens), allow_pickle=False)
  raw = buf.getvalue()
  return raw, len(raw) - tokens.nbytes


def read_json(kv, key: str, what: str, field: str = "data.path"):
  """The JSON value at `key`, None if absent; a DataConfigError if it is not JSON."""
  result = kv.read(key).result()
  if result.state != "value":
    return None
  try:
    return json.loads(result.value)
  except ValueError as e:
    raise DataConfigError(f"{field}: {what} {key} is not valid JSON ({e}); prepare the store "
                          "again into an empty folder") from None


def write_json(kv, key: str, value) -> None:
  """Writes `value` as JSON at `key` (atomically: a reader sees the old or the new file)."""
  kv.write(key, json.dumps(value, indent=1, sort_keys=True).encode()).result()


def store_id(tokenizer: dict, shards: dict) -> str:
  """SHA-256 of what fixes the tokens of a store: its tokenizer and its shards."""
  blob = json.dumps({"tokenizer": tokenizer, "shards": shards}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


class TokenSplit:
  """One split's token stream (its shards concatenated), read by random access."""

  def __init__(self, kv, name: str, shards: list[dict], dtype: np.dtype, where: str):
    self._kv = kv
    self.name = name
    self._shards = shards
    self._dtype = dtype
    self._where = where
    counts = np.array([s["tokens"] for s in shards], np.int64)
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    self.num_tokens = int(self._starts[-1])

  def read(self, starts, length: int) -> np.ndarray:
    """int32 [len(starts), length]: tokens [s, s + length) of the stream for each start.

    Every byte range is requested at once (TensorStore reads them concurrently)."""
    starts = np.asarray(starts, np.int64)
    if len(starts) and (starts.min() < 0 or starts.max() + length > self.num_tokens):
      raise IndexError(f"{self.name}: windows beyond the {self.num_tokens} tokens of the split")
    pending = []  # (row, column, future)
    for row, start in enumerate(starts.tolist()):
      pos, end = start, start + length
      while pos < end:
        k = int(np.searchsorted(self._starts, pos, side="right")) - 1
        stop = min(end, int(self._starts[k + 1]))
        shard = self._shards[k]
        first = shard["offset"] + (pos - int(self._starts[k])) * self._dtype.itemsize
        size = (stop - pos) * self._dtype.itemsize
        pending.append((row, pos - start, shard["path"], self._kv.read(
            shard["path"], byte_range=slice(first, first + size))))
        pos = stop
    out = np.empty((len(starts), length), np.int32)
    for row, column, path, future in pending:
      value = self._result(future, path)
      out[row, column:column + len(value) // self._dtype.itemsize] = np.frombuffer(
          value, self._dtype)
    return out

  def _result(self, future, path: str) -> bytes:
    try:
      result = future.result()
    except ValueError as e:  # OUT_OF_RANGE: the file is shorter than the manifest says
      raise DataConfigError(f"data.path: {self._where}/{path} is shorter than {MANIFEST} says "
                            f"(truncated: {str(e).splitlines()[0]}); prepare the store again") from None
    if result.state != "value":
      raise DataConfigError(f"data.path: {self._where}/{path} is missing; prepare the store "
                            "again (or restore the file)")
    return result.value

  def check_files(self) -> None:
    """Every shard has at least the bytes the manifest gives it (one small read each)."""
    futures = []
    for shard in self._shards:
      end = shard["offset"] + shard["tokens"] * self._dtype.itemsize
      futures.append((shard["path"], self._kv.read(shard["path"], byte_range=slice(end - 1, end))))
    for path, future in futures:
      self._result(future, path)


class TokenStore:
  """A complete token store, opened for reading (local, gs:// or memory://).

  Attributes: path, manifest (the parsed store.json), dtype, vocab_size, eos_id,
  tokenizer (the manifest's description), id; `split('train' | 'val')`.
  """

  def __init__(self, path: str, field: str = "data.path", check: bool = True):
    self.path = str(path)
    try:
      self._kv = open_kvstore(self.path)
      manifest = read_json(self._kv, MANIFEST, "the store's manifest", field)
    except ValueError as e:  # TensorStore: a bad path, no access, no network
      if isinstance(e, DataConfigError):
        raise
      raise DataConfigError(f"{field}: cannot read {self.path}/{MANIFEST} "
                            f"({str(e).splitlines()[0]}); check the path and your access "
                            "to it") from None
    if manifest is None:
      raise DataConfigError(
          f"{field}: {self.path} is not a complete token store (no {MANIFEST}); prepare one "
          "with python -m wsdjax.prepare --input ... --output " + self.path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not all(
        k in manifest for k in ("dtype", "tokenizer", "id", "shards")):
      raise DataConfigError(f"{field}: {self.path}/{MANIFEST} is not a wsdjax token store "
                            "manifest; point it at a folder written by python -m wsdjax.prepare")
    if manifest.get("version") != VERSION:
      raise DataConfigError(f"{field}: {self.path} is a version {manifest.get('version')} store; "
                            f"this wsdjax reads version {VERSION}: prepare it again")
    self.manifest = manifest
    self.dtype = np.dtype(manifest["dtype"])
    self.tokenizer = dict(manifest["tokenizer"])
    self.vocab_size = int(self.tokenizer["vocab_size"])
    self.eos_id = int(self.tokenizer["eos_id"])
    self.id = manifest["id"]
    self._splits = {name: TokenSplit(self._kv, name, manifest["shards"][name], self.dtype,
                                     self.path) for name in SPLITS}
    if check:
      for split in self._splits.values():
        split.check_files()

  def split(self, name: str) -> TokenSplit:
    return self._splits[name]

  def file_bytes(self, key: str) -> bytes:
    """The bytes of a file of the store (e.g. its tokenizer's)."""
    result = self._kv.read(key).result()
    if result.state != "value":
      raise DataConfigError(f"data.path: {self.path}/{key} is missing; prepare the store again")
    return result.value
