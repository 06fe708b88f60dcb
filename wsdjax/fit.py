"""`python -m wsdjax.fit --workdir W [--predict_flops C]`: fit L(C) = E + A·C^-alpha to the
decayed checkpoints of the run in W (3 budgets or more), print E, A, alpha with standard
errors, the loss predicted at a larger budget, and the held-out check (the largest budget
predicted from the others). See wsdjax/analysis/scaling.py.
"""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_PREDICT = flags.DEFINE_float("predict_flops", None, "Compute to predict the loss at "
                              "(default: twice the largest budget's).")


def main(argv):
  cli.run_workdir(argv, _WORKDIR.value)
  if _PREDICT.value is not None and not _PREDICT.value > 0:
    cli.fail(f"--predict_flops: must be > 0, got {_PREDICT.value}; e.g. --predict_flops 1e18")
  from wsdjax.analysis import scaling, tree_listing
  compute, loss = scaling.run_points(tree_listing.load_entries(_WORKDIR.value))
  print(scaling.report("run", compute, loss, _PREDICT.value))


if __name__ == "__main__":
  cli.run(main)
