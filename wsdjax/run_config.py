"""The run config a workdir holds, and the rules of a resume: which fields may change
(MUTABLE_FIELDS; FUTURE_FIELDS, which act only on updates not yet made), the check before
a run starts (`check_run_config`, writes nothing) and the record once it has
(`record_run_config`).
"""

from __future__ import annotations

import jax
from etils import epath

from wsdjax import checkpoint as ckpt
from wsdjax import config as config_lib
from wsdjax import files


# Fields a resumed run may change without rewriting history.
MUTABLE_FIELDS = ("name", "train.log_every", "train.eval_every", "train.micro_batches",
                  "checkpoint.every", "checkpoint.keep", "checkpoint.async_save",
                  "checkpoint.compression", "checkpoint.checksums",
                  "data.prefetch", "mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.rules",
                  "model.remat", "model.dense_impl", "model.attention_impl",
                  "model.layer_loop", "model.loss_impl", "model.swiglu_impl")


# Fields that act only on updates not yet made: a resumed run may change them (the
# remedy after a NaN is a lower peak LR); the change is recorded in the manifest at the
# state the run resumes from. Saved states keep the values they were trained with.
FUTURE_FIELDS = ("schedule.peak_lr", "schedule.min_lr_ratio", "schedule.decay_shape",
                 "schedule.decay_overrides.b2", "schedule.decay_overrides.weight_decay",
                 "schedule.decay_overrides.grad_clip",
                 "optimizer.b1", "optimizer.b2", "optimizer.eps", "optimizer.weight_decay",
                 "optimizer.grad_clip",
                 # the weights of a mixture of token stores (its stores may not change)
                 "data.mixture")


def future_changes(old, new) -> dict[str, list]:
  """FUTURE_FIELDS whose value differs between `old` and `new`: field -> [old, new]."""
  old_flat, new_flat = config_lib.flatten(old), config_lib.flatten(new)
  return {f: [old_flat.get(f), new_flat.get(f)] for f in FUTURE_FIELDS
          if old_flat.get(f) != new_flat.get(f)}


def resume_conflicts(old, new) -> list[str]:
  """Fields whose change would rewrite the history of the run in the workdir.

  Allowed: the MUTABLE_FIELDS, the FUTURE_FIELDS (see `future_changes`; of data.mixture
  only the weights), and `schedule.budgets` growing by new, later budgets.
  """
  old_flat, new_flat = config_lib.flatten(old), config_lib.flatten(new)
  bad = []
  for field in sorted(set(old_flat) | set(new_flat)):
    a, b = old_flat.get(field), new_flat.get(field)
    if isinstance(a, list):
      a = tuple(a)
    if isinstance(b, list):
      b = tuple(b)
    if field == "data.mixture" and [m[0] for m in a or ()] != [m[0] for m in b or ()]:
      bad.append(f"{field} stores ({[m[0] for m in a or ()]!r} -> {[m[0] for m in b or ()]!r})")
      continue
    if field in MUTABLE_FIELDS or field in FUTURE_FIELDS or a == b:
      continue
    if field == "schedule.budgets" and tuple(b[:len(a)]) == tuple(a):
      continue
    bad.append(f"{field} ({a!r} -> {b!r})")
  return bad


def check_run_config(cfg, workdir: epath.Path, device_count: int | None = None) -> dict:
  """Validate `cfg` and refuse a workdir holding a different run; writes nothing. Returns
  the changes of fields that act only on future updates (`future_changes`)."""
  config_lib.validate(cfg, device_count or jax.device_count())
  path = workdir / config_lib.RUN_CONFIG
  if not path.exists():
    return {}
  old = config_lib.load_run_config(workdir)
  conflicts = resume_conflicts(old, cfg)
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
  return future_changes(old, cfg)


def record_run_config(cfg, workdir: epath.Path) -> None:
  """Write the run's config into its workdir (what resume and `branch` read back)."""
  path = workdir / config_lib.RUN_CONFIG
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(path, config_lib.to_json(cfg))


def resume_ref(plan, tree) -> ckpt.StateRef | None:
  """The saved state a run of `plan` goes on from: the newest save inside its first
  unfinished segment, else that segment's start state; None for a fresh or finished run."""
  for seg in plan.segments:
    if tree.has(seg.end_ref):
      continue
    inside = [s for s in tree.steps(seg.branch) if seg.start < s < seg.end]
    return ckpt.StateRef(seg.branch, inside[-1]) if inside else seg.init_from
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
