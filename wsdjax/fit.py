"""`python -m wsdjax.fit --workdir W [--law multi_power|annealing|power] [--predict 'field=v
...']... [--budget N] [--plot F] [--json F]`: fit a schedule-aware loss law to the run's
curves (main and every decay branch, with the LR the plan gave each step), check it by
leaving each decay out beside the power law L(C) = E + A C^-alpha, predict the final eval
loss of schedules given as config overrides, and recommend a decay for a budget. See
wsdjax/analysis/law_fit.py; `--law power` is the fit through the decayed checkpoints alone
(`--predict_flops C`: its prediction at compute C).
"""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_LAW = flags.DEFINE_enum("law", "multi_power", ["multi_power", "annealing", "power"],
                         "multi_power (Luo et al. 2025), annealing (Tissue et al. 2024), or "
                         "power: L(C) = E + A C^-alpha through the decayed checkpoints.")
_PREDICT = flags.DEFINE_multi_string(
    "predict", [], "A schedule to predict, as overrides of the run's schedule section, e.g. "
    "'schedule.budgets=(240,) schedule.decay_shape=1-sqrt' (repeat the flag for more).")
_BUDGET = flags.DEFINE_integer("budget", None, "Budget (steps) to recommend a decay for "
                               "(default: the run's largest).")
_PLOT = flags.DEFINE_string("plot", None, "Write the measured and predicted curves to this PNG.")
_JSON = flags.DEFINE_string("json", None, "Write the parameters, predictions and the "
                            "leave-one-out check to this JSON file.")
_PREDICT_FLOPS = flags.DEFINE_float("predict_flops", None, "--law power: compute to predict "
                                    "the loss at (default: twice the largest budget's).")


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value)
  if _PREDICT_FLOPS.value is not None and not _PREDICT_FLOPS.value > 0:
    cli.fail(f"--predict_flops: must be > 0, got {_PREDICT_FLOPS.value}; e.g. "
             "--predict_flops 1e18")
  if _BUDGET.value is not None and _BUDGET.value <= 0:
    cli.fail(f"--budget: must be > 0, got {_BUDGET.value}; e.g. --budget 1000")
  if _PLOT.value and _LAW.value == "power":
    cli.fail("--plot: draws a schedule-aware law's curves, which --law power has not; "
             "use --law multi_power (or annealing)")
  from wsdjax.runtime import outputs
  for flag, path in (("--plot", _PLOT.value), ("--json", _JSON.value)):
    outputs.check_file(flag, path)
  from wsdjax.analysis import law_report
  result = law_report.analyse(_WORKDIR.value, _LAW.value, _PREDICT.value, _BUDGET.value,
                              _PREDICT_FLOPS.value)
  print(law_report.format_report(result), flush=True)
  if _JSON.value:
    outputs.write_json("--json", _JSON.value, law_report.to_json(result))
    print(f"wrote {_JSON.value}")
  if _PLOT.value:
    from wsdjax.analysis import plots
    with outputs.writing("--plot", _PLOT.value):
      plots.plot_law(result, _PLOT.value)
    print(f"wrote {_PLOT.value}")


if __name__ == "__main__":
  cli.run(main)
