"""Shared CLI plumbing: one-line errors (`wsdjax: <field>: <problem>; <fix>`, exit 2) and
absl flag parsing that reports bad flags the same way. `--debug` shows tracebacks."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

from wsdjax.runtime import errors
from wsdjax.runtime.tpu import host
from wsdjax.runtime.errors import EXIT_BAD_INPUT

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
    if any(a == "--config" or a.startswith("--config=") for a in sys.argv):
      fail("--config: its get_config() returned None; return an ml_collections.ConfigDict "
           f"(start from wsdjax.config.base_config(), as {example} does)")
    fail(f"--config: missing; pass --config {example} (or another config file)")
  try:
    value = config_flag.value
    if type(value).__name__ == "_ErrorConfig":  # config_flags defers a load error to first use
      value.keys()
  except OSError as e:
    why = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    fail(f"--config: cannot load it ({why}); pass an existing config file, e.g. {example}")
  import ml_collections
  if not isinstance(value, ml_collections.ConfigDict):
    kind = type(value).__name__
    fail(f"--config: get_config() returned {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not an "
         "ml_collections.ConfigDict; start from wsdjax.config.base_config() and return it, "
         f"as {example} does")
  return value


def require_workdir(workdir: str | None) -> str:
  """The --workdir, or a one-line failure: missing, a file, or not creatable where it is."""
  if not workdir:
    fail("--workdir: missing; pass --workdir DIR (created if absent, resumed if present)")
  from wsdjax.runtime.files import is_local
  if not is_local(workdir):  # remote storage: its client reports its own errors
    return workdir
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    fail(f"--workdir: {workdir} is a file, not a directory; pass a directory (created if "
         "absent, resumed if present)")
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    fail(f"--workdir: {workdir} cannot be created: {parent} is a file; pass a directory path")
  if not os.path.exists(workdir) and not os.access(parent, os.W_OK):
    fail(f"--workdir: {workdir} cannot be created: {parent} is not writable; pass a "
         "directory you may write")
  return workdir


def run_workdir(argv: Sequence[str], workdir: str | None, usage: str = "see --help") -> str:
  """The --workdir of an existing run, for the CLIs that read or extend one: a one-line
  failure on stray arguments or a missing --workdir."""
  if len(argv) > 1:
    fail(f"arguments: unexpected {' '.join(argv[1:])!r}; {usage}")
  if not workdir:
    fail("--workdir: missing; pass the run directory given to python -m wsdjax.train")
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


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?", "--helpfull")


def command_help(doc: str | None, own_flags, debug: bool = True) -> str:
  """A command's --help: its docstring, then its own flags (not the config's fields, which
  are `--config.<section>.<field>=value`, listed in wsdjax/config/fields.py)."""
  lines = [(doc or "").strip(), "", "flags:"]
  has_config = False
  for flag in sorted(own_flags, key=lambda f: f.name):
    if flag.name.startswith("config."):
      continue
    has_config |= flag.name == "config"
    simple = isinstance(flag.default, (str, int, float)) and flag.default != ""
    default = f" (default: {flag.default!r})" if simple else ""
    lines.append(f"  --{flag.name}: {' '.join(str(flag.help).split())}{default}")
  if has_config:
    lines.append("  --config.<section>.<field>=value: set a config field (every field and its "
                 "meaning: wsdjax/config/fields.py base_config)")
  if debug:
    lines.append("  --debug: show full tracebacks instead of one-line errors")
  return "\n".join(lines)


def _print_help_and_exit() -> None:
  main_module = sys.modules.get("__main__")
  own = flags.FLAGS.get_key_flags_for_module(sys.argv[0])
  print(command_help(getattr(main_module, "__doc__", None), own), flush=True)
  sys.exit(0)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl parsing, with flag errors (bad override, unknown key, missing file) as one line;
  --help prints the command's own flags (`command_help`)."""
  argv = normalize_flag_names(argv)
  if any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
    _print_help_and_exit()
  if "--debug" not in argv:  # config_flags warns about what we report as one line
    absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    return flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    fail(_unknown_flag_problem(e.flagname))
  except flags.Error as e:
    fail(_flag_problem(str(e) or type(e).__name__))
  except SystemExit as e:  # a config file that calls sys.exit
    fail(f"--config: loading it exited (sys.exit({e.code!r})); its get_config() must return "
         "an ml_collections.ConfigDict")
  except Exception as e:  # noqa: BLE001 - a config file that fails to load
    if "--debug" in argv:
      raise
    if isinstance(e, (KeyError, AttributeError)):  # an override naming no config field
      for arg in argv:
        if arg.startswith("--config.") and (problem := _unknown_field(
            arg[len("--config."):].split("=", 1)[0])):
          fail(problem)
    fail(f"--config: cannot load it ({type(e).__name__}: {e}); fix the config file "
         "(--debug shows the traceback)")
  return []


def _flag_problem(message: str) -> str:
  """absl's message about a flag (its first line; the last for a config file that failed
  to load), with the field and how to fix it."""
  import re
  loading = re.match(r"flag --config=(.*?): Error whilst parsing config file:", message)
  if loading:
    why = [line.strip() for line in message.splitlines() if line.strip()][-1]
    hint = (" (the part after ':' is passed to get_config(), which must take it)"
            if ":" in loading.group(1) else "")
    return (f"--config: cannot load {loading.group(1)} ({why}){hint}; fix the config file "
            "or the --config value (--debug shows the traceback)")
  message = message.splitlines()[0]
  bad_value = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)$", message)
  if bad_value:
    field, value, why = bad_value.groups()
    default = _default_of(field)
    kind = f"value of type {type(default).__name__}" if default is not None else "value"
    return (f"--config.{field}: cannot use {value!r} ({why}); pass a {kind}, e.g. "
            f"--config.{field}={default!r}")
  missing = re.match(r"Missing value for flag (--[\w.-]+)", message)
  if missing:
    name = missing.group(1)
    default = (_default_of(name[len("--config."):])
               if name.startswith("--config.") else None)
    example = f", e.g. {name}={default!r}" if default is not None else ""
    return f"{name}: missing its value; pass {name}=VALUE{example}"
  return message


def _unknown_flag_problem(name: str) -> str:
  """The line for a flag absl does not know: a config field's did-you-mean, or --help."""
  if name.startswith("config.") and (problem := _unknown_field(name[len("config."):])):
    return problem
  return (f"--{name}: unknown flag; see --help (config fields are set as "
          "--config.<section>.<field>=value)")


def known_overrides(argv: Sequence[str]) -> list[str]:
  """`argv` without its `--config.<field>=...` overrides that name no config field: the
  command line a `config_flags.DEFINE_config_dict` flag may read (it raises as it is
  defined on an unknown field). absl then reports each dropped one as an unknown flag,
  which `parse_flags` shows as the config's one line (`config.fields.unknown_field`)."""
  return [a for a in argv if not a.startswith("--config.")
          or _unknown_field(a[len("--config."):].split("=", 1)[0]) is None]


def _default_of(field: str):
  """The default value of a dotted config field; None if it names none (`config.fields`)."""
  from wsdjax.config import fields
  return fields.default_of(field)


def _unknown_field(field: str) -> str | None:
  """Why `field` (dotted, as in --config.<field>=...) names no config field, as one line
  (`config.fields.unknown_field`); None if it names one."""
  from wsdjax.config import fields
  problem = fields.unknown_field(field)
  return None if problem is None else f"--config.{problem}"


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
  """app.run(main) where the library's errors become one line and an exit code
  (`runtime.errors`: the one table), and `Stop` a line on stdout and exit 0."""
  def guarded(argv):
    host.cpu_only_without_tpu()  # before jax starts a backend: libtpu quiet on CPU hosts
    if not flags.FLAGS.debug:
      absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
      absl_logging.get_absl_handler().addFilter(_drop_orbax_errors)
      sys.unraisablehook = _drop_closed_loop_callbacks
    try:
      main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler (which saves) is set
      if flags.FLAGS.debug:
        raise
      fail("interrupted: Ctrl-C outside the training loop (a run stopped before its first "
           "step records nothing; saves made before are kept); rerun the command to go on")
    except errors.Stop as stop:  # saved; the same command resumes
      print(f"wsdjax: {stop}", flush=True)
    except Exception as e:  # noqa: BLE001 - the family's errors as one line; bugs re-raised
      code = errors.exit_code(e)
      if code is None or flags.FLAGS.debug:
        raise
      fail(str(e), code)
  app.run(guarded, flags_parser=parse_flags)
