"""A scaling fit from one run's decayed checkpoints (Hägele et al. 2024: cooldowns off one
run are enough): the eval loss at each budget as a power law of the compute behind it,

    L(C) = E + A · C^(-alpha),   C = the FLOPs of the checkpoint's lineage (`flops`),

fitted by least squares (scipy's curve_fit, E in [0, min L), A > 0, alpha in (0, 5]) with
standard errors from its covariance; `holdout` refits without the largest budget and
reports how far its prediction of that budget's loss lands from the measured one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np

from wsdjax.runtime.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Fit:
  """L(C) = E + A C^-alpha; `se`: standard errors (nan where the fit has no spare points)."""
  E: float
  A: float
  alpha: float
  se: dict
  points: int

  def predict(self, compute: float) -> float:
    return self.E + self.A * compute ** (-self.alpha)


def fit(compute: Sequence[float], loss: Sequence[float]) -> Fit:
  """The least-squares power law through (compute, loss), three points or more."""
  from scipy.optimize import OptimizeWarning, curve_fit
  c, y = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
  if len(c) < 3 or len(set(c.tolist())) != len(c):
    raise ConfigError("schedule.budgets", f"a scaling fit needs decayed checkpoints of 3 or "
                      f"more budgets, got {len(c)}", "add budgets (new, later ones may be "
                      "added to a run) and rerun to make their checkpoints")
  c0 = float(c.min())  # fit in units of the smallest compute: a well-scaled problem

  def law(x, e, a, alpha):
    return e + a * x ** (-alpha)

  lo = float(y.min())
  p0 = (0.5 * lo, max(float(y.max()) - 0.5 * lo, 1e-6), 0.3)
  with warnings.catch_warnings():  # three points leave no spare one for the covariance
    warnings.simplefilter("ignore", OptimizeWarning)
    params, cov = curve_fit(law, c / c0, y, p0=p0,
                            bounds=([0.0, 0.0, 1e-6], [lo, np.inf, 5.0]), maxfev=20000)
  e, a, alpha = (float(p) for p in params)
  cov = np.asarray(cov, np.float64) if len(c) > 3 else np.full((3, 3), np.nan)
  # A in FLOPs units: A = a c0^alpha; its error by the delta method.
  big_a = a * c0 ** alpha
  grad = np.array([0.0, c0 ** alpha, big_a * math.log(c0)])
  se = {"E": math.sqrt(cov[0, 0]) if cov[0, 0] >= 0 else math.nan,
        "alpha": math.sqrt(cov[2, 2]) if cov[2, 2] >= 0 else math.nan,
        "A": float(math.sqrt(grad @ cov @ grad)) if np.all(np.isfinite(cov)) else math.nan}
  return Fit(e, big_a, alpha, se, len(c))


def holdout(compute: Sequence[float], loss: Sequence[float]) -> dict | None:
  """Fit without the largest-compute point and predict it: {compute, predicted, measured,
  error}; None with fewer than four points (three are needed for the fit)."""
  order = np.argsort(compute)
  if len(order) < 4:
    return None
  keep, last = order[:-1], order[-1]
  f = fit([compute[i] for i in keep], [loss[i] for i in keep])
  predicted = f.predict(compute[last])
  return {"compute": float(compute[last]), "predicted": predicted,
          "measured": float(loss[last]), "error": predicted - float(loss[last])}


def report(label: str, compute: Sequence[float], loss: Sequence[float],
           predict_at: float | None = None) -> str:
  """The fit, a prediction (default: twice the largest compute) and the held-out check."""
  f = fit(compute, loss)
  target = predict_at or 2 * max(compute)
  lines = [f"{label}: L(C) = E + A C^-alpha over {f.points} budgets: E = {f.E:.4f} +- "
           f"{f.se['E']:.4f}, A = {f.A:.4g} +- {f.se['A']:.2g}, alpha = {f.alpha:.4f} +- "
           f"{f.se['alpha']:.4f}",
           f"{label}: predicted loss at {target:.3g} FLOPs: {f.predict(target):.4f}"]
  check = holdout(list(compute), list(loss))
  if check is None:
    lines.append(f"{label}: held-out check needs 4 or more budgets")
  else:
    lines.append(f"{label}: held out the largest budget ({check['compute']:.3g} FLOPs): "
                 f"predicted {check['predicted']:.4f}, measured {check['measured']:.4f}, "
                 f"error {check['error']:+.4f}")
  return "\n".join(lines)

