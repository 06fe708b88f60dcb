"""Shared CLI plumbing: one-line errors (`wsdjax: <field>: <problem>; <fix>`, exit 2) and
absl flag parsing that reports bad flags the same way. `--debug` shows tracebacks."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

EXIT_BAD_INPUT = 2
EXIT_FAULT = 3

flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
  """Print `wsdjax: message` as one line on stderr and exit."""
  print("wsdjax: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


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
    fail(f"config: cannot load it: {type(e).__name__}: {e}")
  return []


def run(main: Callable[[list[str]], None], handled: dict[type, int]) -> None:
  """app.run(main) where exceptions of the `handled` types become one-line errors."""
  def guarded(argv):
    if not flags.FLAGS.debug:
      absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    try:
      main(argv)
    except tuple(handled) as e:
      if flags.FLAGS.debug:
        raise
      code = next(c for t, c in handled.items() if isinstance(e, t))
      fail(str(e), code)
  app.run(guarded, flags_parser=parse_flags)
