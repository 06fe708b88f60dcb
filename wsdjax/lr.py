"""`python -m wsdjax.lr --config C [--plot lr.png] [--steps N]`: the phase table of a config's
LR schedule (name, [start, end), LR at both ends, the decayed checkpoints' steps) and, with
--plot, its curve with the phases shaded (`wsdjax.analysis.plots.plot_schedule`). Bad input: one
line `wsdjax: <field>: ...` on stderr, exit 2. Importing it defines no global flags.
"""

from __future__ import annotations

import sys
from typing import Sequence

from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule import builders as schedules
from wsdjax.schedule import spec as spec_lib


def main(argv: Sequence[str]) -> int:
  """Print the phase table of `--config`'s schedule section; draw it with `--plot`.

  Returns the exit status: 0, or 2 after a one-line `wsdjax: <field>: ...` on stderr.
  """
  from wsdjax.runtime import cli  # local: importing cli defines its global --debug flag
  from wsdjax.runtime import outputs
  fv = _flags(argv)
  if any(a.split("=")[0] in cli.HELP_FLAGS for a in argv[1:]):
    print(cli.command_help(__doc__, [fv[name] for name in fv], debug=False))
    return 0
  try:
    cfg, plot_path, steps = _parse(fv, argv)
    spec = spec_lib.check(cfg)
    print(schedules.format_phases(spec.build().phases, spec.checkpoint_steps()))
    if plot_path:
      from wsdjax.analysis import plots  # local: matplotlib only for --plot
      with outputs.writing("--plot", plot_path):
        plots.plot_schedule(cfg, plot_path, steps)
      print(f"wrote {plot_path}")
  except ValueError as e:  # a bad flag, config or schedule field (ConfigError)
    cli.print_error(str(e))
    return cli.EXIT_BAD_INPUT
  except outputs.OutputFault as e:  # the plot's write failed: a full disk
    cli.print_error(str(e))
    return cli.EXIT_FAULT
  return 0


def _flags(argv: Sequence[str]):
  """The command's flags, in a FlagValues of their own (no global flags)."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()  # private: importing this module defines no global flags
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                  flag_values=fv, sys_argv=list(argv))
  flags.DEFINE_string("plot", None, "Write the LR plot to this PNG path.", flag_values=fv)
  flags.DEFINE_integer("steps", None, "Steps to plot (default: last checkpoint + 10%).",
                       flag_values=fv)
  return fv


def _parse(fv, argv: Sequence[str]):
  """(schedule section, --plot, --steps) from the command line; ValueError if bad."""
  from absl import flags
  from wsdjax.runtime import outputs
  try:
    fv(list(argv))
    config = fv.config
    cfg = None if config is None else config.schedule if "schedule" in config else config
  except flags.Error as e:  # a bad flag or override
    raise ValueError(str(e).splitlines()[0]) from None
  except Exception as e:  # noqa: BLE001 - a config file that does not load
    raise ValueError(f"config: cannot load it: {e}; check the --config path") from None
  if cfg is None:
    raise ValueError("config: missing; pass --config configs/<name>.py")
  outputs.check_file("--plot", fv.plot)
  if fv.steps is not None and fv.steps <= 0:
    raise ConfigError("steps", f"must be > 0, got {fv.steps}", "e.g. --steps 1000")
  return cfg, fv.plot, fv.steps


if __name__ == "__main__":
  sys.exit(main(sys.argv))
