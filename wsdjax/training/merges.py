"""Merged branches: the weighted average of the main branch's saves in a window, kept in
the checkpoint tree beside the real decays (a merge costs no training FLOPs).

`average_into_tree(tree, abstract, eval_loss, at, sources, window, weights)` (behind
`python -m wsdjax.merge`, and the plan's merges: the "done" hook `planned_hook`) averages
the main states saved in (at - window, at] with `merge_weights.weights` (uniform = PMA; a decay shape = WSM's weights for that
decay), sharded as in training, and saves the result as branch `merge-<at>`: the averaged
params with main@at's step and optimizer state (so it restores, and resumes, like any
state), its sources and weights in the manifest entry, and its eval loss on the run's
fixed validation batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wsdjax import config as config_lib
from wsdjax.schedule import plan as plan_lib
from wsdjax.schedule import merge_weights
from wsdjax.checkpoint import nearest_steps
from wsdjax.training import hooks
from wsdjax.schedule.plan import MAIN, StateRef


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


def average_into_tree(tree, abstract, eval_loss, at: int, sources: list[int], window: int,
                      weights: str) -> dict:
  """Save the `weights` average of main's saved `sources` (ending at `at`, inside a window
  of `window` steps) into `tree` as merge-<at>, with main@at's step and optimizer state
  (restored as `abstract`), evaluated with `eval_loss(params)`; its entry."""
  tree.wait()  # the sources' saves, if still being written
  ref = StateRef(plan_lib.merge_branch_name(at), at)
  coefficients = merge_weights.weights(weights, [s - (at - window) for s in sources],
                                       window)
  total = last = meta = None
  for step, c in zip(sources, coefficients):  # one source in memory at a time
    last, meta = tree.restore(StateRef(MAIN, step), abstract)
    scaled = jax.tree.map(lambda p, c=c: p * jnp.asarray(c, p.dtype), last.params)
    total = scaled if total is None else jax.tree.map(jnp.add, total, scaled)
  merged = last.replace(params=total)
  loss = eval_loss(merged.params)
  entry = dict(tree.entry(StateRef(MAIN, at)), branch=ref.branch, parent=MAIN,
               fork_step=at, decayed=False, fork_point=False, merged=True,
               sources=sources, weights=coefficients, merge_weights=weights, window=window,
               added_flops=0.0, eval_loss=loss)
  for field in ("config_changes", "ema_eval_loss"):  # main@at's, not the merge's
    entry.pop(field, None)
  tree.save(ref, merged, entry, {"data_positions": meta.get("data_positions"),
                                 "fingerprint": meta.get("fingerprint")})
  tree.wait()
  return tree.entry(ref)


def planned_hook(merge_sources: dict[int, list[int]], window: int, weights: str):
  """A "done" hook (`hooks`): the plan's merge at the end of a main segment
  (`merge_planned`); `merge_sources`: `plan.merge_sources(schedule)`."""
  def merge_at_end(ctx: hooks.Context) -> None:
    if ctx.branch == MAIN:
      merge_planned(ctx, merge_sources.get(ctx.step), window, weights)
  return merge_at_end


def merge_planned(ctx: hooks.Context, sources: list[int] | None, window: int,
                  weights: str) -> dict | None:
  """The plan's merge at budget `ctx.step` of `sources` (`schedule.merge_window`), once
  main@at is saved: written if missing, its entry; None when the plan merges nothing."""
  at = ctx.step
  ref = StateRef(plan_lib.merge_branch_name(at), at)
  if not sources:
    return None
  if ctx.tree.has(ref):
    return ctx.tree.entry(ref)
  ctx.wait_for_saves()  # the sources' saves, reported as they complete
  entry = average_into_tree(ctx.tree, ctx.abstract, ctx.eval_loss, at, sources, window,
                            weights)
  ctx.print(f"merged {ref.branch}: {weights} average of main@"
            f"{', '.join(map(str, sources))}, eval loss {entry['eval_loss']:.4f}")
  return entry


def average_rows(manifest: list[dict], steps) -> list[dict]:
  """Rows beside the decayed checkpoints' table: the merges and the EMA shadows evaluated
  at one of `steps` (the budgets and decayed checkpoints), by step then name."""
  from wsdjax.training import ema  # local: only the report needs it
  wanted = {int(b) for b in steps}
  rows = [e for e in manifest if e.get("merged")] + ema.shadow_entries(manifest)
  return sorted(({"budget": r["step"]} | r for r in rows if r["step"] in wanted),
                key=lambda r: (r["step"], r["branch"]))
