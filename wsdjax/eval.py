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

from absl import flags
from ml_collections import config_flags

from wsdjax.runtime import cli
from wsdjax.runtime import outputs

_FLAGS = {}
_USAGE = "usage: --workdir W [--branch B] [--step S] [--config.data.X=V ...] [--json F]"
_ONLY_DATA = ("eval takes only --config.data.<field> (and --config.mesh.<field>) overrides; "
              "the model and its training are the run's")


def _argv_workdir(argv) -> str | None:
  """The value of --workdir in `argv`, read before the flags are parsed."""
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define_flags(argv) -> None:
  """The CLI's flags; `--config.*` overrides apply to the stored config of --workdir."""
  from wsdjax import config as config_lib
  from wsdjax.runtime.errors import ConfigError
  workdir = _argv_workdir(argv)
  try:
    base = config_lib.load_run_config(workdir) if workdir else config_lib.base_config()
  except ConfigError:  # main reports it, once flags are parsed
    base = config_lib.base_config()
  check_override_names(argv)
  _FLAGS.update(
      workdir=flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train."),
      branch=flags.DEFINE_string("branch", None, "Branch to evaluate (default: every "
                                 "decayed checkpoint)."),
      step=flags.DEFINE_integer("step", None, "Saved step of --branch (default: latest)."),
      json=flags.DEFINE_string("json", None, "Write the records to this JSON file."),
      config=config_flags.DEFINE_config_dict(
          "config", base, "The run's stored config: set --config.data.<field>=value "
          "(and --config.mesh.<field>).", lock_config=True))


def check_override_names(argv) -> None:
  """A one-line failure for a `--config.X` that is not a data (or mesh) config field
  (`config.fields.unknown_field`; config_flags would raise while defining the flag)."""
  from wsdjax.config import fields
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    field = arg[len("--config."):].split("=", 1)[0]
    section = field.split(".", 1)[0]
    if section not in ("data", "mesh"):
      cli.fail(f"--config.{field}: {_ONLY_DATA}")
    unknown = fields.unknown_field(field)
    if unknown is not None:
      cli.fail(f"--config.{unknown}")


def overrides_of(workdir, cfg) -> tuple[dict, bool]:
  """The data fields `cfg` sets apart from the run's, and whether the mesh differs; a
  one-line failure for any other field."""
  from wsdjax import config as config_lib
  run = config_lib.flatten(config_lib.load_run_config(workdir))
  now = config_lib.flatten(cfg)
  changed = [f for f in now if now[f] != run.get(f)]
  other = [f for f in changed if not f.startswith(("data.", "mesh."))]
  if other:
    cli.fail(f"--config.{other[0]}: {_ONLY_DATA}")
  data = {f[len("data."):]: now[f] for f in changed if f.startswith("data.")}
  return data, any(f.startswith("mesh.") for f in changed)


def main(argv):
  f = {name: holder.value for name, holder in _FLAGS.items()}
  workdir = cli.run_workdir(argv, f["workdir"], _USAGE)
  outputs.check_file("--json", f["json"], workdir=workdir)  # before the work, never in a run
  from wsdjax import config as config_lib
  config_lib.load_run_config(workdir)  # a one-line error if W holds no run
  data, new_mesh = overrides_of(workdir, f["config"])
  from wsdjax.analysis import evaluation
  from wsdjax.runtime import sharding
  mesh = sharding.make_mesh(f["config"].mesh) if new_mesh else None
  records = evaluation.evaluate_states(workdir, data, f["branch"], f["step"], mesh=mesh,
                                       report=lambda line: print(f"data: {line}", flush=True))
  print(evaluation.format_records(records))
  if f["json"]:
    outputs.write_json("--json", f["json"], records)


if __name__ == "__main__":
  import sys
  define_flags(sys.argv)
  cli.run(main)
