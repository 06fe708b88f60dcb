"""Tokenizing batches of documents on every core, in order (for `python -m wsdjax.prepare`).

Each batch of documents is split into train and validation as the 'text' source splits
(a document is held out iff `sources.unit_hash` of its text is below `val_fraction`) and
tokenized, each document followed by EOS. `Encoder.map` returns the results in input
order whatever the number of workers, so what is written does not depend on it; a worker
process is one core (its tokenizer runs one thread).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from wsdjax.data import packing, sources
from wsdjax.data import tokenizers as tokenizers_lib

# Documents go to the workers in batches of at most this many documents or characters.
BATCH_DOCS = 512
BATCH_CHARS = 1 << 20

_WORKER: dict = {}


def _init_worker(kind: str, payload, val_fraction: float) -> None:
  """Pool initializer: this process's tokenizer, one thread (a worker is a core)."""
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  os.environ["RAYON_NUM_THREADS"] = "1"
  if kind == "bytes":
    tok = tokenizers_lib.BytesTokenizer()
  elif kind == "sentencepiece":
    tok = tokenizers_lib.SentencePieceTokenizer(payload, threads=1)
  else:
    raw, config_raw = payload
    tok = tokenizers_lib.HuggingFaceTokenizer("tokenizer.json", raw=raw, config_raw=config_raw)
  _WORKER.update(tok=tok, val_fraction=val_fraction)


def _worker_payload(tok):
  if tok.kind == "sentencepiece":
    return tok.model_proto
  if tok.kind == "huggingface":
    return (tok.raw, tok.config_raw)
  return None


def encode_batch(texts: list[str]) -> tuple[np.ndarray, int, np.ndarray, int]:
  """(train tokens, train documents, val tokens, val documents) of a batch of documents:
  each split's documents in order, each followed by EOS."""
  tok, fraction = _WORKER["tok"], _WORKER["val_fraction"]
  held = [sources.unit_hash(t) < fraction for t in texts]
  ids = tok.encode_batch(texts)
  train = [x for x, h in zip(ids, held) if not h]
  val = [x for x, h in zip(ids, held) if h]
  return (packing.concat_documents(train, tok.eos_id, tok.vocab_size), len(train),
          packing.concat_documents(val, tok.eos_id, tok.vocab_size), len(val))


def batch_chars(shard_tokens: int) -> int:
  """Characters a batch: BATCH_CHARS, or less for small shards (a shard ends after a batch,
  so a batch is kept to an eighth of a shard's tokens, a token being a character or more)."""
  return max(1, min(BATCH_CHARS, shard_tokens // 8))


def batches(docs, batch_docs: int = BATCH_DOCS, batch_chars: int = BATCH_CHARS):
  """Consecutive documents, cut after BATCH_DOCS documents or BATCH_CHARS characters."""
  batch, chars = [], 0
  for doc in docs:
    batch.append(doc)
    chars += len(doc)
    if len(batch) >= batch_docs or chars >= batch_chars:
      yield batch
      batch, chars = [], 0
  if batch:
    yield batch


class Encoder:
  """encode_batch in order, in this process (workers == 1) or over a pool, with at most
  2 batches a worker in flight (a pool's own imap would read the whole input ahead)."""

  def __init__(self, tok, val_fraction: float, workers: int):
    self.workers = workers
    args = (tok.kind, _worker_payload(tok), val_fraction)
    if workers == 1:
      _init_worker(*args)
      self._pool = None
    else:
      import multiprocessing  # pylint: disable=g-import-not-at-top
      self._pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, args)

  def map(self, batches):
    if self._pool is None:
      yield from map(encode_batch, batches)
      return
    pending = collections.deque()
    for batch in batches:
      pending.append(self._pool.apply_async(encode_batch, (batch,)))
      if len(pending) >= 2 * self.workers:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()

  def close(self) -> None:
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()
