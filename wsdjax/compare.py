"""`python -m wsdjax.compare --config configs/compare_small.py --workdir W [--only wsd_s,...]
[--fit [--law multi_power|annealing]]`: several strategies on the same model, data, seed
and validation set, one run each in W/<strategy>, compared at equal compute:
W/results.csv, W/results.md and plots. A rerun resumes unfinished runs and reuses finished
ones. The library and the accounting: wsdjax/analysis/compare.py.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Compare config (configs/compare_*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the comparison: one run "
                               "directory per strategy, results and plots.")
_ONLY = flags.DEFINE_list("only", None, "Run only these strategies (comma-separated), e.g. "
                          "wsd_s or wsd,cyclic_cosine; results cover every finished run.")
_FIT = flags.DEFINE_bool("fit", False, "Also fit the loss law (--law) to each run with decay "
                         "branches and check it by leaving each decay out (beside the power "
                         "law L(C) = E + A C^-alpha per series): W/loss_law-<run>.png.")
_LAW = flags.DEFINE_enum("law", "multi_power", ["multi_power", "annealing"],
                         "The schedule-aware loss law of --fit (see python -m wsdjax.fit).")


def main(argv):
  cfg = cli.loaded_config(argv, _CONFIG, "configs/compare_small.py")
  cli.require_workdir(_WORKDIR.value)
  from wsdjax.analysis import compare
  compare.check(cfg)
  names = list(_ONLY.value or [])
  for name in names:
    if name not in compare.enabled(cfg):
      hint = (" (cosine runs need --config.compare.cosine=True)" if name == "cosine" else "")
      cli.fail(f"--only: {name!r} is not a strategy of this comparison{hint}; use some of "
               f"{', '.join(compare.enabled(cfg))}")
  from wsdjax.runtime import distributed
  distributed.initialize()
  rows = compare.compare(cfg, _WORKDIR.value, names or None)  # a Stop: cli.run reports it
  if _FIT.value:
    print(compare.fit_report(cfg, rows, _WORKDIR.value, _LAW.value), flush=True)


if __name__ == "__main__":
  cli.run(main)
