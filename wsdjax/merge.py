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


def main(argv):
  """Check the flags, merge (`training.branching.merge`), print the merge's line."""
  from wsdjax.schedule import merge_weights
  from wsdjax.training import branching
  cli.run_workdir(argv, _WORKDIR.value)
  if _AT.value is None or _AT.value <= 0:
    cli.fail(f"--at: must be a saved main step, got {_AT.value}; e.g. --at 300")
  if _WINDOW.value is None or _WINDOW.value <= 0:
    cli.fail(f"--window: must be a positive number of steps, got {_WINDOW.value}; e.g. "
             "--window 60")
  weights = merge_weights.resolve(_WEIGHTS.value, "--weights")
  entry = branching.merge(_WORKDIR.value, _AT.value, _WINDOW.value, weights)
  parts = ", ".join(f"main@{s} x {w:.3f}" for s, w in zip(entry["sources"], entry["weights"]))
  print(f"{entry['branch']}: {weights} average of {parts}; eval loss "
        f"{entry['eval_loss']:.4f} (no training FLOPs)")


if __name__ == "__main__":
  cli.run(main)
