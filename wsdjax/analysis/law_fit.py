"""A schedule-aware loss law fitted to one run (behind `python -m wsdjax.fit`): the fit, its
leave-one-decay-out check beside the power law's, predictions for schedules given as
config overrides, and the decay it recommends for a budget.

The fit (`fit_run`) takes every branch with an LR schedule (main and the decays; not
merges or EMA shadows): the train-loss windows after the warmup, weighted by the square
root of their updates, and the eval losses, weighted by the square root of the batches
they average, on their own scale (delta + kappa L). Predictions are eval losses.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Sequence

import ml_collections
import numpy as np

from wsdjax.analysis import loss_curves, loss_law, scaling
from wsdjax.analysis.loss_curves import RunCurves
from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule import builders
from wsdjax.schedule import plan as plan_lib

LAWS = loss_law.LAWS + ("power",)
FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 11))  # decays tried: 5% .. 50%


def observations(curves: RunCurves, exclude: Sequence[str] = ()):
  """({branch: loss_law.Curve}, [Observation]) of `curves`, without the `exclude`d
  branches' own losses; states before a lineage's warmup ends are left out."""
  ref = curves.reference_lr
  laws = {b: loss_law.Curve.of(line.lr, ref) for b, line in curves.lineages.items()}
  obs = []
  for branch, first, stop, loss in curves.train:
    if branch not in exclude and first >= max(laws[branch].warmup_end, 1):
      obs.append(loss_law.Observation(branch, first, stop, loss, False,
                                      math.sqrt(stop - first)))
  for branch, step, loss in curves.evals:
    if branch not in exclude and step > max(laws[branch].warmup_end, 1):
      obs.append(loss_law.Observation(branch, step, step + 1, loss, True,
                                      math.sqrt(curves.eval_batches)))
  return laws, obs


def fit_run(curves: RunCurves, law_name: str, exclude: Sequence[str] = ()) -> loss_law.Fit:
  """`law_name` fitted to the run (less the `exclude`d branches). ConfigError when the
  fitted branches hold no decay or too few points for the law's parameters."""
  law = loss_law.BY_NAME[law_name]
  laws, obs = observations(curves, exclude)
  fitted = {o.curve for o in obs}
  if not any(len(laws[b].changes()[0]) for b in fitted):
    raise ConfigError("--workdir", f"{curves.workdir} has no decay branch with logged "
                      f"losses{' besides ' + ', '.join(exclude) if exclude else ''}; the "
                      f"{law_name} law needs at least one decay to fit its annealing term",
                      "decay a saved main step first: python -m wsdjax.branch --workdir "
                      f"{curves.workdir} --from_step N")
  need = len(law.names) + 4
  if len(obs) < need:
    raise ConfigError("train.log_every", f"the run has {len(obs)} loss points "
                      f"after the warmup; the {law_name} law needs at least {need}",
                      "log more often (--config.train.log_every) or train longer")
  return loss_law.fit(law, laws, obs, curves.reference_lr)


# ---- the check: leave each decay out ----
def decays(curves: RunCurves) -> list[dict]:
  """The decayed checkpoints whose branch has an LR decay of its own (not a cosine run's
  only segment): the ones a leave-one-out check can hold out."""
  return [e for e in curves.decayed if curves.lineages[e["branch"]].start > 0]


def leave_one_out(curves: RunCurves, law_name: str) -> list[dict]:
  """Per decay branch: the law refitted without it predicts its final eval loss and its
  train curve; {branch, step, measured, predicted, error, relative, curve_rmse} (predicted
  None, and `note` why, when the rest of the run is too little to refit)."""
  out = []
  for entry in decays(curves):
    branch = entry["branch"]
    try:
      fit = fit_run(curves, law_name, exclude=(branch,))
    except ConfigError as e:
      out.append(_check_row(entry, None) | {"note": f"without it, {e.problem}"})
      continue
    line = curves.lineages[branch]
    predicted, anchor = final_loss(curves, fit, line.lr, exclude=(branch,))
    out.append(_check_row(entry, predicted) | {
        "unanchored": float(fit.loss(line.lr, [line.end])[0]),
        "anchor": anchor, "curve_rmse": _curve_rmse(curves, fit, branch)})
  return out


def anchor_state(curves: RunCurves, lr: np.ndarray, exclude: Sequence[str] = ()):
  """The latest evaluated state (branch, step, eval loss) past the warmup of the run whose
  lineage trained with the same LRs as the first `step` of `lr` (a decay's fork, or main
  further on); None when there is none."""
  best = None
  warm = loss_law.warmup_end(lr)
  for branch, step, loss in curves.evals:
    if (branch in exclude or step > len(lr) or step <= warm
        or (best is not None and step <= best[1])):
      continue
    own = curves.lineages[branch].lr[:step]
    if len(own) == step and np.allclose(own, lr[:step], rtol=1e-6, atol=0):
      best = (branch, step, loss)
  return best


def final_loss(curves: RunCurves, fit: loss_law.Fit, lr: np.ndarray,
               exclude: Sequence[str] = ()) -> tuple[float, str | None]:
  """The predicted eval loss after the updates `lr`, anchored at the latest measured state
  on its lineage (`anchor_state`): measured there plus the law's change since; the anchor
  as 'branch@step' (None: the law alone)."""
  law_end = float(fit.loss(lr, [len(lr)])[0])
  found = anchor_state(curves, lr, exclude)
  if found is None:
    return law_end, None
  branch, step, measured = found
  return measured + law_end - float(fit.loss(lr, [step])[0]), f"{branch}@{step}"


def eval_scatter(curves: RunCurves, fit: loss_law.Fit) -> float | None:
  """RMS of main's measured eval losses around the fitted law (past the warmup): the noise
  a held-out prediction cannot beat."""
  main = curves.lineages.get(plan_lib.MAIN)
  warm = 0 if main is None else loss_law.warmup_end(main.lr)
  found = [(s, v) for b, s, v in curves.evals if b == plan_lib.MAIN and s > max(warm, 1)]
  if len(found) < 2:
    return None
  steps, measured = zip(*found)
  return float(np.sqrt(np.mean(np.square(fit.loss(main.lr, steps) - np.array(measured)))))


def _check_row(entry: dict, predicted: float | None) -> dict:
  measured = float(entry["eval_loss"])
  error = None if predicted is None else predicted - measured
  return {"branch": entry["branch"], "step": int(entry["step"]), "measured": measured,
          "predicted": predicted, "error": error,
          "relative": None if error is None else error / measured}


def _curve_rmse(curves: RunCurves, fit: loss_law.Fit, branch: str) -> float | None:
  """RMS of predicted minus logged train-loss windows on `branch`'s own updates."""
  line = curves.lineages[branch]
  errors = [float(np.mean(fit.loss(line.lr, np.arange(a, b), eval_scale=False))) - loss
            for name, a, b, loss in curves.train if name == branch and a >= 1]
  return math.sqrt(float(np.mean(np.square(errors)))) if errors else None


def power_leave_one_out(curves: RunCurves) -> list[dict]:
  """The same check for L(C) = E + A C^-alpha through the other decayed checkpoints
  (`scaling.fit`, 3 or more needed: predicted None otherwise)."""
  points = decays(curves)
  out = []
  for entry in points:
    rest = [e for e in points if e is not entry]
    try:
      law = scaling.fit([e["flops"] for e in rest], [e["eval_loss"] for e in rest])
      predicted = float(law.predict(entry["flops"]))
    except ConfigError:
      predicted = None
    out.append(_check_row(entry, predicted))
  return out


# ---- predictions for schedules given as config overrides ----
@dataclasses.dataclass(frozen=True)
class Scenario:
  """A schedule to predict: `label` and its (schedule field, value) overrides."""
  label: str
  overrides: tuple[tuple[str, object], ...]


def parse_scenario(text: str) -> Scenario:
  """'field=value field=value' (fields of the schedule section, with or without the
  `schedule.` prefix; values Python literals, else strings) as a Scenario."""
  pairs = []
  for item in text.split():
    field, sep, raw = item.partition("=")
    field = field.removeprefix("schedule.")
    if not sep or not field or not raw:
      raise ConfigError("--predict", f"{item!r} is not field=value", "e.g. --predict "
                        "'schedule.budgets=(240,) schedule.decay_fraction=0.3'")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    pairs.append((field, tuple(value) if isinstance(value, list) else value))
  if not pairs:
    raise ConfigError("--predict", "empty", "e.g. --predict 'schedule.decay_fraction=0.3'")
  return Scenario(text.strip(), tuple(pairs))


def scenario_plan(curves: RunCurves, scenario: Scenario) -> plan_lib.Plan:
  """The plan of the run's schedule section with the scenario's overrides; ConfigError
  naming --predict when the library cannot build it."""
  section = ml_collections.ConfigDict(curves.config.schedule.to_dict())
  if "merge_window" in section:
    section.merge_window = 0  # merges set no LR: a cosine scenario of a run with merges
  try:
    for field, value in scenario.overrides:
      if field not in section:
        raise ConfigError(f"schedule.{field}", "unknown schedule field",
                          "use a field of the schedule section, e.g. decay_fraction")
      section[field] = value
    return plan_lib.make_plan(section)
  except ConfigError as e:
    raise ConfigError("--predict", f"{scenario.label!r}: {e.field}: {e.problem}", e.fix) \
        from None
  except (TypeError, ValueError) as e:
    raise ConfigError("--predict", f"{scenario.label!r}: {e}", "give values of the fields' "
                      "types (python -m wsdjax.lr draws a schedule)") from None


def predict(curves: RunCurves, fit: loss_law.Fit, scenario: Scenario) -> list[dict]:
  """The predicted final eval loss of each decayed checkpoint of the scenario's plan,
  anchored as `final_loss` does (and the measured one where the run has that branch with
  the same LRs), with its predicted curve."""
  rows = []
  for branch, line in loss_curves.plan_lineages(scenario_plan(curves, scenario)).items():
    if not line.decayed:
      continue
    predicted, anchor = final_loss(curves, fit, line.lr)
    warm = loss_law.warmup_end(line.lr)
    states = np.arange(max(1, line.start, warm + 1), line.end + 1)  # the branch, past warmup
    shift = predicted - float(fit.loss(line.lr, [line.end])[0])
    rows.append({"scenario": scenario.label, "branch": branch, "step": line.end,
                 "predicted": predicted, "anchor": anchor,
                 "measured": _measured(curves, line),
                 "curve": (states.tolist(), (fit.loss(line.lr, states) + shift).tolist())})
  return rows


def _measured(curves: RunCurves, line: loss_curves.Lineage) -> float | None:
  """The eval loss of the run's decayed checkpoint trained with exactly `line`'s LRs."""
  for e in curves.decayed:
    own = curves.lineages[e["branch"]]
    if own.end == line.end and np.allclose(own.lr, line.lr, rtol=1e-6, atol=0):
      return float(e["eval_loss"])
  return None


# ---- the decay to use for a budget ----
def decay_candidates(curves: RunCurves, budget: int):
  """(fraction, shape, decay steps, ScheduleSpec) of every WSD decay to `budget` the
  library builds: FRACTIONS x the decay shapes, and the run's own decay."""
  sched = curves.config.schedule
  whole_run = plan_lib.ScheduleSpec.from_config(sched)
  own_steps = int(sched.decay_steps) if sched.get("decay_steps") else round(
      sched.decay_fraction * budget)
  own = (own_steps / budget, whole_run.decay_shape or "linear", own_steps)
  tried = [own] + [(f, s, round(f * budget)) for s in builders.DECAY_SHAPES
                   for f in FRACTIONS]
  out = []
  for fraction, shape, steps in tried:
    if steps < 1 or any(c[1] == shape and c[2] == steps for c in out):
      continue
    spec = plan_lib.wsd_decay_schedule(whole_run, budget, steps, decay_shape=shape)
    try:
      spec.build()
    except ConfigError:
      continue  # e.g. an exponential decay to a minimum LR of 0, or no room for warmup
    out.append((fraction, shape, steps, spec))
  return out


def fitted_decay_steps(curves: RunCurves) -> tuple[int, int] | None:
  """The shortest and longest decay (in steps) among the run's decay branches."""
  lengths = [line.end - line.start for line in curves.lineages.values()
             if line.decayed and line.start > 0]
  return (min(lengths), max(lengths)) if lengths else None


def recommend(curves: RunCurves, fit: loss_law.Fit, budget: int) -> dict:
  """The decay (fraction, shape) of the lowest predicted final eval loss at `budget`
  (`final_loss`, as every prediction) among those as long as the run's decays (`best`;
  None if none is), the lowest of all (`best_any`: longer or shorter decays extrapolate),
  and the predicted gain of `best` over the run's configured decay (positive: lower)."""
  seen = fitted_decay_steps(curves)
  rows = []
  for fraction, shape, steps, spec in decay_candidates(curves, budget):
    seg = plan_lib.Segment("candidate", 0, budget, None, spec, True, None, None)
    predicted, anchor = final_loss(curves, fit, loss_curves.segment_lrs(seg))
    rows.append({"fraction": fraction, "shape": shape, "decay_steps": steps,
                 "predicted": predicted, "anchor": anchor,
                 "seen": seen is not None and seen[0] <= steps <= seen[1]})
  configured = rows[0]
  within = [r for r in rows if r["seen"]]
  best = min(within, key=lambda r: r["predicted"]) if within else None
  return {"budget": int(budget), "best": best, "configured": configured,
          "best_any": min(rows, key=lambda r: r["predicted"]),
          "gain": None if best is None else configured["predicted"] - best["predicted"],
          "candidates": rows, "fitted_decay_steps": seen,
          "main_saves": list(curves.main_saves)}
