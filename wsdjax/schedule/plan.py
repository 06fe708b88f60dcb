"""The branch plan: which segments a run executes, from which states, under which LR.

Pure Python, no JAX. A *segment* trains one branch from a saved state for a range of
steps under one LR schedule (evaluated at the absolute step). A *state* is addressed by
(branch, step): the state after `step` updates on that branch's lineage.

Strategies, with budgets B_1 < ... < B_k and decay lengths d_i:
  wsd            main runs at constant peak LR; at F_i = B_i - d_i it forks `decay-B_i`, which
                 decays for d_i steps to B_i; main goes on from its own state at F_i.
                 Steps run: F_k + sum_i d_i = B_k + sum_{i<k} d_i. With merges in the plan
                 (`merge_window`), main also runs to B_k and is saved at every B_i, where
                 the trainer averages its window into `merge-B_i`: d_k more steps.
  wsd_s          one lineage: main runs to S_i = C_i - d_i, `decay-C_i` decays in place to C_i
                 (C_i from `schedules.wsd_s_checkpoints`), main resumes from that decayed
                 state at peak LR. Same steps as wsd for the same budgets.
  cyclic_cosine  a chain of cosine cycles `decay-B_i` over [B_{i-1}, B_i).
  cosine/linear  one budget B: one segment `decay-B` over [0, B).
  constant       main only, to B_k, saved and evaluated at every B_i (decay later with
                 `python -m wsdjax.branch`, or merge: `merge_window`).
Execution order is the list order; every state a later segment starts from is saved.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from wsdjax.runtime.errors import require
from wsdjax.schedule import builders as schedules
from wsdjax.schedule import merge_weights
from wsdjax.schedule import spec as spec_lib
from wsdjax.schedule.spec import ScheduleSpec

MAIN = "main"
MERGE_STRATEGIES = ("wsd", "constant")  # those with a constant-LR main branch to merge


def decay_branch_name(end_step: int) -> str:
  """Name of the decay branch whose decayed checkpoint is the state at `end_step`."""
  return f"decay-{int(end_step)}"


def merge_branch_name(step: int) -> str:
  """Name of the branch holding the average of main's saves in a window ending at `step`."""
  return f"merge-{int(step)}"


@dataclasses.dataclass(frozen=True)
class StateRef:
  """A saved state: `branch` after `step` updates."""
  branch: str
  step: int


@dataclasses.dataclass(frozen=True)
class Segment:
  """Train `branch` over steps [start, end) starting from `init_from` (None: fresh init).

  `schedule` is the LR schedule the segment trains under (`schedule.build()`, evaluated at
  the absolute step). `decayed`: the end state is a decayed checkpoint (saved, evaluated,
  kept forever). `parent`/`fork_step`: lineage of the branch for the manifest. `budget`:
  the budget a decayed checkpoint serves when it is not its end step (WSD-S's decay for
  budget B_i ends at C_i = B_i + earlier decays); see `budget_served`.
  """
  branch: str
  start: int
  end: int
  init_from: StateRef | None
  schedule: ScheduleSpec
  decayed: bool
  parent: str | None
  fork_step: int | None
  budget: int | None = None

  @property
  def budget_served(self) -> int | None:
    """The budget of the decayed checkpoint this segment ends in (None if it is not one)."""
    return (self.end if self.budget is None else self.budget) if self.decayed else None

  @property
  def steps(self) -> int:
    return self.end - self.start

  @property
  def end_ref(self) -> StateRef:
    return StateRef(self.branch, self.end)

  def schedule_dict(self) -> dict[str, Any]:
    """The schedule's given fields, sorted by name (what a manifest records)."""
    return self.schedule.as_dict()


@dataclasses.dataclass(frozen=True)
class Plan:
  strategy: str
  segments: tuple[Segment, ...]

  @property
  def total_steps(self) -> int:
    """Optimizer updates the whole plan runs (its compute, in steps)."""
    return sum(s.steps for s in self.segments)

  @property
  def decayed(self) -> tuple[Segment, ...]:
    return tuple(s for s in self.segments if s.decayed)

  def steps_before(self, index: int) -> int:
    """Updates run by the segments before segment `index`, in execution order."""
    return sum(s.steps for s in self.segments[:index])

  def required_states(self) -> set[StateRef]:
    """States some segment starts from: they must be saved and kept."""
    return {s.init_from for s in self.segments if s.init_from is not None}

  def input_reused(self, index: int) -> bool:
    """Whether segment `index`'s start state is also the start of a later segment.

    Then its first step must not donate its input buffers (forking shares arrays).
    """
    ref = self.segments[index].init_from
    return ref is not None and any(s.init_from == ref for s in self.segments[index + 1:])


def decay_lengths(cfg) -> list[int]:
  """d_i for each budget: `decay_steps` when set (> 0), else round(decay_fraction * B_i)."""
  budgets = list(cfg.budgets)
  if cfg.get("decay_steps", 0):
    return [int(cfg.decay_steps)] * len(budgets)
  return schedules.decay_lengths(budgets, cfg.decay_fraction)


def wsd_decay_schedule(whole_run: ScheduleSpec, budget: int, decay_steps: int,
                       **overrides) -> ScheduleSpec:
  """The LR of a WSD decay branch ending at `budget`: warmup, peak, decay over the last d."""
  return whole_run.replace(name="wsd", budgets=None, rewarmup_steps=None,
                           total_steps=int(budget), decay_steps=int(decay_steps), **overrides)


def check(cfg) -> None:
  """Every rule of a `schedule` section: its fields and schedule (`spec.check`), the merge
  fields and the plan. Raises ConfigError naming `schedule.<field>`."""
  make_plan(cfg)


def make_plan(cfg) -> Plan:
  """Turn a `config.schedule` section into the ordered segments of the run."""
  whole_run = spec_lib.check(cfg)
  merge_sources(cfg)  # raises ConfigError naming a bad merge field
  build = {"wsd": _plan_wsd, "wsd_s": _plan_wsd_s, "cyclic_cosine": _plan_cyclic,
           "cosine": _plan_single, "linear": _plan_single, "constant": _plan_constant}
  budgets = [int(b) for b in whole_run.budgets]
  return Plan(whole_run.name, tuple(build[whole_run.name](cfg, budgets, whole_run)))


def merge_window(cfg) -> int:
  """`schedule.merge_window` (0: no merges in the plan), checked against the strategy."""
  window = int(cfg.get("merge_window", 0) or 0)
  require(not window or cfg.name in MERGE_STRATEGIES, "schedule.merge_window",
          f"merges average a constant-LR main branch, which {cfg.name!r} does not have",
          f"use schedule.name={' or '.join(MERGE_STRATEGIES)}, or merge_window=0 "
          "(python -m wsdjax.merge still merges any saved main states)")
  require(not window or 0 < window <= min(cfg.budgets), "schedule.merge_window",
          f"{window} does not fit in the first budget {min(cfg.budgets)}",
          "use a window of at most the smallest budget")
  return window


def merge_sources(cfg) -> dict[int, list[int]]:
  """{B_i: the main steps whose states `merge-B_i` averages}: B_i - j*M > B_i - K for
  j = 0, 1, ... (K = merge_window, M = merge_every, 0: K // 4), ascending; {} without merges."""
  window = merge_window(cfg)
  if not window:
    return {}
  every = int(cfg.get("merge_every", 0) or 0) or max(1, window // 4)
  require(0 < every < window, "schedule.merge_every", f"{every} leaves fewer than two saves "
          f"in a merge window of {window} steps",
          f"use 0 < merge_every < {window}, or 0 for {window} // 4")
  merge_weights.resolve(cfg.get("merge_weights", "uniform"), "schedule.merge_weights")
  return {int(b): sorted(int(b) - j * every for j in range(window) if j * every < window)
          for b in cfg.budgets}


def _main_points(forks, budgets, with_budgets: bool) -> list[int]:
  """The steps where main's segments end: the forks, and the budgets when main must be
  saved and evaluated there (merges, or the constant strategy)."""
  return sorted(set(forks) | (set(budgets) if with_budgets else set()))


def _plan_wsd(cfg, budgets, whole_run):
  main_sched = whole_run.replace(name="constant", budgets=None, decay_steps=None)
  forks = {b: b - d for b, d in zip(budgets, decay_lengths(cfg))}
  segments, main_at = [], None
  for point in _main_points(forks.values(), budgets, bool(merge_window(cfg))):
    start = 0 if main_at is None else main_at.step
    if point > start or main_at is None:
      segments.append(Segment(MAIN, start, point, main_at, main_sched, False, None, None))
      main_at = StateRef(MAIN, point)
    for budget in (b for b in budgets if forks[b] == point):
      segments.append(Segment(decay_branch_name(budget), point, budget, main_at,
                              wsd_decay_schedule(whole_run, budget, budget - point), True,
                              MAIN, point))
  return segments


def _plan_wsd_s(cfg, budgets, whole_run):
  sched = whole_run
  ends = schedules.wsd_s_checkpoints(budgets, cfg.decay_fraction)
  lengths = schedules.decay_lengths(budgets, cfg.decay_fraction)
  segments, at = [], None
  for budget, end, d in zip(budgets, ends, lengths):
    fork = end - d
    start = 0 if at is None else at.step
    if fork > start or at is None:
      segments.append(Segment(MAIN, start, fork, at, sched, False,
                              None if at is None else at.branch,
                              None if at is None else start))
      at = StateRef(MAIN, fork)
    segments.append(Segment(decay_branch_name(end), fork, end, at, sched, True, at.branch, fork,
                            budget))
    at = StateRef(decay_branch_name(end), end)
  return segments


def _plan_cyclic(cfg, budgets, whole_run):
  sched = whole_run
  segments, at = [], None
  for budget in budgets:
    start = 0 if at is None else at.step
    segments.append(Segment(decay_branch_name(budget), start, budget, at, sched, True,
                            None if at is None else at.branch, None if at is None else start))
    at = StateRef(decay_branch_name(budget), budget)
  return segments


def _plan_single(cfg, budgets, whole_run):
  require(len(budgets) == 1, "schedule.budgets", f"{cfg.name} runs one budget but got "
          f"{len(budgets)}", f"give one value (e.g. --config.schedule.budgets='({budgets[-1]},)')"
          " or use wsd/wsd_s")
  return [Segment(decay_branch_name(budgets[0]), 0, budgets[0], None, whole_run,
                  True, None, None)]


def _plan_constant(cfg, budgets, whole_run):
  ends = [0] + budgets  # main is saved and evaluated at every budget
  return [Segment(MAIN, a, b, None if a == 0 else StateRef(MAIN, a), whole_run,
                  False, None, None) for a, b in zip(ends, ends[1:])]


def after_the_fact(cfg, from_step: int, decay_steps: int, decay_shape: str | None = None,
                   min_lr_ratio: float | None = None) -> Segment:
  """A decay branch forked from main at `from_step` (saved), decaying for `decay_steps`."""
  overrides = {}
  if decay_shape is not None:
    overrides["decay_shape"] = decay_shape
  if min_lr_ratio is not None:
    overrides["min_lr_ratio"] = float(min_lr_ratio)
  end = int(from_step) + int(decay_steps)
  sched = wsd_decay_schedule(ScheduleSpec.from_config(cfg), end, decay_steps, **overrides)
  sched.build()  # raises ConfigError naming a bad field
  return Segment(decay_branch_name(end), int(from_step), end, StateRef(MAIN, int(from_step)),
                 sched, True, MAIN, int(from_step))


def describe(plan: Plan) -> str:
  """A human-readable table of the plan, one segment a line."""
  lines = [f"plan: {plan.strategy}, {len(plan.segments)} segments, {plan.total_steps} steps"]
  for s in plan.segments:
    src = "init" if s.init_from is None else f"{s.init_from.branch}@{s.init_from.step}"
    tag = "  -> decayed checkpoint" if s.decayed else ""
    lines.append(f"  {s.branch:>14} steps [{s.start}, {s.end}) from {src}{tag}")
  return "\n".join(lines)
