"""Merge weights: how `merge-B` averages main's saves in a window ending at B. The one owner
of their names (`NAMES`), the alias `exp`, the check (`resolve`) and the weights
(`weights`); the plan, the trainer's merges and `python -m wsdjax.merge` ask it.

  uniform   the plain mean (PMA, Li et al. 2025)
  <shape>   a decay shape of `builders.DECAY_SHAPES`: WSM's weights (Tian et al. 2025),
            whose average stands in for a decay of that shape over the window
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from wsdjax.runtime.errors import ConfigError, require
from wsdjax.schedule.builders import DECAY_SHAPES, Phase, phase_lr

NAMES = ("uniform",) + DECAY_SHAPES
ALIASES = {"exp": "exponential"}


def resolve(name: str, field: str) -> str:
  """The weights `name` stands for (an alias resolved); ConfigError naming `field` if it is
  none of `NAMES`."""
  resolved = ALIASES.get(name, name)
  if resolved not in NAMES:
    raise ConfigError(field, f"unknown weights {name!r}",
                      f"use one of {', '.join(NAMES)} (or {', '.join(ALIASES)})")
  return resolved


def weights(name: str, offsets: Sequence[int], window: int) -> list[float]:
  """Weights c_j of the checkpoints at `offsets` (steps after the window's start, ascending,
  the last = `window`) whose average stands in for a decay of shape `name` over the window.

  Averaging Σ c_j θ_j after constant-LR updates scales update k by the tail sum
  Σ_{s_j > k} c_j; matching it to the decay's factor f (1 at the window's start, 0 at its
  end) gives c_j = f(x_{j-1}) - f(x_j), x_j = offsets[j] / window, x_0 = 0, f(1) := 0
  (WSM). 'uniform' is the plain mean (PMA). Sum: 1.
  """
  shape = resolve(name, "--weights")
  require(len(offsets) > 0 and list(offsets) == sorted(set(offsets)) and offsets[0] > 0
          and offsets[-1] == window, "--window", f"checkpoint offsets {list(offsets)} do not "
          f"end the window of {window} steps", "merge checkpoints inside the window")
  if shape == "uniform":
    return [1.0 / len(offsets)] * len(offsets)
  end = 0.01 if shape == "exponential" else 0.0  # exponential cannot reach 0
  factor = Phase("merge", 0, window, 1.0, end, shape)
  f = [float(x) for x in phase_lr(factor, jnp.asarray([0, *offsets[:-1]], jnp.int32))]
  return [a - b for a, b in zip(f, f[1:])] + [f[-1]]
