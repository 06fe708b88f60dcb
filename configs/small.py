"""Small config: an 8.4M-parameter model (6.3M non-embedding + a tied 8k x 256 embedding,
52.7 MFLOPs/token) on the bundled corpus with a SentencePiece 8k vocabulary, WSD-S at
three budgets. The benchmark config: `python -m wsdjax.bench --config configs/small.py`.

A real CPU run: 258 steps of 4096 tokens (1.06M tokens), float32. On 2 idle Zen 3 cores a
step takes about 2.8-3.1 s (56-66% MFU against the measured matmul peak), so about 13
minutes; measure your host with the benchmark (docs/performance.md).
"""

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "small"
  # Model: 6 blocks of width 256 (4 heads of 64, plain multi-head), SwiGLU hidden 1024.
  c.model.n_layers = 6
  c.model.d_model = 256
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.d_ff = 1024
  # Stacked block parameters (few, large checkpoint leaves: a fast async save) run in an
  # unrolled loop: on XLA:CPU a lax.scan zero-fills and copies its stacked per-layer
  # activations every step (docs/performance.md); 6 blocks still compile in seconds.
  c.model.layer_loop = "unrolled"
  # SentencePiece BPE vocabulary of 8192 pieces, trained on the corpus on first use.
  c.model.vocab_size = 8192
  c.data.tokenizer = "sentencepiece"
  # Context of 256 tokens.
  c.model.seq_len = 256
  # 16 sequences x 256 tokens = 4096 tokens per step.
  c.train.global_batch_size = 16
  # Eval the main branch every 60 steps on 8 fixed validation batches.
  c.train.eval_every = 60
  c.train.eval_batches = 8
  # WSD-S: decays of 6, 12, 24 steps end at 60, 126, 258 (258 steps in all).
  c.schedule.name = "wsd_s"
  c.schedule.peak_lr = 2e-3
  c.schedule.warmup_steps = 30
  c.schedule.budgets = (60, 120, 240)
  return c
