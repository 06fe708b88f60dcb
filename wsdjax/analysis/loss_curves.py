"""A run's loss curves as a loss law sees them: per branch, the LR of every update of its
lineage (from the plan its config.json makes, and the recorded schedule of a branch made
after the fact) and the losses measured on it: train-loss windows of metrics.jsonl and
the eval losses of the manifest (and of metrics.jsonl's periodic evaluations).

A train row logged at step b covers the updates since the branch's previous row (or its
fork): updates [a, b). A step logged twice (a resumed run) keeps its last row. Merges and
EMA shadows have no LR schedule of their own and are not curves here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from wsdjax.runtime.errors import ConfigError
from wsdjax.schedule import plan as plan_lib
from wsdjax.schedule.spec import ScheduleSpec


@dataclasses.dataclass(frozen=True)
class Lineage:
  """Branch `branch`: the absolute LRs `lr` of updates 0..end-1 of its lineage; its own
  updates are [start, end), trained in segments starting at `segment_starts`; `decayed`:
  it ends in a decayed checkpoint."""
  branch: str
  lr: np.ndarray
  start: int
  decayed: bool
  segment_starts: tuple[int, ...] = ()

  def window_start(self, previous: int, step: int) -> int:
    """The first update of a train row logged at `step` after one at `previous`: a
    segment's first row starts at the segment (main resumed from a WSD-S decay)."""
    return max([previous, self.start] + [s for s in self.segment_starts if s < step])

  @property
  def end(self) -> int:
    return len(self.lr)


def segment_lrs(segment: plan_lib.Segment) -> np.ndarray:
  """The LRs of a segment's updates [start, end), from its schedule (the jitted step's)."""
  import jax.numpy as jnp
  steps = jnp.arange(segment.start, segment.end, dtype=jnp.int32)
  return np.asarray(segment.schedule.build()(steps), np.float64)


def plan_lineages(plan: plan_lib.Plan, extra=()) -> dict[str, Lineage]:
  """Every branch of `plan` (then the `extra` segments) with its lineage's LRs; a branch
  trained in several segments (main) is one lineage to its last end."""
  arrays: dict[str, np.ndarray] = {}
  out: dict[str, Lineage] = {}
  for seg in list(plan.segments) + list(extra):
    before = (np.zeros(0) if seg.init_from is None
              else arrays[seg.init_from.branch][:seg.init_from.step])
    arrays[seg.branch] = np.concatenate([before, segment_lrs(seg)])
    old = out.get(seg.branch)
    out[seg.branch] = Lineage(seg.branch, arrays[seg.branch],
                              seg.start if old is None else old.start, seg.decayed,
                              (() if old is None else old.segment_starts) + (seg.start,))
  return out


def extra_segments(manifest: list[dict]) -> list[plan_lib.Segment]:
  """The decay branches made beside the plan (`wsdjax.branch`, live requests), from the
  schedule their manifest entries record."""
  seen = {}
  for e in manifest:
    if e.get("extra") and e.get("schedule") and e["branch"] not in seen:
      sched = dict(e["schedule"])
      if isinstance(sched.get("budgets"), list):
        sched["budgets"] = tuple(sched["budgets"])
      spec = ScheduleSpec(**sched)
      end = int(spec.total_steps)
      seen[e["branch"]] = plan_lib.Segment(
          e["branch"], int(e["fork_step"]), end,
          plan_lib.StateRef(e["parent"], int(e["fork_step"])), spec, True, e["parent"],
          int(e["fork_step"]))
  return list(seen.values())


@dataclasses.dataclass(frozen=True)
class RunCurves:
  """What a loss law fits in one run: `lineages` by branch; `train` rows (branch, first
  update, stop, mean loss); `evals` (branch, step, loss); `manifest` entries of the
  decayed checkpoints; `eval_batches` each evaluation averages; `main_saves`: the steps
  where main is saved (a decay after the fact can start there)."""
  workdir: str
  config: object
  lineages: dict[str, Lineage]
  train: list[tuple[str, int, int, float]]
  evals: list[tuple[str, int, float]]
  decayed: list[dict]
  eval_batches: int
  main_saves: tuple[int, ...] = ()

  @property
  def reference_lr(self) -> float:
    """The LR unit of the laws: the largest LR any lineage trained at."""
    return max(float(line.lr.max()) for line in self.lineages.values() if line.end)


def load(workdir) -> RunCurves:
  """The curves of the run in `workdir`. ConfigError (exit 2) for a non-finite loss."""
  from wsdjax import checkpoint as ckpt
  from wsdjax import config as config_lib
  from wsdjax.analysis import tree_listing
  cfg = config_lib.load_run_config(workdir)
  tree_listing.require_checkpoints(workdir)
  with ckpt.CheckpointTree(workdir, read_only=True) as tree:
    manifest = tree.manifest()
  plan = plan_lib.make_plan(cfg.schedule)
  lineages = plan_lineages(plan, extra_segments(manifest))
  train, evals = _read_log(workdir, lineages)
  for e in manifest:
    if e.get("eval_loss") is not None and e["branch"] in lineages and not e.get("merged"):
      evals[(e["branch"], int(e["step"]))] = float(e["eval_loss"])
  decayed = sorted((e for e in manifest if e.get("decayed") and e["branch"] in lineages
                    and e.get("eval_loss") is not None), key=lambda e: (e["step"], e["branch"]))
  curves = RunCurves(str(workdir), cfg, lineages, train,
                     [(b, s, v) for (b, s), v in sorted(evals.items())], decayed,
                     int(cfg.train.eval_batches),
                     tuple(sorted(e["step"] for e in manifest if e["branch"] == plan_lib.MAIN)))
  check_finite(curves)
  return curves


def _read_log(workdir, lineages: dict[str, Lineage]):
  """metrics.jsonl's train windows and eval rows (`plots.read_metrics`: last row per step)
  of the known branches' own steps."""
  from wsdjax.analysis import plots
  train, evals = [], {}
  for branch, series in plots.read_metrics(workdir).items():
    line = lineages.get(branch)
    if line is None:
      continue
    previous = 0
    for step, loss in series["train"]:
      if 0 < step <= line.end:
        first = line.window_start(previous, step)
        if step > first:
          train.append((branch, first, step, float(loss)))
        previous = step
    evals.update(((branch, step), float(loss)) for step, loss in series["eval"]
                 if 0 < step <= line.end)
  return train, evals


def check_finite(curves: RunCurves) -> None:
  """ConfigError naming the first non-finite train or eval loss of `curves`."""
  for branch, _, step, loss in curves.train:
    if not math.isfinite(loss):
      raise ConfigError("--workdir", f"metrics.jsonl logs a non-finite train loss "
                        f"({loss}) at {branch}@{step}; a loss law needs finite losses",
                        "fit a run without it, or resume the run from a save before it "
                        "with a lower schedule.peak_lr")
  for branch, step, loss in curves.evals:
    if not math.isfinite(loss):
      raise ConfigError("--workdir", f"the eval loss of {branch}@{step} is {loss}; a loss "
                        "law needs finite losses", "fit a run without it")
