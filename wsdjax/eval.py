"""`python -m wsdjax.eval --workdir W [--branch B] [--step S] [--config.data.X=V ...]
[--json F]`: evaluate saved states of a run (default: every decayed checkpoint; --branch B
alone: its latest save; --step S alone: main@S) on the run's validation batches, or, with
`--config.data.*` overrides of the run's stored config, on the validation split of that
data (e.g. `--config.data.source=text --config.data.path=held_out.txt`). Prints the data,
then per state: branch@step, tokens, mean loss, perplexity, bits per byte ('-' for bigram
runs). `--json F` writes the same as a list of records. `--config.mesh.*` may change the
mesh to this host's devices. See wsdjax/analysis/evaluation.py for the batches and the reduction.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from wsdjax import config as config_lib
from wsdjax.runtime import cli
from wsdjax.runtime import outputs

_USAGE = "usage: --workdir W [--branch B] [--step S] [--config.data.X=V ...] [--json F]"
_ONLY_DATA = ("eval takes only --config.data.<field> (and --config.mesh.<field>) overrides; "
              "the model and its training are the run's")

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_BRANCH = flags.DEFINE_string("branch", None, "Branch to evaluate (default: every decayed "
                              "checkpoint).")
_STEP = flags.DEFINE_integer("step", None, "Saved step of --branch (default: latest).")
_JSON = flags.DEFINE_string("json", None, "Write the records to this JSON file.")
_CONFIG = config_flags.DEFINE_config_dict(
    "config", config_lib.base_config(), "Overrides of the run's stored config: "
    "--config.data.<field>=value (and --config.mesh.<field>).", lock_config=True,
    sys_argv=cli.known_overrides(sys.argv))


def overridden_fields(argv) -> list[str]:
  """The dotted fields the command line sets (`--config.<field>=...`), in order; a
  one-line failure for one outside data and mesh."""
  fields = [arg[len("--config."):].split("=", 1)[0] for arg in argv
            if arg.startswith("--config.")]
  for field in fields:
    if field.split(".", 1)[0] not in ("data", "mesh"):
      cli.fail(f"--config.{field}: {_ONLY_DATA}")
  return fields


def main(argv):
  workdir = cli.run_workdir(argv, _WORKDIR.value, _USAGE)
  outputs.check_file("--json", _JSON.value, workdir=workdir)  # before the work, never in a run
  fields = overridden_fields(sys.argv)
  run_cfg = config_lib.load_run_config(workdir)  # a one-line error if W holds no run
  given = config_lib.flatten(_CONFIG.value)
  stored = config_lib.flatten(run_cfg)
  data = {f[len("data."):]: given[f] for f in fields
          if f.startswith("data.") and given[f] != stored[f]}
  mesh = None
  if any(f.startswith("mesh.") for f in fields):
    from wsdjax.runtime import sharding
    for f in fields:
      if f.startswith("mesh."):
        config_lib.set_field(run_cfg, f, given[f])
    mesh = sharding.make_mesh(run_cfg.mesh)
  from wsdjax.analysis import evaluation
  records = evaluation.evaluate_states(workdir, data, _BRANCH.value, _STEP.value, mesh=mesh,
                                       report=lambda line: print(f"data: {line}", flush=True))
  print(evaluation.format_records(records))
  if _JSON.value:
    outputs.write_json("--json", _JSON.value, records)


if __name__ == "__main__":
  cli.run(main)
