"""The synthetic bigram language of the WSD-S paper, with its exact optimal loss.

Tokens follow a first-order Markov chain over `V` tokens. Row i of the transition matrix
P is drawn from Dirichlet(alpha, ..., alpha) by `np.random.default_rng(bigram_seed)`
(small alpha: peaked rows, low entropy). A sequence starts from the stationary
distribution pi (pi P = pi), so every token of it is distributed as pi and the best any
model can do on each predicted token is the chain's entropy rate

  H = -sum_i pi_i sum_j P_ij log P_ij   (nats),

the floor that runs report their loss gap against.

Row g of the stream is made by its own generator `default_rng([bigram_seed, seed, g])`
(validation rows use g >= VAL_OFFSET), so any process can make any row without making
the others. Sampling is by inverse CDF on cumulative rows, vectorised across the rows of
a batch one position at a time. The cumulative matrix is V*V float64 (V=256: 0.5 MB,
V=8192: 512 MB).
"""

import numpy as np

# Stream index of the first validation row: far beyond any training row.
VAL_OFFSET = 2**40


def stationary_distribution(p: np.ndarray, tol: float = 1e-15,
                            max_iters: int = 100_000) -> np.ndarray:
  """The pi with pi P = pi of an irreducible chain, in float64.

  Power iteration on the lazy chain (P + I) / 2 (same pi, and aperiodic, so it always
  converges); a dense Dirichlet chain converges in a few dozen iterations. Falls back to
  the eigenvector of eigenvalue 1 if the tolerance is not met.
  """
  p = np.asarray(p, np.float64)
  pi = np.full(p.shape[0], 1.0 / p.shape[0])
  for _ in range(max_iters):
    nxt = 0.5 * (pi + pi @ p)
    nxt /= nxt.sum()
    done = np.abs(nxt - pi).sum() < tol
    pi = nxt
    if done:
      return pi
  w, v = np.linalg.eig(p.T)
  pi = np.abs(np.real(v[:, np.argmin(np.abs(w - 1.0))]))
  return pi / pi.sum()


def entropy_rate(p: np.ndarray, pi: np.ndarray) -> float:
  """H = -sum_i pi_i sum_j P_ij log P_ij in nats (0 log 0 = 0)."""
  p = np.asarray(p, np.float64)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return float(-(pi * plogp.sum(axis=1)).sum())


class BigramChain:
  """A seeded Dirichlet bigram chain and a row sampler over it.

  Attributes:
    transition: [V, V] float64 transition matrix P (rows sum to 1).
    stationary: [V] float64 stationary distribution pi.
    entropy_rate: H in nats per token: the lowest reachable mean loss.
  """

  def __init__(self, vocab_size: int, alpha: float, bigram_seed: int):
    if alpha <= 0:
      raise ValueError(f"bigram alpha must be > 0, got {alpha}")
    self.bigram_seed = bigram_seed
    rng = np.random.default_rng(bigram_seed)
    self.transition = rng.dirichlet(np.full(vocab_size, float(alpha)), size=vocab_size)
    self.stationary = stationary_distribution(self.transition)
    self.entropy_rate = entropy_rate(self.transition, self.stationary)
    self._cdf = _cumulative(self.transition)
    self._pi_cdf = _cumulative(self.stationary[None])[0]

  def rows(self, seed: int, row_ids: np.ndarray, length: int) -> np.ndarray:
    """int32 [len(row_ids), length]: row g is a chain started from pi, drawn by its own
    generator default_rng([bigram_seed, seed, g]); a pure function of its arguments."""
    row_ids = np.asarray(row_ids, np.int64).reshape(-1)
    u = np.stack([np.random.default_rng([self.bigram_seed, seed, int(g)]).random(length)
                  for g in row_ids]) if len(row_ids) else np.zeros((0, length))
    out = np.empty((len(row_ids), length), np.int32)
    out[:, 0] = np.searchsorted(self._pi_cdf, u[:, 0], side="right")
    for k in range(1, length):
      # Smallest j with cdf[prev, j] > u: never a zero-probability token.
      out[:, k] = (self._cdf[out[:, k - 1]] <= u[:, k, None]).sum(axis=1)
    return out


def _cumulative(p: np.ndarray) -> np.ndarray:
  """Row-wise CDF with the last column exactly 1, so inverse-CDF stays in range."""
  cdf = np.cumsum(p, axis=1)
  cdf[:, -1] = 1.0
  return cdf
