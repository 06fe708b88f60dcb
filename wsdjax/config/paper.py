"""The WSD-S paper's pretraining setup (Wen et al. 2024, "Understanding Warmup-Stable-Decay
Learning Rates: A River Valley Loss Landscape Perspective") at any model size, for a TPU pod
slice; `configs/paper_*.py` pick the sizes.

Context 4096, 1024 sequences per step (4M tokens), bfloat16 compute, WSD-S at the paper's
three budgets of 50B, 100B and 200B tokens = 12.5k, 25k and 50k steps, each decay 10% of
its budget down to 0.1 x peak LR. Params and optimizer state are sharded over every
device (FSDP: mesh.fsdp = -1). See docs/scale_out.md and `launch/tpu_vm.sh`.

Data: a token store written once by `python -m wsdjax.prepare` (the paper trained on the
Pile; any JSONL or Parquet corpus will do), tokenized with a 32k SentencePiece model
(LLaMA's size) trained on a sample of it:
  python -m wsdjax.prepare --input 'gs://BUCKET/pile/*.jsonl.zst' \
      --output gs://BUCKET/store --tokenizer sentencepiece --vocab_size 32000
and train with --config.data.path=gs://BUCKET/store (README "Feed a pod").
"""

from wsdjax.config import base_config


def paper_config(name: str, n_layers: int, d_model: int, n_heads: int, d_ff: int,
                 chip_batch_size: int = 1, remat: str = "dots",
                 gather_weights: str = "each_use"):
  """The paper's setup (see module docstring) at one model size; `chip_batch_size` (the
  sequences a chip processes at once), `remat` and `gather_weights` are what fits a v5e-64
  fastest, the smaller chip (`python -m wsdjax.aot`, docs/scale_out.md)."""
  c = base_config()
  c.name = name
  # Model: n_layers blocks of width d_model, n_heads heads (no GQA), SwiGLU hidden d_ff.
  c.model.n_layers = n_layers
  c.model.d_model = d_model
  c.model.n_heads = n_heads
  c.model.n_kv_heads = n_heads
  c.model.d_ff = d_ff
  # 32k SentencePiece vocabulary; untied input embedding and LM head (as LLaMA).
  c.model.vocab_size = 32000
  c.model.tie_embeddings = False
  # Context of 4096 tokens.
  c.model.seq_len = 4096
  # bfloat16 activations (params stay float32); what each block keeps for the backward
  # pass (model.remat: 'dots' keeps the matmul and attention outputs, 'full' only its input).
  c.model.dtype = "bfloat16"
  c.model.remat = remat
  # A token store of python -m wsdjax.prepare (32k SentencePiece); point data.path at
  # yours: --config.data.path=gs://BUCKET/store.
  c.data.source = "tokens"
  c.data.path = "gs://YOUR_BUCKET/store"
  c.data.tokenizer = "sentencepiece"
  # 1024 sequences x 4096 tokens = 4M tokens per step, in micro-batches of chip_batch_size
  # sequences a chip: 1024 / (chips x chip_batch_size) of them, each slice its own count.
  c.train.global_batch_size = 1024
  c.train.chip_batch_size = chip_batch_size
  c.train.log_every = 50
  # Eval the main branch every 1000 steps on 8 fixed validation batches (32M tokens).
  c.train.eval_every = 1000
  c.train.eval_batches = 8
  # AdamW(0.9, 0.95), decoupled weight decay 0.1, clip 1.0.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0
  # WSD-S: budgets 50B / 100B / 200B tokens; decays of 10% to 0.1 x peak, linear.
  c.schedule.name = "wsd_s"
  c.schedule.peak_lr = 1e-3
  c.schedule.warmup_steps = 1000
  c.schedule.budgets = (12500, 25000, 50000)
  c.schedule.decay_fraction = 0.1
  c.schedule.min_lr_ratio = 0.1
  c.schedule.decay_shape = "linear"
  # Save main every 1000 steps (~4B tokens); keep the last 2 besides forks and decays.
  c.checkpoint.every = 1000
  c.checkpoint.keep = 2
  # FSDP: batch and params/optimizer state over all devices; no tensor parallelism. The
  # weights reach the matmuls in bfloat16, gathered before each use or once a step.
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.mesh.gather_weights = gather_weights
  return c
