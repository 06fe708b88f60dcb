"""The one family of errors a command reports as one line, and the one table of exit codes.

Every error the library raises on purpose derives from `WsdjaxError`; its class says how a
command ends (`exit_code`). `runtime.cli.run` prints `wsdjax: <message>` and exits with it;
anything else is a bug and keeps its traceback.

  exit 0  Stop                 training stopped on request (SIGTERM, Ctrl-C); state saved
  exit 2  BadInput             a config field, a flag, a checkpoint or data that cannot work
          ConfigError            a bad config field: `<field>: <problem>; <fix>`
          (checkpoint.CheckpointError, data.DataConfigError, ...)
  exit 3  Fault                the run's environment failed; what was saved before is intact
          (runtime.outputs.OutputFault, checkpoint.SaveError, training NonFiniteLoss)
"""

EXIT_STOPPED = 0
EXIT_BAD_INPUT = 2
EXIT_FAULT = 3


class WsdjaxError(Exception):
  """An error a command reports as one line (its str()) and exits with `exit_code`."""
  exit_code = EXIT_BAD_INPUT


class BadInput(WsdjaxError):
  """Input that cannot work: a config field, a flag, a checkpoint, data. Exit 2."""
  exit_code = EXIT_BAD_INPUT


class Fault(WsdjaxError):
  """The environment failed (a full disk, a failed save, a non-finite loss); the saves
  made before it are intact. Exit 3."""
  exit_code = EXIT_FAULT


class Stop(WsdjaxError):
  """Training stopped early on request (a signal or a preemption) after saving; the same
  command resumes. Exit 0: it is not a failure."""
  exit_code = EXIT_STOPPED


class ConfigError(BadInput, ValueError):
  """A bad config field (or flag). str() is `<field>: <what is wrong>; <how to fix>`."""

  def __init__(self, field: str, problem: str, fix: str):
    self.field, self.problem, self.fix = field, problem, fix
    super().__init__(f"{field}: {problem}; {fix}")


def require(cond: bool, field: str, problem: str, fix: str) -> None:
  """Raise ConfigError(field, problem, fix) unless `cond`."""
  if not cond:
    raise ConfigError(field, problem, fix)


def exit_code(error: BaseException) -> int | None:
  """How a command ends on `error`: its class's `exit_code`; None for an error outside the
  family (a bug, which keeps its traceback)."""
  return error.exit_code if isinstance(error, WsdjaxError) else None
