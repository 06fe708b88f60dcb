"""Compare config: WSD, WSD-S and cyclic cosine on the bundled corpus at equal compute.

`python -m wsdjax.compare --config configs/compare_small.py --workdir W` trains one run per
strategy (a ~0.56M-parameter byte-level model on the King James Bible, three budgets) in
W/<strategy>, then writes W/results.md, W/results.csv and the plots. 3 x 368 steps of
2048 tokens: ~530 CPU-seconds in all (under 10 minutes on 2 idle Zen 3 cores; 26 minutes
measured on 2 cores shared with other jobs). The run fields are those of
`wsdjax.config.base_config`; the `compare` section says which strategies run and how
budgets are matched.
"""

import ml_collections

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "compare_small"
  # Model: the `make run` model, 2 blocks of width 128, byte-level (256 ids), context 128.
  c.model.n_layers = 2
  c.model.d_model = 128
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.d_ff = 512
  c.model.seq_len = 128
  # Data: the bundled corpus, bytes; 16 sequences x 128 tokens = 2048 tokens per step.
  c.data.source = "bundled"
  c.data.tokenizer = "bytes"
  c.train.global_batch_size = 16
  c.train.log_every = 10
  # Eval main every 40 steps (and every decayed checkpoint) on the same 8 validation batches.
  c.train.eval_every = 40
  c.train.eval_batches = 8
  # Budgets B_i in steps; decays are 20% of each budget (d = 16, 32, 64).
  c.schedule.peak_lr = 3e-3
  c.schedule.warmup_steps = 30
  c.schedule.budgets = (80, 160, 320)
  c.schedule.decay_fraction = 0.2
  c.schedule.min_lr_ratio = 0.1
  # Few periodic saves: fork points and decayed checkpoints are always saved.
  c.checkpoint.every = 200
  c.checkpoint.keep = 1

  c.compare = ml_collections.ConfigDict()
  # Strategies run and compared, each in WORKDIR/<strategy> (wsd, wsd_s, cyclic_cosine).
  c.compare.strategies = ("wsd", "wsd_s", "cyclic_cosine")
  # Also one cosine run per budget, in WORKDIR/cosine-<B_i> (a from-scratch baseline).
  c.compare.cosine = False
  # Equal compute: cyclic cosine / cosine end budget i at C_i (the steps WSD and WSD-S have
  # run when their i-th checkpoint is ready) instead of B_i.
  c.compare.equal_compute = True
  # More runs, each a strategy with run-config overrides, shown as its own series:
  # (name, strategy, ((field, value), ...)), e.g. a cooldown recipe
  # ("WSD b2=0.99", "wsd", (("schedule.decay_overrides.b2", 0.99),)). Their merges and
  # EMA shadows (schedule.merge_window, train.ema_decays) get rows of their own too.
  c.compare.variants = ()
  return c
