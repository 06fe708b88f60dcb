"""`data.source='tokens'`: the rows of step t are a pure function of (stores, seed, weights, t).

A store's training stream of N tokens holds R = (N - 1) // T rows of T + 1 tokens (T =
seq_len), row r = tokens[r*T : r*T + T + 1] (as `packing.PackedRows`). Store s's k-th row
drawn is row perm_{s,e}(k mod R_s) of epoch e = k // R_s, where perm is a keyed Feistel
permutation of [0, R_s) (`feistel_permutation`: O(1) memory, so a 200B-token store needs
no index in memory), keyed by (seed, s, e): every epoch visits every row once, in a fresh
order.

Mixtures (`data.mixture`, several stores with weights w_s, P_s = w_0 + ... + w_s over their
sum): the B rows of step t are the points z_j = (j + f_t) / B, f_t = frac(t * 0.618...)
(Weyl sequence, computed in integers), and row j reads from store s when P_{s-1} <= z_j <
P_s. So each store gets floor or ceil of w_s * B rows every step, and w_s * B * t + O(log t)
rows in t steps, with no state: C_s(t), the rows store s gave before step t, is a sum over
steps. Weights changed on resume act from the resume step on: the position saved with each
state carries the history [[step, weights], ...], so forks, merges and later resumes read
what the plan says. One store is the mixture of one.

Each process reads only its rows [p*L, (p+1)*L) of the global batch, by random access, so
the batches are the same on 1, 2 or 8 processes and after a resume on another slice.
Validation: the val rows of every store, concatenated in store order, in one fixed keyed
permutation (independent of the seed and the weights); eval row k is element k mod V.
"""

from __future__ import annotations

import hashlib

import numpy as np

from wsdjax.data import packing
from wsdjax.data import token_store as store_lib
from wsdjax.data.errors import DataConfigError

_FEISTEL_ROUNDS = 6
_WEYL = 2654435769  # round(2**32 * (sqrt(5) - 1) / 2): f_t = (t * _WEYL mod 2**32) / 2**32
_MASK64 = np.uint64(2**64 - 1)


def _round_keys(key: tuple) -> np.ndarray:
  digest = hashlib.blake2b(repr(("wsdjax-feistel",) + tuple(key)).encode(),
                           digest_size=8 * _FEISTEL_ROUNDS).digest()
  return np.frombuffer(digest, np.uint64).copy()


def _mix(x: np.ndarray, k: np.uint64) -> np.ndarray:
  """splitmix64's finaliser of x ^ k (uint64, wrapping)."""
  z = x ^ k
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def feistel_permutation(index, n: int, key: tuple) -> np.ndarray:
  """perm(index) for a keyed pseudo-random permutation of [0, n) (int64 in, int64 out).

  A balanced Feistel network on 2h-bit integers (4^h >= n), _FEISTEL_ROUNDS rounds of
  splitmix64 keyed by blake2b(key), with cycle-walking: values >= n are encrypted again
  until they fall in [0, n), which keeps it a bijection of [0, n)."""
  index = np.asarray(index, np.int64)
  if n <= 1:
    return np.zeros_like(index)
  half = max(1, ((n - 1).bit_length() + 1) // 2)
  mask = np.uint64((1 << half) - 1)
  shift = np.uint64(half)
  keys = _round_keys(key)
  x = index.astype(np.uint64)
  todo = np.ones(x.shape, bool)
  with np.errstate(over="ignore"):
    while todo.any():
      y = x[todo]
      for k in keys:
        left, right = y >> shift, y & mask
        y = (right << shift) | (left ^ (_mix(right, k) & mask))
      x[todo] = y
      todo = x >= np.uint64(n)
  return x.astype(np.int64)


def _boundaries(weights, batch: int, steps: np.ndarray) -> np.ndarray:
  """int64 [len(steps), S - 1]: row j of step t reads store #{s: b[t, s] <= j}, where
  b[t, s] = ceil(P_s * B - f_t) (see the module docstring)."""
  w = np.asarray(weights, np.float64)
  cum = np.cumsum(w)[:-1] / w.sum()
  f = ((np.asarray(steps, np.uint64) * np.uint64(_WEYL)) & np.uint64(2**32 - 1)).astype(
      np.float64) / 2.0**32
  return np.ceil(cum[None, :] * batch - f[:, None]).clip(0, batch).astype(np.int64)


def _counts(weights, batch: int, steps: np.ndarray) -> np.ndarray:
  """int64 [len(steps), S]: rows of each store in each step."""
  return _counts_of(_boundaries(weights, batch, steps), batch)


def _counts_of(b: np.ndarray, batch: int) -> np.ndarray:
  """Rows of each store in each step, from the steps' `_boundaries`."""
  edges = np.concatenate([np.zeros((len(b), 1), np.int64), b,
                          np.full((len(b), 1), batch, np.int64)], axis=1)
  return np.diff(edges, axis=1)


def rows_before(history: list, batch: int, step: int, num_stores: int) -> np.ndarray:
  """C_s(step): rows each store gave in steps [0, step), under the weight history
  [[from_step, weights], ...] (sorted, the first from step 0)."""
  total = np.zeros(num_stores, np.int64)
  for i, (start, weights) in enumerate(history):
    end = min(step, history[i + 1][0]) if i + 1 < len(history) else step
    for lo in range(start, end, 1 << 20):  # in chunks: memory stays small at any step
      total += _counts(weights, batch, np.arange(lo, min(end, lo + (1 << 20)))).sum(0)
  return total


def weights_at(history: list, step: int) -> list:
  return [w for start, w in history if start <= step][-1]


class TokenRows:
  """Step-indexed batches of one or more token stores (the `_StepIndexed` interface:
  start_position / batches / eval_batches)."""

  def __init__(self, stores: list, weights: list, seq_len: int, seed: int, global_batch: int,
               local_batch: int, process_index: int):
    self._stores = stores
    self._weights = [float(w) for w in weights]
    self._seq_len = seq_len
    self._seed = seed
    self._global = global_batch
    self._local = local_batch
    self._first = process_index * local_batch
    self._rows = [(s.split("train").num_tokens - 1) // seq_len for s in stores]
    self._val_rows = np.array([(s.split("val").num_tokens - 1) // seq_len for s in stores])
    self._val_starts = np.concatenate([[0], np.cumsum(self._val_rows)])

  @property
  def val_rows(self) -> int:
    """Validation rows of all the stores."""
    return int(self._val_starts[-1])

  @property
  def mixed(self) -> bool:
    return len(self._stores) > 1

  def history(self, start_step: int, position: dict | None) -> list:
    """The weight history a state at `start_step` goes on with: the saved one, with the
    config's weights from `start_step` on where they differ."""
    saved = (position or {}).get("mixture") or []
    history = [[int(s), [float(x) for x in w]] for s, w in saved if int(s) < start_step]
    if not history or history[-1][1] != self._weights:
      history.append([start_step, list(self._weights)])
    return history

  def start_position(self, start_step: int, position: dict | None) -> dict:
    if not self.mixed:
      return {"step": start_step}
    return {"step": start_step, "mixture": self.history(start_step, position)}

  def batches(self, start_step: int, position: dict | None):
    history = self.history(start_step, position) if self.mixed else [[0, [1.0]]]
    drawn = rows_before(history, self._global, start_step, len(self._stores))
    step = start_step
    while True:
      b = _boundaries(weights_at(history, step), self._global, np.array([step]))
      yield self.rows_of_step(b[0], drawn), (
          {"step": step + 1, "mixture": history} if self.mixed else {"step": step + 1})
      drawn += _counts_of(b, self._global)[0]
      step += 1

  def rows_of_step(self, b: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """This process's rows of a step whose `_boundaries` are `b`, store s's first row being
    its drawn[s]-th."""
    j = np.arange(self._first, self._first + self._local)
    source = np.searchsorted(b, j, side="right")
    block_start = np.concatenate([[0], b])[source]
    out = np.empty((self._local, self._seq_len + 1), np.int32)
    for s in np.unique(source):
      sel = source == s
      k = drawn[s] + (j[sel] - block_start[sel])  # store s's own row counter
      out[sel] = self._train_rows(int(s), k)
    return out

  def _train_rows(self, s: int, k: np.ndarray) -> np.ndarray:
    rows_per_epoch = self._rows[s]
    epochs, offsets = np.divmod(k, rows_per_epoch)
    rows = np.empty_like(k)
    for e in np.unique(epochs):
      sel = epochs == e
      rows[sel] = feistel_permutation(offsets[sel], rows_per_epoch, (self._seed, s, int(e)))
    return self._stores[s].split("train").read(rows * self._seq_len, self._seq_len + 1)

  def eval_batches(self, count: int) -> list[np.ndarray]:
    total = self.val_rows
    out = []
    for b in range(count):
      k = packing.local_row_ids(b, self._global, self._first // self._local, self._local)
      rows = feistel_permutation(k % total, total, ("validation",))
      store = np.searchsorted(self._val_starts, rows, side="right") - 1
      batch = np.empty((self._local, self._seq_len + 1), np.int32)
      for s in np.unique(store):
        sel = store == s
        local = rows[sel] - self._val_starts[s]
        batch[sel] = self._stores[s].split("val").read(local * self._seq_len, self._seq_len + 1)
      out.append(batch)
    return out


def stores_problem(d) -> tuple[str, str, str] | None:
  """(field, problem, fix) if `data` names no stores rightly: data.path or data.mixture, not
  both; a mixture is (store, weight) pairs, weights finite, >= 0, with a positive sum."""
  example = "e.g. --config.data.mixture='((\"/data/web\", 0.7), (\"/data/code\", 0.3))'"
  if bool(d.path) == bool(d.mixture):
    return ("data.path", "both data.path and data.mixture are set" if d.path else
            "empty but data.source='tokens'", "set --config.data.path=STORE (a folder "
            "written by python -m wsdjax.prepare), or a data.mixture of stores instead")
  if not d.mixture:
    return None
  pairs = isinstance(d.mixture, (tuple, list)) and all(
      isinstance(m, (tuple, list)) and len(m) == 2 and isinstance(m[0], str) and m[0]
      and isinstance(m[1], (int, float)) and not isinstance(m[1], bool) for m in d.mixture)
  if not pairs:
    return ("data.mixture", f"must be (store path, weight) pairs, got {d.mixture!r}", example)
  weights = [float(w) for _, w in d.mixture]
  if not all(np.isfinite(w) and w >= 0 for w in weights):
    return ("data.mixture", f"weights must be finite and >= 0, got {weights}", example)
  if sum(weights) <= 0:
    return ("data.mixture", f"weights sum to 0 ({weights})",
            "give at least one store a positive weight")
  paths = [p for p, _ in d.mixture]
  if len(set(paths)) != len(paths):
    return ("data.mixture", f"a store is listed twice ({paths})",
            "list each store once, with its whole weight")
  return None


def store_specs(d) -> list[tuple[str, float]]:
  """(store path, weight) pairs of `data`: the mixture, or data.path with weight 1."""
  if d.mixture:
    return [(str(p), float(w)) for p, w in d.mixture]
  return [(d.path, 1.0)]


def open_stores(d, seq_len: int) -> list:
  """The stores of `data`, opened and checked: complete, one tokenizer, a row of each
  split (DataConfigError otherwise)."""
  field = "data.mixture" if d.mixture else "data.path"
  stores = [store_lib.TokenStore(p, field=field) for p, _ in store_specs(d)]
  first = stores[0]
  for s in stores[1:]:
    if s.tokenizer.get("sha256") != first.tokenizer.get("sha256") or (
        s.tokenizer["kind"] != first.tokenizer["kind"]):
      raise DataConfigError(f"data.mixture: {s.path} was tokenized with another tokenizer than "
                            f"{first.path}; prepare every store of a mixture with one tokenizer")
  for s in stores:
    for split in store_lib.SPLITS:
      tokens = s.split(split).num_tokens
      if tokens < seq_len + 1:
        what = "training" if split == "train" else "validation"
        raise DataConfigError(
            f"model.seq_len: is {seq_len} but the {what} split of {s.path} has {tokens} tokens "
            f"(one row needs {seq_len + 1}); lower model.seq_len, or prepare more text"
            + (" (or a larger --val_fraction)" if split == "val" else ""))
  return stores
