"""Where a resumed run stands: `check_run_config` (before a run starts: validate, refuse a
workdir that holds another run; writes nothing), `newest_save_inside` (the one search for
where a segment resumes), `resume_ref` (the saved state the plan goes on from) and
`record_config_changes` (the fields changed on resume, recorded with
that state)."""

from __future__ import annotations

import jax
from etils import epath

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax.config import stored


def check_run_config(cfg, workdir: epath.Path, device_count: int | None = None) -> dict:
  """Validate `cfg` and refuse a workdir holding a different run; writes nothing. Returns
  the changes of fields that act only on future updates (`future_changes`)."""
  config_lib.validate(cfg, device_count or jax.device_count())
  path = workdir / config_lib.RUN_CONFIG
  if not path.exists():
    return {}
  old = config_lib.load_run_config(workdir)
  conflicts = stored.resume_conflicts(old, cfg)
  if conflicts:
    with ckpt.CheckpointTree(workdir, read_only=True) as tree:
      saves = tree.manifest()
    newest = max(saves, key=lambda e: e["step"], default=None)
    history = (f" (its saves up to {newest['branch']}@{newest['step']} were made under the "
               "old values)") if newest else ""
    raise config_lib.ConfigError(
        "workdir", f"{workdir} holds a run with a different config: {', '.join(conflicts)}"
        f"{history}",
        "use a new --workdir, or only extend schedule.budgets / change the LR, optimizer, "
        "logging or checkpoint fields")
  return stored.future_changes(old, cfg)


def newest_save_inside(tree, seg) -> int | None:
  """The step a run of segment `seg` resumes at: the newest save of its branch strictly
  inside it (start < step < end); None when there is none."""
  inside = [s for s in tree.steps(seg.branch) if seg.start < s < seg.end]
  return inside[-1] if inside else None


def resume_ref(plan, tree) -> ckpt.StateRef | None:
  """The saved state a run of `plan` goes on from: the newest save inside its first
  unfinished segment, else that segment's start state; None for a fresh or finished run."""
  for seg in plan.segments:
    if tree.has(seg.end_ref):
      continue
    step = newest_save_inside(tree, seg)
    return seg.init_from if step is None else ckpt.StateRef(seg.branch, step)
  return None


def record_config_changes(plan, tree, changes: dict) -> str | None:
  """Record fields changed on resume (`future_changes`) with the state the run goes on
  from (`CheckpointTree.record_config_change`); they act on the updates after it.
  Returns the line to print, None without changes."""
  if not changes:
    return None
  ref = resume_ref(plan, tree)
  tree.record_config_change(ref, changes)
  text = ", ".join(f"{f} {a!r} -> {b!r}" for f, (a, b) in changes.items())
  return f"config change{f' from {ref.branch}@{ref.step}' if ref else ''}: {text}"
