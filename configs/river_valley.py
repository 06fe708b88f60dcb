"""River valley: the synthetic bigram task, a WSD run forking a decay branch at 6 points.

`python -m wsdjax.river_valley --config configs/river_valley.py --workdir W` trains it and
plots, per fork point, the main-branch loss, the decayed loss, their gap (the "hill"
component that high LR keeps and decay removes) and the distance of each to the chain's
entropy rate (the exact optimum); `python -m wsdjax.train` runs the same job without the
plot. A couple of minutes on 2 CPU cores.
"""

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "river_valley"
  # Model: 2 blocks of width 64 (4 heads, 2 kv heads), SwiGLU hidden 128, context 64.
  c.model.n_layers = 2
  c.model.d_model = 64
  c.model.n_heads = 4
  c.model.n_kv_heads = 2
  c.model.d_ff = 128
  c.model.seq_len = 64
  # Bigram chain over 64 tokens; its entropy rate is the best reachable loss.
  c.model.vocab_size = 64
  c.data.source = "bigram"
  # 16 sequences of 64 tokens per step.
  c.train.global_batch_size = 16
  c.train.log_every = 10
  # Eval main every 20 steps (and at every fork) on 4 fixed validation batches.
  c.train.eval_every = 20
  c.train.eval_batches = 4
  # WSD: main at a high peak LR; decay branches of 20 steps end at each budget.
  c.schedule.name = "wsd"
  c.schedule.peak_lr = 2e-2
  c.schedule.warmup_steps = 10
  c.schedule.budgets = (40, 80, 120, 160, 200, 240)
  c.schedule.decay_steps = 20
  c.schedule.min_lr_ratio = 0.02
  # Periodic main saves rarely (fork points and decayed states are always saved).
  c.checkpoint.every = 1000
  c.checkpoint.keep = 1
  return c
