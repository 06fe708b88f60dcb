"""`python -m wsdjax.lr --config C [--plot lr.png] [--steps N]`: the phase table of a config's
LR schedule (name, [start, end), LR at both ends, the decayed checkpoints' steps) and, with
--plot, its curve with the phases shaded (`wsdjax.analysis.plots.plot_schedule`). Bad input: one
line `wsdjax: <field>: ...` on stderr, exit 2.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_PLOT = flags.DEFINE_string("plot", None, "Write the LR plot to this PNG path.")
_STEPS = flags.DEFINE_integer("steps", None, "Steps to plot (default: last checkpoint + 10%).")


def main(argv):
  config = cli.loaded_config(argv, _CONFIG, "configs/tiny.py")
  cfg = config.schedule if "schedule" in config else config
  from wsdjax.runtime import outputs
  outputs.check_file("--plot", _PLOT.value)
  if _STEPS.value is not None and _STEPS.value <= 0:
    cli.fail(f"--steps: must be > 0, got {_STEPS.value}; e.g. --steps 1000")
  from wsdjax.schedule import builders as schedules
  from wsdjax.schedule import spec as spec_lib
  spec = spec_lib.check(cfg)  # ConfigError naming schedule.<field>: cli.run's one line
  print(schedules.format_phases(spec.build().phases, spec.checkpoint_steps()))
  if _PLOT.value:
    from wsdjax.analysis import plots  # matplotlib only for --plot
    with outputs.writing("--plot", _PLOT.value):
      plots.plot_schedule(cfg, _PLOT.value, _STEPS.value)
    print(f"wrote {_PLOT.value}")


if __name__ == "__main__":
  cli.run(main)
