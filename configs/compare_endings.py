"""Compare config: how to end a run. Decays (linear and 1-sqrt, with and without a higher
cooldown beta2), merges of the constant-LR main branch and EMA shadows, at equal compute.

  python -m wsdjax.compare --config configs/compare_endings.py:bundled --workdir W --fit
  python -m wsdjax.compare --config configs/compare_endings.py:bigram --workdir W --fit

`bundled`: the compare_small model (0.56M params, bytes of the King James Bible, 2048
tokens a step); `bigram`: the compare_tiny model on the synthetic bigram chain (losses
read against its entropy rate). Four budgets each, so `--fit` fits three and holds the
largest out. Runs: WSD, constant LR (no decay at all: only its merges and shadows stand
for a cooldown), and three WSD variants; every run keeps EMA shadows and merges main's
window at every budget. docs/compare.md reports two seeds of each.
"""

import importlib.util
import os


def _sibling(name: str):
  """Another config file of this folder, as a module."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"wsdjax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# The cooldown recipe (Dremov et al. 2025): a higher Adam beta2 during the decays only.
RECIPE_B2 = 0.999


def get_config(data: str = "bundled"):
  if data not in ("bundled", "bigram"):
    raise ValueError(f"config: unknown data {data!r}; use compare_endings.py:bundled or :bigram")
  c = _sibling("compare_small" if data == "bundled" else "compare_tiny").get_config()
  c.name = f"compare_endings_{data}"
  # Budgets B_i in steps, decays 20% of each; warmup as long as the shortest decay.
  c.schedule.budgets = (40, 80, 120, 160)
  c.schedule.warmup_steps = 8
  c.schedule.decay_fraction = 0.2
  # Merges at every budget: main's saves in the last 16 steps, every 4 steps.
  c.schedule.merge_window = 16
  c.schedule.merge_every = 4
  c.schedule.merge_weights = "uniform"
  # Two EMA shadows: horizons of ~10 and ~50 steps.
  c.train.ema_decays = (0.9, 0.98)
  c.train.eval_every = 0  # evaluations at forks, budgets and merges only
  c.train.log_every = 2  # train-loss windows short enough for an 8-step decay's curve
  # Eval losses precise enough for differences of hundredths of a nat (and for a loss
  # law's held-out check): 64K bytes of the corpus, 16K tokens of the chain (compare_tiny's
  # own 2 batches, 512 tokens, scatter ~0.03 nats).
  c.train.eval_batches = 32 if data == "bundled" else 64
  c.checkpoint.every = 1000
  c.checkpoint.keep = 1

  c.compare.strategies = ("wsd", "constant")
  c.compare.cosine = False
  c.compare.equal_compute = True
  b2 = (("schedule.decay_overrides.b2", RECIPE_B2),)
  sqrt = (("schedule.decay_shape", "1-sqrt"),)
  c.compare.variants = (
      ("WSD 1-sqrt", "wsd", sqrt),
      (f"WSD b2={RECIPE_B2}", "wsd", b2),
      (f"WSD 1-sqrt b2={RECIPE_B2}", "wsd", sqrt + b2),
  )
  return c
