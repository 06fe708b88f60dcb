"""`python -m wsdjax.river_valley --config configs/river_valley.py --workdir W [--plot_only]`

Trains (or resumes) the run of the river-valley picture of Wen et al. (2024) on the
synthetic bigram task, then writes W/river_valley.{csv,md,png}: per decay branch, the main
branch's loss at the fork, the decayed loss, their gap (the hill) and each one's distance
to the chain's entropy rate. `--plot_only` skips training. The library:
wsdjax/analysis/river_valley.py.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file "
                                          "(configs/river_valley.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created or resumed).")
_PLOT_ONLY = flags.DEFINE_bool("plot_only", False, "Do not train; report what W holds.")


def main(argv):
  cfg = cli.loaded_config(argv, _CONFIG, "configs/river_valley.py")
  cli.require_workdir(_WORKDIR.value)
  if cfg.data.source != "bigram":
    cli.fail(f"data.source: is {cfg.data.source!r}; the river valley needs the bigram task's "
             f"exact optimum; use --config.data.source=bigram")
  from wsdjax.analysis import river_valley
  if not _PLOT_ONLY.value:
    from wsdjax.training import trainer
    trainer.train_and_evaluate(cfg, _WORKDIR.value)
  river_valley.report(cfg, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
