"""`python -m wsdjax.merge --workdir W --at STEP --window K [--weights uniform]`: average
the main branch's saves in (STEP - K, STEP] into branch merge-<STEP> (see
wsdjax/training/merges.py); prints its sources, weights and eval loss. --weights: uniform (PMA) or
a decay shape (linear, cosine, 1-sqrt, exponential; exp for short), whose WSM weights
stand in for that decay over the window.
"""

from __future__ import annotations

from absl import flags

from wsdjax.runtime import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m wsdjax.train.")
_AT = flags.DEFINE_integer("at", None, "Saved main step the window ends at.")
_WINDOW = flags.DEFINE_integer("window", None, "Window length in steps: saves in (at-K, at].")
_WEIGHTS = flags.DEFINE_string("weights", "uniform", "uniform | linear | cosine | 1-sqrt | "
                               "exponential (exp).")


def merge(workdir: str, at: int, window: int, weights: str = "uniform") -> dict:
  """Average main's saves in (at - window, at] into branch merge-<at>; its entry."""
  from wsdjax import config as config_lib
  from wsdjax.training import merges as merging
  from wsdjax.schedule import plan as plan_lib
  from wsdjax.training import trainer as trainer_lib
  from wsdjax.schedule.plan import MAIN, StateRef
  cfg = config_lib.load_run_config(workdir)
  config_lib.validate(cfg, None)
  with trainer_lib.Trainer(cfg, workdir) as trainer:  # holds the workdir's writer lock
    sources = merging.sources_of(trainer.tree.steps(MAIN), at, window)
    ref = StateRef(plan_lib.merge_branch_name(at), at)
    if trainer.tree.steps(ref.branch):
      raise config_lib.ConfigError("--at", f"branch {ref.branch} already exists in {workdir}",
                                   "merge at another step")
    return merging.average_into_tree(trainer, at, sources, window, weights)


def main(argv):
  from wsdjax.schedule import merge_weights
  cli.run_workdir(argv, _WORKDIR.value)
  if _AT.value is None or _AT.value <= 0:
    cli.fail(f"--at: must be a saved main step, got {_AT.value}; e.g. --at 300")
  if _WINDOW.value is None or _WINDOW.value <= 0:
    cli.fail(f"--window: must be a positive number of steps, got {_WINDOW.value}; e.g. "
             "--window 60")
  weights = merge_weights.resolve(_WEIGHTS.value, "--weights")
  entry = merge(_WORKDIR.value, _AT.value, _WINDOW.value, weights)
  parts = ", ".join(f"main@{s} x {w:.3f}" for s, w in zip(entry["sources"], entry["weights"]))
  print(f"{entry['branch']}: {weights} average of {parts}; eval loss "
        f"{entry['eval_loss']:.4f} (no training FLOPs)")


if __name__ == "__main__":
  cli.run(main)
