"""`python -m wsdjax.train --config configs/X.py --workdir DIR [--config.a.b=value ...]`

Parses flags and calls `wsdjax.trainer.train_and_evaluate`; rerunning the same command
resumes the run in DIR.
"""

from absl import flags
from ml_collections import config_flags

from wsdjax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, config.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"arguments: unexpected {' '.join(argv[1:])!r}; pass options as --flag=value")
  if _CONFIG.value is None:
    cli.fail("--config: missing; pass --config configs/default.py (or another config file)")
  if not _WORKDIR.value:
    cli.fail("--workdir: missing; pass --workdir DIR (created if absent, resumed if present)")
  from wsdjax import distributed
  distributed.initialize()
  from wsdjax import trainer  # after distributed init: importing jax state is fine, using it isn't
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except trainer.Stop as stop:
    print(f"wsdjax: {stop}", flush=True)


if __name__ == "__main__":
  from wsdjax import checkpoint, config, data, trainer
  cli.run(main, {config.ConfigError: cli.EXIT_BAD_INPUT,
                 data.DataConfigError: cli.EXIT_BAD_INPUT,
                 checkpoint.CheckpointError: cli.EXIT_BAD_INPUT,
                 trainer.NonFiniteLoss: cli.EXIT_FAULT})
