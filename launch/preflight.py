"""Checks a launcher makes on this machine before it makes or submits anything: the
accelerator type is a Cloud TPU slice wsdjax knows, the config is a file of this checkout
(all a VM or an image gets), and it loads with its overrides and validates for the slice's
chips, as wsdjax.train will load it there. Each failure is one line `wsdjax: <flag>: ...`
on stderr and exit 2."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python launch/<tool>.py` from a checkout
  sys.path.insert(0, REPO)


def fail(message: str) -> None:
  """Print `wsdjax: message` as one line on stderr and exit 2."""
  print(f"wsdjax: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def tpu_slice(name: str):
  """The wsdjax.runtime.tpu.slices.Slice of accelerator type `name`; fail() if unknown."""
  from wsdjax.runtime.tpu import slices
  try:
    return slices.lookup(name)
  except slices.UnknownSlice as e:
    fail(str(e).replace("--topology:", "--accelerator-type:", 1)
         .replace(" (--list shows them all)", ""))


def config_path(path: str) -> str:
  """`path` relative to the repo root (what the image holds); fail() if it is no file
  of this checkout."""
  full = os.path.abspath(path if os.path.isfile(path) else os.path.join(REPO, path))
  rel = os.path.relpath(full, REPO)
  if not os.path.isfile(full) or rel.startswith(".."):
    fail(f"--config: {path!r} is not a file of this checkout, which is all the image "
         f"holds; pass a config under {REPO}, e.g. configs/paper_0.1b.py")
  return rel


def load_config(path: str, overrides: list[str], devices: int | None = None):
  """The config at `path` (relative to the repo) with `--config.a.b=value` overrides, parsed
  by ml_collections' config_flags as wsdjax.train parses them and validated (for `devices`
  devices, e.g. a slice's chips, when given); fail() else."""
  from absl import flags
  from ml_collections import config_flags
  from wsdjax import config as config_lib
  from wsdjax.config import fields
  values = flags.FlagValues()
  argv = ["gke", f"--config={os.path.join(REPO, path)}", *overrides]
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)  # which overrides to define as flags
  try:
    values(argv)
    cfg = values["config"].value
    if type(cfg).__name__ == "_ErrorConfig":  # config_flags defers a load error to first use
      cfg.keys()
    config_lib.validate(cfg, devices)
  except config_lib.ConfigError as e:
    fail(str(e))
  except Exception as e:  # noqa: BLE001 - a bad override or a config that fails to load
    for arg in overrides:
      problem = fields.unknown_field(arg[len("--config."):].split("=", 1)[0])
      if problem:
        fail(str(problem))
    why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    fail(f"--config: cannot load {path} with these overrides ({why}); fix the config file or "
         f"the --config.a.b=value overrides")
  return cfg
