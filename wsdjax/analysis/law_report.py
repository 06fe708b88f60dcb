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


def analyse(workdir, law: str, scenarios: Sequence[str] = (), budget: int | None = None,
            predict_flops: float | None = None) -> dict:
  """Everything the report shows, for `law` in law_fit.LAWS. The curves of the fit and of
  the predictions ride along under "_curves" (left out of the JSON)."""
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
  return {
      "workdir": str(workdir), "law": law, "params": fit.params, "se": fit.se,
      "reference_lr": fit.reference_lr, "rmse": fit.rmse, "points": fit.points,
      "data": _data_summary(curves),
      "leave_one_out": law_fit.leave_one_out(curves, law),
      "power_leave_one_out": law_fit.power_leave_one_out(curves),
      "predictions": [{k: v for k, v in r.items() if k != "curve"} for r in predictions],
      "recommendation": _without_candidates(law_fit.recommend(curves, fit, target)),
      "_curves": {"run": curves, "fit": fit, "predictions": predictions},
  }


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
  power = {r["branch"]: r for r in result.get("power_leave_one_out", rows)}
  head = (f"leave-one-decay-out (final eval loss; error = predicted - measured):\n"
          f"{'branch':>12} {'step':>6} {'measured':>9} | {law + ' predicted':>22} "
          f"{'error':>8} {'rel':>7} {'curve RMS':>9} | {'power predicted':>15} {'error':>8} "
          f"{'rel':>7}")
  lines = [head]
  for r in rows:
    p = power.get(r["branch"], {})
    own = (f"{_num(r['predicted']):>22} {_signed(r['error']):>8} {_pct(r['relative']):>7} "
           f"{_num(r.get('curve_rmse')):>9}") if law != "power" else f"{'':>49}"
    lines.append(f"{r['branch']:>12} {r['step']:>6} {r['measured']:>9.4f} | {own} | "
                 f"{_num(p.get('predicted')):>15} {_signed(p.get('error')):>8} "
                 f"{_pct(p.get('relative')):>7}")
  lines.append(_mean_line(law, rows, result.get("power_leave_one_out", rows)))
  if law != "power" and any(r.get("anchor") for r in rows):
    lines.append("  (each prediction starts from the measured eval loss at its fork, then "
                 "adds the law's change along the decay)")
  return lines


def mean_abs_relative(rows: Sequence[dict]) -> float | None:
  rel = [abs(r["relative"]) for r in rows if r.get("relative") is not None]
  return float(np.mean(rel)) if rel else None


def _mean_line(law: str, rows, power_rows) -> str:
  parts = [f"{name} {_pct(mean_abs_relative(rs))} (max {_pct(_max_rel(rs))})"
           for name, rs in ((law, rows), ("power", power_rows)) if name == law or law != "power"]
  return "  mean |relative error|: " + ", ".join(parts)


def _max_rel(rows) -> float | None:
  rel = [abs(r["relative"]) for r in rows if r.get("relative") is not None]
  return max(rel) if rel else None


def _signed(v) -> str:
  return "" if v is None else f"{v:+.4f}"


def _pct(v) -> str:
  return "" if v is None else f"{100 * v:+.2f}%"


def prediction_table(predictions: Sequence[dict]) -> list[str]:
  lines = ["predictions (final eval loss of each decayed checkpoint):",
           f"{'schedule overrides':>40} {'checkpoint':>12} {'step':>6} {'predicted':>9} "
           f"{'measured':>9}"]
  for r in predictions:
    lines.append(f"{r['scenario'][-40:]:>40} {r['branch']:>12} {r['step']:>6} "
                 f"{r['predicted']:>9.4f} {_num(r['measured']) if r['measured'] else '':>9}")
  return lines


def recommendation_lines(result: dict) -> list[str]:
  rec = result["recommendation"]
  best, own = rec["best"], rec["configured"]
  lines = [f"recommended decay for budget {rec['budget']} (of {rec['candidates']} WSD decays "
           f"tried: fractions {law_fit.FRACTIONS[0]}-{law_fit.FRACTIONS[-1]} x shapes): "
           f"{best['decay_steps']} steps ({best['fraction']:.0%}), {best['shape']}: predicted "
           f"{best['predicted']:.4f}",
           f"  configured: {own['decay_steps']} steps ({own['fraction']:.0%}), {own['shape']}: "
           f"predicted {own['predicted']:.4f}; predicted gain {rec['gain']:+.4f}",
           f"  (the fit saw decay fractions {', '.join(map(str, rec['fitted_fractions']))}: "
           "others are extrapolations)",
           "  draw it:  python -m wsdjax.lr --config configs/from_run.py:"
           f"{result['workdir']} --config.schedule.name=wsd "
           f"--config.schedule.budgets='({rec['budget']},)' "
           f"--config.schedule.decay_fraction={best['fraction']} "
           f"--config.schedule.decay_shape={best['shape']} --plot decay.png",
           f"  run it:   python -m wsdjax.branch --workdir {result['workdir']} --from_step "
           f"{rec['budget'] - best['decay_steps']} --decay_steps {best['decay_steps']} "
           f"--decay_shape {best['shape']}  (main must be saved at that step)"]
  return lines
