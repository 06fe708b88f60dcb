"""Packing documents into fixed-length rows, and the step-indexed order of rows.

Packing is concatenate-and-chunk: the token stream is doc_1 EOS doc_2 EOS ... and row r
is the window stream[r*T : r*T + T + 1] (T = seq_len; consecutive rows share one token,
so every next-token pair of the stream is trained on once per epoch; the tail shorter
than a row is dropped). Why: no padding is wasted, the code is tiny, and row r is an
O(1) slice, so the batch of any step can be made directly (resume and branch forks read
exactly the rows they would have read). The usual GPT-style trade-off: a row may span a
document boundary and attend across it; the EOS token marks where one ends.

Step indexing: global row g = step * global_batch + i is row perm_e[g % N] of the N
packed rows, e = g // N, perm_e = np.random.default_rng([seed, e]).permutation(N): every
epoch visits all rows once in a fresh seeded order, and a process making rows
[p*L, (p+1)*L) of a step computes them without reading anyone else's.
"""

from collections.abc import Iterable, Sequence

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned dtype that holds every id: uint16 (vocabulary <= 65,536) or uint32."""
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def concat_documents(docs: Iterable[Sequence[int]], eos_id: int, vocab_size: int) -> np.ndarray:
  """The token stream doc_1 EOS doc_2 EOS ..., in `token_dtype(vocab_size)`."""
  dtype = token_dtype(vocab_size)
  parts = []
  eos = np.array([eos_id], dtype)
  for doc in docs:
    parts.append(np.asarray(doc, dtype))
    parts.append(eos)
  return np.concatenate(parts) if parts else np.zeros((0,), dtype)


class PackedRows:
  """Rows of T + 1 tokens over a token stream: row r = stream[r*T : r*T + T + 1]."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens = tokens
    self.seq_len = seq_len
    self.num_rows = max(0, (len(tokens) - 1) // seq_len)

  def gather(self, rows: np.ndarray) -> np.ndarray:
    """int32 [len(rows), T + 1]: the given rows, in the given order."""
    rows = np.asarray(rows, np.int64)
    idx = rows[:, None] * self.seq_len + np.arange(self.seq_len + 1)
    return self.tokens[idx].astype(np.int32)


class EpochShuffle:
  """Maps global row indices g to packed rows via per-epoch seeded permutations."""

  def __init__(self, num_rows: int, seed: int, cache_epochs: int = 2):
    self.num_rows = num_rows
    self.seed = seed
    self._cache: dict[int, np.ndarray] = {}
    self._cache_epochs = cache_epochs

  def permutation(self, epoch: int) -> np.ndarray:
    """perm_e = np.random.default_rng([seed, epoch]).permutation(num_rows) (cached)."""
    if epoch not in self._cache:
      if len(self._cache) >= self._cache_epochs:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return self._cache[epoch]

  def __call__(self, g: np.ndarray) -> np.ndarray:
    g = np.asarray(g, np.int64)
    epochs, offsets = np.divmod(g, self.num_rows)
    out = np.empty_like(g)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self.permutation(int(e))[offsets[sel]]
    return out


def local_row_ids(step: int, global_batch: int, process_index: int,
                  local_batch: int) -> np.ndarray:
  """Global row indices of this process's part of the batch of `step`."""
  start = step * global_batch + process_index * local_batch
  return np.arange(start, start + local_batch, dtype=np.int64)


class Chunker:
  """Streaming concatenate-and-chunk with the same row rule as PackedRows.

  `add(doc)` appends doc + EOS; `pop()` returns the next full row of T + 1 tokens (or
  None) and keeps its last token as the first of the next row. `carry` is the tokens not
  yet emitted (at most one row plus the rest of the current document).
  """

  def __init__(self, seq_len: int, eos_id: int, carry: Sequence[int] = ()):
    self.seq_len = seq_len
    self.eos_id = eos_id
    self._buf = np.asarray(carry, np.int32)

  @property
  def carry(self) -> list[int]:
    return self._buf.tolist()

  def add(self, doc: Sequence[int]) -> None:
    self._buf = np.concatenate(
        [self._buf, np.asarray(doc, np.int32), np.array([self.eos_id], np.int32)])

  def pop(self) -> np.ndarray | None:
    if len(self._buf) < self.seq_len + 1:
      return None
    row = self._buf[:self.seq_len + 1]
    self._buf = self._buf[self.seq_len:]
    return row
