"""Compare config at test size: `configs/compare_small.py`'s comparison on the synthetic
bigram task with a ~23K-parameter model: 3 x 44 steps, ~110 CPU-seconds in all, well under
3 minutes on 2 idle CPU cores (the tests run it, smaller still). Eval losses can be read
against the chain's entropy rate."""

import ml_collections

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "compare_tiny"
  # Model: 2 blocks of width 32 (4 heads of 8), SwiGLU hidden 64, context 32.
  c.model.n_layers = 2
  c.model.d_model = 32
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.d_ff = 64
  c.model.seq_len = 32
  # Data: a bigram chain over 64 tokens (vocab = chain size); 8 sequences per step.
  c.model.vocab_size = 64
  c.data.source = "bigram"
  c.train.global_batch_size = 8
  c.train.log_every = 4
  # Eval main every 8 steps and each decayed checkpoint on 2 fixed validation batches.
  c.train.eval_every = 8
  c.train.eval_batches = 2
  # Two budgets with 20% decays: WSD-S checkpoints at C = (20, 44).
  c.schedule.peak_lr = 1e-2
  c.schedule.warmup_steps = 4
  c.schedule.budgets = (20, 40)
  c.schedule.decay_fraction = 0.2
  # Synchronous saves (tiny states) and no periodic main saves beyond fork points.
  c.checkpoint.every = 1000
  c.checkpoint.keep = 1
  c.checkpoint.async_save = False

  c.compare = ml_collections.ConfigDict()
  # Strategies run and compared, each in WORKDIR/<strategy>.
  c.compare.strategies = ("wsd", "wsd_s", "cyclic_cosine")
  # Also one cosine run per budget, in WORKDIR/cosine-<B_i>.
  c.compare.cosine = False
  # Cyclic cosine / cosine end budget i at C_i, the compute WSD and WSD-S spend for it.
  c.compare.equal_compute = True
  # More runs, each a strategy with run-config overrides, shown as its own series:
  # (name, strategy, ((field, value), ...)), e.g. a cooldown recipe
  # ("WSD b2=0.99", "wsd", (("schedule.decay_overrides.b2", 0.99),)). Their merges and
  # EMA shadows (schedule.merge_window, train.ema_decays) get rows of their own too.
  c.compare.variants = ()
  return c
