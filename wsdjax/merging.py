"""Merged branches: the weighted average of the main branch's saves in a window, kept in
the checkpoint tree beside the real decays (a merge costs no training FLOPs).

`merge(workdir, at, window, weights)` averages the main states saved in (at - window, at]
with `schedules.merge_weights` (uniform = PMA; a decay shape = WSM's weights for that
decay), sharded as in training, and saves the result as branch `merge-<at>`: the averaged
params with main@at's step and optimizer state (so it restores, and resumes, like any
state), its sources and weights in the manifest entry, and its eval loss on the run's
fixed validation batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wsdjax import config as config_lib
from wsdjax import plan as plan_lib
from wsdjax import schedules
from wsdjax import trainer as trainer_lib
from wsdjax.checkpoint import nearest_steps
from wsdjax.plan import MAIN, StateRef


def sources_of(saved: list[int], at: int, window: int) -> list[int]:
  """The saved main steps the merge averages: those in (at - window, at]; ConfigError
  naming --at or --window when main@at is not saved or the window holds fewer than two."""
  if at not in saved:
    near = nearest_steps(saved, at)
    raise config_lib.ConfigError(
        "--at", f"main has no saved state at step {at}",
        f"use a saved main step, e.g. {', '.join(map(str, near))}" if near else
        "this run has no saved main states")
  sources = [s for s in saved if at - window < s <= at]
  if len(sources) < 2:
    raise config_lib.ConfigError(
        "--window", f"the window ({at - window}, {at}] holds {len(sources)} saved main "
        f"state(s) {sources}; a merge needs two or more", "widen --window, or keep more main "
        "saves (checkpoint.every, checkpoint.keep)")
  return sources


def merge(workdir: str, at: int, window: int, weights: str = "uniform") -> dict:
  """Average main's saves in (at - window, at] into branch merge-<at>; its entry."""
  cfg = config_lib.load_run_config(workdir)
  config_lib.validate(cfg, None)
  with trainer_lib.Trainer(cfg, workdir) as trainer:  # holds the workdir's writer lock
    tree = trainer.tree
    sources = sources_of(tree.steps(MAIN), at, window)
    ref = StateRef(plan_lib.merge_branch_name(at), at)
    if tree.steps(ref.branch):
      raise config_lib.ConfigError("--at", f"branch {ref.branch} already exists in {workdir}",
                                   "merge at another step")
    coefficients = schedules.merge_weights(weights, [s - (at - window) for s in sources],
                                           window)
    total = last = meta = None
    for step, c in zip(sources, coefficients):  # one source in memory at a time
      last, meta = tree.restore(StateRef(MAIN, step), trainer.steps.abstract)
      scaled = jax.tree.map(lambda p, c=c: p * jnp.asarray(c, p.dtype), last.params)
      total = scaled if total is None else jax.tree.map(jnp.add, total, scaled)
    merged = last.replace(params=total)
    loss = trainer.eval_loss(merged.params)
    entry = dict(tree.entry(StateRef(MAIN, at)), branch=ref.branch, parent=MAIN,
                 fork_step=at, decayed=False, fork_point=False, merged=True,
                 sources=sources, weights=coefficients, merge_weights=weights, window=window,
                 added_flops=0.0, eval_loss=loss)
    entry.pop("config_changes", None)
    tree.save(ref, merged, entry, {"data_positions": meta.get("data_positions"),
                                   "fingerprint": meta.get("fingerprint")})
    tree.wait()
    return tree.entry(ref)
