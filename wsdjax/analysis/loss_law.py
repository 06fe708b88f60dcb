"""Schedule-aware loss laws: the loss after n updates as a function of the learning rates
of the updates before it, fitted to a run's curves and evaluated on any schedule.

LRs are in units of a reference LR (the run's peak), so sums count "steps at peak".
With eta_u the LR of update u, S(n) = sum_{u<n} eta_u, w the end of the first warmup
(updates before it only enter S), and Delta_k = eta_{k-1} - eta_k for k > w:

  multi_power (Luo et al. 2025, arXiv 2503.12811):
    L(n) = L0 + A (S(n))^-alpha - B sum_{w<k<n} Delta_k G(eta_k^-gamma S_k(n)),
    G(x) = 1 - (C x + 1)^-beta,  S_k(n) = sum_{k<=u<n} eta_u
  annealing (Tissue et al. 2024, arXiv 2408.11029):
    L(n) = L0 + A (S(n))^-alpha - C S2(n),  S2(n) = sum_{i<n} m_i,
    m_i = lambda m_{i-1} + Delta_i, so S2(n) = sum_{w<k<n} Delta_k h (1 - (1 - 1/h)^(n-k)),
    h = 1 / (1 - lambda) the momentum's horizon in steps

A curve's observations are train-loss windows (the mean of L(u) over the updates u of the
window: update u's loss is measured before it, at the state after u updates) and eval
losses (delta + kappa L(n): the eval set's excess loss a multiple of the training
stream's, fitted when both kinds are there; one offset alone did not fit the corpus). The fit
(`fit`) is weighted least squares, the weight of an observation the square root of the
updates (or eval batches) it averages; uncertainties from the Jacobian at the optimum.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

LAWS = ("multi_power", "annealing")
_TINY_LR = 1e-6  # relative LRs below this count as this (a decay to exactly 0)
MAX_CHANGES = 512  # LR changes a curve's annealing term sums exactly; more are grouped


def warmup_end(lr: Sequence[float]) -> int:
  """The first update at the largest LR of `lr` (0 for none): where the warmup ends."""
  lr = np.asarray(lr, np.float64)
  return int(np.argmax(lr >= lr.max() * (1 - 1e-6))) if len(lr) else 0


@dataclasses.dataclass(frozen=True)
class Curve:
  """The LRs `lr` of updates 0..len-1 of one lineage (in reference units), the update
  `warmup_end` where the first warmup ends, and its cumulative sums."""
  lr: np.ndarray
  warmup_end: int

  @classmethod
  def of(cls, lr: Sequence[float], reference: float) -> Curve:
    lr = np.maximum(np.asarray(lr, np.float64) / reference, 0.0)
    return cls(lr, warmup_end(lr))

  @property
  def cumulative(self) -> np.ndarray:
    """S(n) for n = 0..len: the LR sum of the first n updates."""
    return np.concatenate([[0.0], np.cumsum(self.lr)])

  def changes(self) -> tuple[np.ndarray, np.ndarray]:
    """(k, Delta_k) for the updates k after the warmup where the LR changes; beyond
    MAX_CHANGES of them (a decay of thousands of steps), consecutive runs of changes as
    blocks: the sum of their Delta at the update in the middle of each."""
    k = np.arange(self.warmup_end + 1, len(self.lr))
    delta = self.lr[k - 1] - self.lr[k]
    keep = delta != 0
    k, delta = k[keep], delta[keep]
    if len(k) <= MAX_CHANGES:
      return k, delta
    blocks = np.array_split(np.arange(len(k)), MAX_CHANGES)
    return (np.array([k[b[len(b) // 2]] for b in blocks]),
            np.array([delta[b].sum() for b in blocks]))


@dataclasses.dataclass(frozen=True)
class Law:
  """A law's parameters: `names` (natural), the fit's own coordinates and their bounds."""
  name: str
  names: tuple[str, ...]

  def curve_loss(self, p: dict, curve: Curve, n: np.ndarray) -> np.ndarray:
    """L(n) of `curve` at states n (updates done, each >= 1) under natural parameters p."""
    n = np.asarray(n, np.int64)
    cum = curve.cumulative
    base = p["L0"] + p["A"] * np.maximum(cum[n], 1e-12) ** -p["alpha"]
    k, delta = curve.changes()
    if not len(k):
      return base
    after = cum[n][:, None] - cum[k][None, :]  # S_k(n), sum of updates k..n-1
    live = k[None, :] < n[:, None]
    if self.name == "multi_power":
      x = np.maximum(curve.lr[k], _TINY_LR) ** -p["gamma"] * np.maximum(after, 0.0)
      kernel = 1.0 - (p["C"] * x + 1.0) ** -p["beta"]
      return base - p["B"] * np.sum(np.where(live, delta * kernel, 0.0), axis=1)
    h = p["h"]
    lag = np.maximum(n[:, None] - k[None, :], 0)
    kernel = h * -np.expm1(lag * np.log1p(-1.0 / h)) if h > 1 else np.minimum(lag, 1.0)
    return base - p["C"] * np.sum(np.where(live, delta * kernel, 0.0), axis=1)

  def to_natural(self, theta: np.ndarray) -> dict:
    """The fit's coordinates -> named parameters (log-scaled ones exponentiated)."""
    return {name: (math.exp(v) if name in _LOG_SCALED else float(v))
            for name, v in zip(self.names, theta)}

  def to_theta(self, p: dict) -> np.ndarray:
    return np.array([math.log(p[n]) if n in _LOG_SCALED else p[n] for n in self.names])

  def bounds(self, loss_top: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the fit's coordinates: L0 in [0, the highest loss seen] (a decay's
    term takes the loss below L0, so the lowest loss seen does not bound it)."""
    box = dict(_BOUNDS, L0=(0.0, loss_top))
    return (np.array([box[n][0] for n in self.names]),
            np.array([box[n][1] for n in self.names]))


_LOG_SCALED = ("A", "B", "C", "h")
_BOUNDS = {"alpha": (0.01, 3.0), "A": (-20.0, 20.0), "B": (-20.0, 20.0),
           "C": (-20.0, 20.0), "beta": (0.01, 5.0), "gamma": (0.0, 2.0),
           "h": (0.0, math.log(1e6)), "delta": (-10.0, 10.0),
           "kappa": (0.25, 4.0)}
# The eval losses' scale: L_eval(n) = delta + kappa L(n) (a held-out set whose excess loss
# is a multiple of the training stream's), fitted when both kinds of losses are.
EVAL_SCALE = ("delta", "kappa")
MULTI_POWER = Law("multi_power", ("L0", "A", "alpha", "B", "C", "beta", "gamma"))
ANNEALING = Law("annealing", ("L0", "A", "alpha", "C", "h"))
BY_NAME = {law.name: law for law in (MULTI_POWER, ANNEALING)}


# ---------------------------------------------------------------------------------------
# Observations and the fit
# ---------------------------------------------------------------------------------------
_SAMPLES_PER_WINDOW = 8  # a window's mean is taken over at most this many of its states


@dataclasses.dataclass(frozen=True)
class Observation:
  """A measured loss of curve `curve`: the mean of L(u) over states u in [first, stop)
  (a train window), or delta + kappa L(first) (`is_eval`, stop = first + 1); `weight` the
  square root of the updates (eval batches) it averages."""
  curve: str
  first: int
  stop: int
  loss: float
  is_eval: bool
  weight: float


class _Design:
  """The states each curve is evaluated at, and the averaging that maps them to the
  observations: model(obs) = mean of L(curve, state) over its sampled states."""

  def __init__(self, curves: dict[str, Curve], observations: Sequence[Observation]):
    self.curves = curves
    states: dict[str, dict[int, int]] = {}
    self.rows, self.cols, self.vals = [], [], []
    for i, o in enumerate(observations):
      picked = np.unique(np.linspace(o.first, o.stop - 1, min(o.stop - o.first,
                                                               _SAMPLES_PER_WINDOW)).round())
      own = states.setdefault(o.curve, {})
      for s in picked.astype(int):
        self.rows.append(i)
        self.cols.append((o.curve, own.setdefault(int(s), len(own))))
        self.vals.append(1.0 / len(picked))
    self.states = {c: np.array(sorted(s, key=s.get)) for c, s in states.items()}
    offsets, total = {}, 0
    for c, s in self.states.items():
      offsets[c], total = total, total + len(s)
    from scipy import sparse
    cols = [offsets[c] + j for c, j in self.cols]
    self.average = sparse.csr_matrix((self.vals, (self.rows, cols)),
                                     shape=(len(observations), total))
    self.loss = np.array([o.loss for o in observations])
    self.is_eval = np.array([o.is_eval for o in observations], float)
    self.weight = np.array([o.weight for o in observations])

  def model(self, law: Law, p: dict) -> np.ndarray:
    values = [law.curve_loss(p, self.curves[c], s) for c, s in self.states.items()]
    loss = self.average @ np.concatenate(values)
    return np.where(self.is_eval > 0, p.get("delta", 0.0) + p.get("kappa", 1.0) * loss, loss)


@dataclasses.dataclass(frozen=True)
class Fit:
  """A fitted law: natural parameters `params` (with `delta` and `kappa`, the eval scale,
  when train and eval losses were fitted), their standard errors `se`, the weighted
  residual RMS `rmse` and the number of observations `points`; LRs in units of
  `reference_lr`."""
  law: Law
  params: dict
  se: dict
  reference_lr: float
  rmse: float
  points: int

  def loss(self, lr: Sequence[float], states: Sequence[int], eval_scale: bool = True):
    """L(n) at `states` of a lineage whose updates had LRs `lr` (absolute), on the eval
    losses' scale (delta + kappa L) unless `eval_scale` is False."""
    curve = Curve.of(lr, self.reference_lr)
    out = self.law.curve_loss(self.params, curve, np.asarray(states))
    if not eval_scale:
      return out
    return self.params.get("delta", 0.0) + self.params.get("kappa", 1.0) * out


def fit(law: Law, curves: dict[str, Curve], observations: Sequence[Observation],
        reference_lr: float) -> Fit:
  """Weighted least squares of `law` (and the eval scale when there are both kinds),
  every parameter at once from each of `_starts`, bounded; the best optimum."""
  from scipy.optimize import least_squares
  design = _Design(curves, observations)
  scale = EVAL_SCALE if design.is_eval.any() and (1 - design.is_eval).any() else ()
  names = law.names + scale
  lo, hi = law.bounds(float(design.loss.max()))
  lo = np.append(lo, [_BOUNDS[n][0] for n in scale])
  hi = np.append(hi, [_BOUNDS[n][1] for n in scale])

  def residual(theta):
    p = dict(law.to_natural(theta[:len(law.names)]), **dict(zip(scale, theta[len(law.names):])))
    r = (design.model(law, p) - design.loss) * design.weight
    return np.where(np.isfinite(r), r, 1e3)

  best = None
  for start in _starts(law, design, names):
    theta0 = np.clip(start, lo + 1e-9, hi - 1e-9)
    result = least_squares(residual, theta0, bounds=(lo, hi), x_scale="jac",
                           max_nfev=200 * len(names))
    if best is None or result.cost < best.cost:
      best = result
  return _fit_of(law, names, best, design, reference_lr)


def _starts(law: Law, design: _Design, names: Sequence[str]) -> list[np.ndarray]:
  """Starting points: the power part at rough values from the losses' range, times a
  grid of the annealing part's parameters (9 starts)."""
  floor = float(design.loss.min())
  base = {"L0": 0.8 * floor, "A": max(float(np.median(design.loss)) - 0.8 * floor, 1e-3),
          "alpha": 0.5}
  if law is MULTI_POWER:
    grid = [{"B": b, "C": c, "beta": 0.5, "gamma": 0.5} for b in (0.1, 0.5, 2.0)
            for c in (0.1, 1.0, 10.0)]
  else:
    grid = [{"C": c, "h": h} for c in (0.01, 0.1, 1.0) for h in (10.0, 100.0, 1000.0)]
  scale = [{"delta": 0.0, "kappa": 1.0}[n] for n in names[len(law.names):]]
  return [np.append(law.to_theta(base | g), scale) for g in grid]


def _fit_of(law, names, result, design, reference_lr) -> Fit:
  """The Fit of a least-squares `result`: parameters, standard errors by the delta method
  from cov = s^2 (J^T J)^-1 in the fit's coordinates."""
  theta = result.x
  params = dict(law.to_natural(theta[:len(law.names)]))
  params.update((n, float(v)) for n, v in zip(names[len(law.names):], theta[len(law.names):]))
  dof = max(len(design.loss) - len(names), 1)
  s2 = 2 * result.cost / dof
  jac = result.jac
  cov = np.linalg.pinv(jac.T @ jac) * s2
  sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
  se = {n: (params[n] * sd[i] if n in _LOG_SCALED else float(sd[i]))
        for i, n in enumerate(names)}
  rmse = math.sqrt(2 * result.cost / max(float(np.sum(design.weight ** 2)), 1e-12))
  return Fit(law, params, se, reference_lr, rmse, len(design.loss))
