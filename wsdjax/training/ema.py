"""EMA shadows of the params (`train.ema_decays`): running averages kept in the train state,
sharded like the params, saved and restored with it, evaluated at every fork point and
decayed checkpoint as `ema-<decay>@<step>`.

For decay d the shadow after update t of a lineage is the bias-corrected EMA
  e_t = e_{t-1} + w_t (p_t - e_{t-1}),   w_t = (1 - d) / (1 - d^t),
which equals sum_s d^(t-s) p_s / sum_s d^(t-s) over the updates s = 1..t: the initial
params get no weight (w_1 = 1, so e_1 = p_1) and a short run's shadow is not pulled
towards its random init. A branch inherits its parent's shadows and goes on averaging.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp

from wsdjax.training import hooks

PREFIX = "ema-"


def name(decay: float) -> str:
  """The branch-like name of a shadow: `ema-0.999`."""
  return f"{PREFIX}{float(decay):g}"


def decay_of(branch: str) -> float | None:
  """The decay an `ema-<decay>` name stands for; None for any other name."""
  m = re.fullmatch(re.escape(PREFIX) + r"([0-9.eE+-]+)", branch)
  try:
    return float(m.group(1)) if m else None
  except ValueError:
    return None


def update(shadows: tuple, params, updates_done: jax.Array, decays: tuple[float, ...]) -> tuple:
  """The shadows after an update: each moves by w_t towards `params`, t = `updates_done`
  (the lineage's updates including this one)."""
  t = updates_done.astype(jnp.float32)
  out = []
  for shadow, decay in zip(shadows, decays):
    d = jnp.float32(decay)
    w = (1 - d) / (1 - jnp.power(d, t))
    out.append(jax.tree.map(lambda e, p, w=w: e + (w * (p - e)).astype(e.dtype), shadow,
                            params))
  return tuple(out)


def problem(decays) -> str | None:
  """Why `train.ema_decays` is not a setting (None when it is): a tuple of distinct
  numbers in (0, 1)."""
  if not isinstance(decays, (tuple, list)):
    return f"must be a tuple of decays in (0, 1), got {decays!r}"
  for d in decays:
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not (
        math.isfinite(d) and 0 < d < 1):
      return f"each decay must be a number in (0, 1), got {d!r}"
  if len({name(d) for d in decays}) != len(decays):
    return f"repeats a decay: {tuple(decays)!r}"
  return None


def entry_losses(decays, shadows, eval_loss) -> dict[str, float]:
  """{`ema-<d>`: eval loss of that shadow} for a state's shadows; `eval_loss(params)`."""
  return {name(d): eval_loss(shadow) for d, shadow in zip(decays, shadows)}


def end_hook(decays):
  """An "end" hook (`hooks`): the eval losses of the end state's shadows, in its metric
  row as `eval_loss_ema-<d>` and in its manifest entry as `ema_eval_loss`."""
  def evaluate_shadows(ctx: hooks.Context) -> hooks.Evaluation:
    shadows = entry_losses(decays, ctx.live.state.ema, ctx.eval_loss)
    return hooks.Evaluation(metrics={f"eval_loss_{k}": v for k, v in shadows.items()},
                            entry={"ema_eval_loss": shadows} if shadows else {})
  return evaluate_shadows


def shadow_entries(manifest: list[dict]) -> list[dict]:
  """Manifest-like entries `ema-<d>@<step>`, one per shadow evaluated with a saved state
  (its `ema_eval_loss`): the source state's entry with branch `ema-<d>`, its eval loss,
  `source` {branch, step} and `ema_decay`. Where two saves share a step, the decayed
  checkpoint's shadow is the one listed."""
  out: dict[tuple[str, int], dict] = {}
  for e in sorted(manifest, key=lambda e: bool(e.get("decayed"))):  # decayed last: wins
    for shadow, loss in (e.get("ema_eval_loss") or {}).items():
      entry = {k: v for k, v in e.items() if k not in ("ema_eval_loss", "config_changes")}
      entry.update(branch=shadow, parent=e["branch"], fork_step=e["step"], eval_loss=loss,
                   decayed=False, fork_point=False, gap=None, ema_decay=decay_of(shadow),
                   source={"branch": e["branch"], "step": e["step"]})
      out[(shadow, e["step"])] = entry
  return [out[k] for k in sorted(out)]
