"""`python -m wsdjax.train --config configs/X.py --workdir DIR [--config.a.b=value ...]`

Parses flags and calls `wsdjax.training.trainer.train_and_evaluate`; rerunning the same command
resumes the run in DIR.
"""

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, config.")
# Multi-process without a cluster jax detects (else JAX_COORDINATOR_ADDRESS etc., or none).
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for jax.distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1.")


def main(argv):
  cli.loaded_config(argv, _CONFIG, "configs/default.py")
  cli.require_workdir(_WORKDIR.value)
  from wsdjax.runtime import distributed
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:  # incomplete multi-process settings
    cli.fail(str(e))
  from wsdjax.training import trainer  # after distributed init: importing jax state is fine, using it isn't
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)  # a Stop: cli.run reports it


if __name__ == "__main__":
  from wsdjax.runtime import distributed
  try:
    cli.run(main)
  except BaseException as e:  # a process failing alone must not hang a multi-process job
    distributed.exit_if_failed(e)
    raise
