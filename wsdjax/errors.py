"""The typed error of a bad config field, raised by the module that owns the rule (config
validation, the mesh shape in `sharding`) and shown by the CLIs as one line."""


class ConfigError(ValueError):
  """A bad config field. str() is `<field>: <what is wrong>; <how to fix>`."""

  def __init__(self, field: str, problem: str, fix: str):
    self.field, self.problem, self.fix = field, problem, fix
    super().__init__(f"{field}: {problem}; {fix}")


def require(cond: bool, field: str, problem: str, fix: str) -> None:
  """Raise ConfigError(field, problem, fix) unless `cond`."""
  if not cond:
    raise ConfigError(field, problem, fix)
