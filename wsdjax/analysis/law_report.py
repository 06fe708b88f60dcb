"""What `python -m wsdjax.fit` reports of a run: a loss law's fit, its leave-one-decay-out
check beside the power law's, predictions and the recommended decay (`analyse`, a
JSON-able dict), as console tables (`format_report`) and a figure (`plots.plot_law`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from wsdjax.analysis import law_fit, loss_curves, scaling
from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule.builders import DECAY_SHAPES


def analyse(workdir, law: str, scenarios: Sequence[str] = (), budget: int | None = None,
            predict_flops: float | None = None, recommend: bool = True) -> dict:
  """Everything the report shows, for `law` in law_fit.LAWS (the recommended decay only
  with `recommend`). The curves of the fit and of the predictions ride along under
  "_curves" (left out of the JSON)."""
  curves = loss_curves.load(workdir)
  if law == "power":
    return _analyse_power(curves, scenarios, budget, predict_flops)
  if predict_flops is not None:
    raise ConfigError("--predict_flops", f"only the power law predicts from compute alone, "
                      f"not {law}", "pass --law power, or give a schedule: --predict "
                      "'schedule.budgets=(N,)'")
  fit = law_fit.fit_run(curves, law)
  parsed = [law_fit.parse_scenario(s) for s in scenarios]
  predictions = [row for s in parsed for row in law_fit.predict(curves, fit, s)]
  target = int(budget or max(curves.config.schedule.budgets))
  result = {
      "workdir": str(workdir), "law": law, "params": fit.params, "se": fit.se,
      "reference_lr": fit.reference_lr, "rmse": fit.rmse, "points": fit.points,
      "data": _data_summary(curves),
      "leave_one_out": law_fit.leave_one_out(curves, law),
      "eval_scatter": law_fit.eval_scatter(curves, fit),
      "power_leave_one_out": law_fit.power_leave_one_out(curves),
      "predictions": [{k: v for k, v in r.items() if k != "curve"} for r in predictions],
      "_curves": {"run": curves, "fit": fit, "predictions": predictions},
  }
  if recommend:
    result["recommendation"] = _without_candidates(law_fit.recommend(curves, fit, target))
  return result


def _analyse_power(curves, scenarios, budget, predict_flops) -> dict:
  if scenarios or budget:
    flag = "--predict" if scenarios else "--budget"
    raise ConfigError(flag, "the power law knows compute, not schedules", "use --law "
                      "multi_power (or annealing) to predict a schedule or recommend a decay")
  points = law_fit.decays(curves) or curves.decayed
  compute = [float(e["flops"]) for e in points]
  fit = scaling.fit(compute, [float(e["eval_loss"]) for e in points])
  target = predict_flops or 2 * max(compute)
  return {"workdir": curves.workdir, "law": "power",
          "params": {"E": fit.E, "A": fit.A, "alpha": fit.alpha}, "se": fit.se,
          "points": fit.points, "data": _data_summary(curves),
          "leave_one_out": law_fit.power_leave_one_out(curves),
          "power_prediction": {"flops": target, "predicted": fit.predict(target)}}


def _without_candidates(rec: dict) -> dict:
  return {k: v for k, v in rec.items() if k != "candidates"} | {
      "candidates": len(rec["candidates"])}


def _data_summary(curves) -> dict:
  return {"train_windows": len(curves.train), "eval_losses": len(curves.evals),
          "branches": sorted(curves.lineages), "eval_batches": curves.eval_batches}


def to_json(result: dict) -> dict:
  return {k: v for k, v in result.items() if not k.startswith("_")}


# ---- console ----
def format_report(result: dict) -> str:
  """The fit's parameters, the leave-one-out table, the predictions, the recommendation."""
  lines = _param_lines(result)
  lines += [""] + loo_table(result)
  if result.get("power_prediction"):
    p = result["power_prediction"]
    lines += ["", f"predicted eval loss at {p['flops']:.3g} FLOPs: {p['predicted']:.4f}"]
  if result.get("predictions"):
    lines += [""] + prediction_table(result["predictions"])
  if result.get("recommendation"):
    lines += [""] + recommendation_lines(result)
  return "\n".join(lines)


def _param_lines(result: dict) -> list[str]:
  d = result["data"]
  law = result["law"]
  if law == "power":
    head = (f"power law L(C) = E + A C^-alpha through {result['points']} decayed checkpoints "
            f"of {result['workdir']}")
  else:
    head = (f"{law} law fitted to {result['workdir']}: {d['train_windows']} train-loss "
            f"windows (weight sqrt(steps)) and {d['eval_losses']} eval losses (weight "
            f"sqrt({d['eval_batches']} batches)) on {len(d['branches'])} branches; LRs in "
            f"units of {result['reference_lr']:.3g}; residual RMS {result['rmse']:.4f}")
  params = ", ".join(f"{k} = {_num(v)} +- {_num(result['se'].get(k))}"
                     for k, v in result["params"].items())
  return [head, "  " + params]


def _num(v) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "nan"
  return f"{v:.4g}"


def loo_table(result: dict) -> list[str]:
  """Leave each decay out, refit, predict its final eval loss: the law beside the power
  law (which needs 3 other decayed checkpoints)."""
  law, rows = result["law"], result["leave_one_out"]
  if not rows:
    return ["leave-one-decay-out: the run has no decay branch to hold out"]
  laws = [(law, rows)] + ([("power", result["power_leave_one_out"])] if law != "power" else [])
  by_law = [(name, {r["branch"]: r for r in rs}) for name, rs in laws]
  head = f"{'branch':>12} {'step':>6} {'measured':>9}"
  for name, _ in by_law:
    head += f" | {name + ' predicted':>21} {'error':>8} {'rel':>7}"
  head += f" | {'curve RMS':>9}" if law != "power" else ""
  lines = ["leave-one-decay-out (final eval loss; error = predicted - measured):", head]
  for r in rows:
    line = f"{r['branch']:>12} {r['step']:>6} {r['measured']:>9.4f}"
    for _, found in by_law:
      p = found.get(r["branch"], {})
      line += (f" | {_fixed(p.get('predicted')):>21} {_signed(p.get('error')):>8} "
               f"{_pct(p.get('relative')):>7}")
    lines.append(line + (f" | {_fixed(r.get('curve_rmse')):>9}" if law != "power" else "")
                 + (f"  ({r['note']})" if r.get("note") else ""))
  lines.append("  mean |relative error|: " + ", ".join(
      f"{name} {_abs_pct(mean_abs_relative(rs))} (max {_abs_pct(_max_rel(rs))})"
      for name, rs in laws))
  if law != "power" and any(r.get("anchor") for r in rows):
    lines.append("  (each prediction starts from the measured eval loss at its fork, then "
                 "adds the law's change along the decay)")
  if result.get("eval_scatter") is not None:
    lines.append(f"  main's eval losses scatter {result['eval_scatter']:.4f} (RMS) around the "
                 "fitted law: errors of that size are within the measurements' own noise")
  return lines


def _fixed(v) -> str:
  return "" if v is None else f"{v:.4f}"


def _abs_relative(rows: Sequence[dict]) -> list[float]:
  """|relative error| of the rows that have a prediction."""
  return [abs(r["relative"]) for r in rows if r.get("relative") is not None]


def mean_abs_relative(rows: Sequence[dict]) -> float | None:
  rel = _abs_relative(rows)
  return float(np.mean(rel)) if rel else None


def _max_rel(rows) -> float | None:
  return max(_abs_relative(rows), default=None)


def _signed(v) -> str:
  return "" if v is None else f"{v:+.4f}"


def _abs_pct(v) -> str:
  return "n/a" if v is None else f"{100 * v:.2f}%"


def _pct(v) -> str:
  return "" if v is None else f"{100 * v:+.2f}%"


def prediction_table(predictions: Sequence[dict]) -> list[str]:
  lines = ["predictions (final eval loss of each decayed checkpoint):",
           f"{'schedule overrides':>40} {'checkpoint':>12} {'step':>6} {'predicted':>9} "
           f"{'measured':>9}"]
  for r in predictions:
    lines.append(f"{r['scenario'][-40:]:>40} {r['branch']:>12} {r['step']:>6} "
                 f"{r['predicted']:>9.4f} {_fixed(r['measured']):>9}")
  return lines


def recommendation_lines(result: dict) -> list[str]:
  """The recommended decay (among the lengths the fit saw), the best of all when it lies
  beyond them, and the commands that draw and run it."""
  rec = result["recommendation"]
  best, own, any_best = rec["best"], rec["configured"], rec["best_any"]
  lo, hi = rec["fitted_decay_steps"] or (0, 0)
  lines = [f"recommended decay for budget {rec['budget']} (WSD decays of "
           f"{law_fit.FRACTIONS[0]:.0%}-{law_fit.FRACTIONS[-1]:.0%} x {len(DECAY_SHAPES)} "
           f"shapes, as long as the run's decays: {lo}-{hi} steps):"]
  if best is None:
    lines.append("  none of them is as long as the run's decays")
  else:
    lines += [f"  {_decay(best)}: predicted {best['predicted']:.4f}",
              f"  configured {_decay(own)}: predicted {own['predicted']:.4f}; predicted gain "
              f"{rec['gain']:+.4f}"]
  if any_best is not best:
    lines.append(f"  beyond the decays the fit saw (an extrapolation): {_decay(any_best)}: "
                 f"predicted {any_best['predicted']:.4f}; run one that long and refit to "
                 "check it")
  pick = best or any_best
  lines += ["  draw it:  python -m wsdjax.lr --config configs/from_run.py:"
            f"{result['workdir']} --config.schedule.name=wsd "
            f"--config.schedule.budgets='({rec['budget']},)' "
            f"--config.schedule.decay_steps={pick['decay_steps']} "
            f"--config.schedule.decay_shape={pick['shape']} --plot decay.png",
            _run_it(result["workdir"], rec["budget"] - pick["decay_steps"], pick,
                    rec.get("main_saves", []))]
  return lines


def _run_it(workdir, fork: int, pick: dict, saves: Sequence[int]) -> str:
  """The `wsdjax.branch` line of a decay from main@fork, or, when main is not saved
  there, the saved steps nearest to it."""
  if fork in saves:
    return (f"  run it:   python -m wsdjax.branch --workdir {workdir} --from_step {fork} "
            f"--decay_steps {pick['decay_steps']} --decay_shape {pick['shape']}")
  from wsdjax import checkpoint as ckpt
  near = ckpt.nearest_steps(list(saves), fork)
  return (f"  run it:   main is not saved at step {fork}"
          + (f" (saved nearby: {', '.join(map(str, near))})" if near else "")
          + ": decay from a saved step, or plan this decay in a run")


def _decay(row: dict) -> str:
  return f"{row['decay_steps']} steps ({row['fraction']:.0%}), {row['shape']}"
