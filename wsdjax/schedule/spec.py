"""`ScheduleSpec`: the one typed description of an LR schedule, from the config to Optax.

A spec is made once from a `schedule` config section (`ScheduleSpec.from_config`) or by
the branch plan for a segment (`plan.Segment.schedule`); it is frozen and hashable, so it
keys the compiled train steps, and `build()` turns it into the `PhasedSchedule`
(step -> lr) once: the trainer's LR log and the jitted step call the same object.

A field left None is not given: its builder's default applies, and it is left out of
`as_dict()` (the "schedule" a manifest records). Errors name the config field
(`schedule.<field>`); the builders, called directly, name their argument.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
from typing import Any, Mapping

from wsdjax.runtime.errors import ConfigError, require
from wsdjax.schedule import builders
from wsdjax.schedule.builders import PhasedSchedule

# The builders' arguments, from their signatures: which fields each schedule takes.
_TAKES = {name: tuple(inspect.signature(fn).parameters) for name, fn in builders.BUILDERS.items()}


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """A named schedule and the builder arguments given to it (None: not given).

  `total_steps` None or 0: the last budget; `decay_steps` None or 0 ('wsd'): the decay
  is round(decay_fraction * total_steps). Field meanings: wsdjax/config/fields.py.
  """
  name: str
  peak_lr: float | None = None
  warmup_steps: int | None = None
  budgets: tuple[int, ...] | None = None
  total_steps: int | None = None
  decay_fraction: float | None = None
  decay_steps: int | None = None
  init_lr: float | None = None
  min_lr_ratio: float | None = None
  warmup_shape: str | None = None
  decay_shape: str | None = None
  rewarmup_steps: int | None = None

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> ScheduleSpec:
    """The whole run's schedule of a `schedule` config section (or any mapping with its
    field names): the fields it has, budgets as a tuple, total_steps and decay_steps only
    when > 0 (0 = unset). Nothing is checked here: `check` and `build` do."""
    given = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section}
    if isinstance(given.get("budgets"), list):
      given["budgets"] = tuple(given["budgets"])
    for unset_at_zero in ("total_steps", "decay_steps"):
      if unset_at_zero in given and not given[unset_at_zero]:
        del given[unset_at_zero]
    return cls(**given)

  def replace(self, **changes) -> ScheduleSpec:
    """This spec with `changes` (None: not given)."""
    return dataclasses.replace(self, **changes)

  def as_dict(self) -> dict[str, Any]:
    """The given fields, sorted by name: the "schedule" a manifest records."""
    return {f.name: getattr(self, f.name) for f in sorted(dataclasses.fields(self),
                                                           key=lambda f: f.name)
            if getattr(self, f.name) is not None}

  def arguments(self) -> dict[str, Any]:
    """The keyword arguments of the builder `name`: the given fields it takes, with
    total_steps = budgets[-1] when not given."""
    require(self.name in builders.BUILDERS, "schedule.name", f"unknown value {self.name!r}",
            f"use one of {', '.join(builders.NAMES)}")
    takes = _TAKES[self.name]
    kwargs = {k: getattr(self, k) for k in takes if getattr(self, k) is not None}
    if "total_steps" in takes and not self.total_steps:
      with self._naming_fields():
        kwargs["total_steps"] = builders.budget_steps(self.budgets)[-1]
    if not self.decay_steps:
      kwargs.pop("decay_steps", None)
    return kwargs

  @functools.lru_cache(maxsize=None)  # noqa: B019 - specs are few, small and immutable
  def build(self) -> PhasedSchedule:
    """The Optax schedule step -> lr, built once per spec (equal specs share it)."""
    kwargs = self.arguments()
    with self._naming_fields():
      return builders.BUILDERS[self.name](**kwargs)

  def checkpoint_steps(self) -> list[int]:
    """Steps at which decayed checkpoints are ready: wsd, the budgets (or [total_steps]
    when given); wsd_s, the C_i (where its decays end); cyclic_cosine, the budgets;
    cosine/linear, [total_steps]; constant, none."""
    schedule, kwargs = self.build(), self.arguments()
    if self.name == "wsd_s":
      return [p.end for p in schedule.phases if p.name.startswith("decay")]
    if self.name == "cyclic_cosine" or (self.name == "wsd" and not self.total_steps):
      return builders.budget_steps(self.budgets)
    return [kwargs["total_steps"]] if "total_steps" in kwargs else []

  def horizon(self) -> int:
    """Steps worth plotting: the last checkpoint (else the last budget or phase end) + 10%."""
    ends = (self.checkpoint_steps() or list(self.budgets or ())
            or [p.end or p.start for p in self.build().phases])
    return max(1, math.ceil(1.1 * max(ends)))

  @contextlib.contextmanager
  def _naming_fields(self):
    """A builder's ConfigError names its argument; here it names the config field
    `schedule.<argument>` (total_steps taken from the budgets: schedule.budgets)."""
    try:
      yield
    except ConfigError as e:
      if e.field.startswith("schedule."):
        raise
      field = "budgets" if e.field == "total_steps" and not self.total_steps else e.field
      raise ConfigError(f"schedule.{field}", e.problem, e.fix) from None


def check(section: Mapping[str, Any]) -> ScheduleSpec:
  """Every field of a `schedule` section on its own, then the whole run's schedule (for
  'wsd' without total_steps, each budget's decay branch too); its spec. Raises
  ConfigError naming `schedule.<field>`. The plan's own rules: `plan.check`."""
  spec = ScheduleSpec.from_config(section)
  require(spec.name in builders.BUILDERS, "schedule.name", f"unknown value {spec.name!r}",
          f"use one of {', '.join(builders.NAMES)}")
  given = {k: v for k, v in spec.as_dict().items() if k != "name"}
  with spec._naming_fields():
    builders.check_arguments(**given)
  require(not spec.decay_steps or spec.name == "wsd", "schedule.decay_steps",
          f"only 'wsd' takes a fixed decay length, not {spec.name!r}",
          "set decay_fraction instead, or decay_steps=0")
  spec.build()
  if spec.name == "wsd" and not spec.total_steps:
    for budget in builders.budget_steps(spec.budgets)[:-1]:  # each decay branch must fit
      spec.replace(total_steps=budget).build()
  return spec
