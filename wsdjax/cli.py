"""Shared CLI plumbing: one-line errors (`wsdjax: <field>: <problem>; <fix>`, exit 2) and
absl flag parsing that reports bad flags the same way. `--debug` shows tracebacks."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

EXIT_BAD_INPUT = 2
EXIT_FAULT = 3

flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")


def print_error(message: str) -> None:
  """Print `wsdjax: message` as one line on stderr."""
  print("wsdjax: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
  """Print `wsdjax: message` as one line on stderr and exit. What threads still unwinding
  would print after it (e.g. TensorStore's callbacks of a failed save, into an event loop
  Orbax has closed) goes nowhere: the one line is the report."""
  print_error(message)
  sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
  sys.exit(code)


def loaded_config(argv: Sequence[str], config_flag, example: str):
  """The config of a `--config` flag, after the checks every config-taking CLI makes: no
  stray positional arguments, the flag given, the file loaded (config_flags defers a load
  failure, e.g. a missing file or a syntax error, to first use)."""
  if len(argv) > 1:
    fail(f"arguments: unexpected {' '.join(argv[1:])!r}; pass options as --flag=value")
  if config_flag.value is None:
    fail(f"--config: missing; pass --config {example} (or another config file)")
  try:
    value = config_flag.value
    value.keys()
  except OSError as e:
    why = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    fail(f"--config: cannot load it ({why}); pass an existing config file, e.g. {example}")
  import ml_collections
  if not isinstance(value, ml_collections.ConfigDict):
    fail(f"--config: get_config() returned a {type(value).__name__}, not an "
         "ml_collections.ConfigDict; start from wsdjax.config.base_config() and return it, "
         f"as {example} does")
  return value


def require_workdir(workdir: str | None) -> str:
  if not workdir:
    fail("--workdir: missing; pass --workdir DIR (created if absent, resumed if present)")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    fail(f"--workdir: {workdir} is a file, not a directory; pass a directory (created if "
         "absent, resumed if present)")
  return workdir


def normalize_flag_names(argv: Sequence[str]) -> list[str]:
  """Accept `--from-step` for absl's `--from_step` (dashes in flag names, not in values)."""
  out = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config."):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl parsing, with flag errors (bad override, unknown key, missing file) as one line."""
  argv = normalize_flag_names(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except Exception as e:  # noqa: BLE001 - a config file that fails to load
    if "--debug" in argv:
      raise
    if isinstance(e, (KeyError, AttributeError)):  # an override naming no config field
      from wsdjax import config as config_lib
      for arg in argv:
        if arg.startswith("--config.") and (problem := config_lib.unknown_field(
            arg[len("--config."):].split("=", 1)[0])):
          fail(problem)
    fail(f"config: cannot load it: {type(e).__name__}: {e}")
  return []


def exit_code(error: BaseException) -> int | None:
  """The exit code of a library exception, for every CLI (the one table); None for an
  exception that is a bug, which keeps its traceback. First match wins: subclasses first."""
  from wsdjax import checkpoint, data, schedules, trainer  # local: only when one failed
  from wsdjax.errors import ConfigError
  table = ((ConfigError, EXIT_BAD_INPUT),
           (schedules.ScheduleError, EXIT_BAD_INPUT),
           (data.DataConfigError, EXIT_BAD_INPUT),
           (checkpoint.SaveError, EXIT_FAULT),        # a save that failed: the run stops
           (checkpoint.CheckpointError, EXIT_BAD_INPUT),
           (trainer.NonFiniteLoss, EXIT_FAULT))
  return next((code for kind, code in table if isinstance(error, kind)), None)


def _drop_orbax_errors(record) -> bool:
  """Orbax logs a failed save's traceback from its writer thread (and asyncio the tasks of
  it nobody awaited); the trainer reports the same failure as one line
  (`checkpoint.SaveError`), so without --debug those logs are dropped."""
  if record.levelno < 40:
    return True
  from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
  orbax_task = record.name == "asyncio" and "orbax" in str(record.getMessage())
  return not (from_orbax or orbax_task)


def _drop_closed_loop_callbacks(unraisable) -> None:
  """After a failed save, TensorStore completes the writes Orbax gave up on into an event
  loop Orbax has closed; each prints 'Event loop is closed'. Those are dropped, anything
  else is shown as Python would."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) where the library's exceptions become one-line errors (`exit_code`)."""
  def guarded(argv):
    if not flags.FLAGS.debug:
      absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
      absl_logging.get_absl_handler().addFilter(_drop_orbax_errors)
      sys.unraisablehook = _drop_closed_loop_callbacks
    try:
      main(argv)
    except Exception as e:  # noqa: BLE001 - sorted by exit_code; the rest re-raised
      code = exit_code(e)
      if code is None or flags.FLAGS.debug:
        raise
      fail(str(e), code)
  app.run(guarded, flags_parser=parse_flags)
