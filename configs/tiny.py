"""Tiny config: a ~0.2M-parameter model on the synthetic bigram task, WSD-S with two
budgets; under 2 minutes on 2 CPU cores with the loss clearly falling toward the chain's
entropy rate. Used by the tests and as a smoke test of any install."""

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "tiny"
  # Model: 2 layers of width 64.
  c.model.n_layers = 2
  c.model.d_model = 64
  c.model.n_heads = 4
  c.model.n_kv_heads = 2
  c.model.d_ff = 128
  # Bigram chain over 64 tokens (vocab = chain size).
  c.model.vocab_size = 64
  c.model.seq_len = 64
  c.data.source = "bigram"
  # 16 sequences of 64 tokens per step.
  c.train.global_batch_size = 16
  c.train.log_every = 10
  c.train.eval_every = 0
  c.train.eval_batches = 2
  # WSD-S with two budgets: decays end at 40 and 84.
  c.schedule.name = "wsd_s"
  c.schedule.peak_lr = 1e-2
  c.schedule.warmup_steps = 5
  c.schedule.budgets = (40, 80)
  c.checkpoint.every = 20
  return c
