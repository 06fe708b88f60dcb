"""GPT-2 small's shape (nanoGPT's `gpt2` 124M) for GPUs: one command trains on every GPU of
a host, data-parallel:

  python -m wsdjax.train --config configs/gpt2_124m.py --workdir runs/gpt2

12 layers, d_model 768, 12 heads, MLP width 3072, context 1024, bfloat16 compute. On one
H100 80GB: 0.25 s a step, 520K tokens/s, 43% MFU, 50 GiB (docs/performance.md). The
MLP is SwiGLU (3 matrices, so 113M non-embedding params instead of GPT-2's 85M) and the
vocabulary is a 16k SentencePiece one trained on the bundled corpus (the most pieces the
King James Bible yields), tied to the LM head: 126M parameters in all.

Data: the bundled corpus (~1M tokens), so it runs out of the box; at 131K tokens per step
it sees the corpus many times and overfits well before the last budget: a throughput and
plumbing check, not a language model. For a real run use your text with GPT-2's own
tokenizer (50257 ids; model.vocab_size must equal the tokenizer's):
  --config.data.source=text --config.data.path='/data/owt/*.txt'
  --config.data.tokenizer=huggingface --config.data.tokenizer_path=/path/gpt2/tokenizer.json
  --config.model.vocab_size=50257
"""

from wsdjax.config import base_config


def get_config():
  c = base_config()
  c.name = "gpt2_124m"
  # Model: 12 blocks of width 768 (12 heads of 64), MLP hidden 3072, tied embeddings.
  c.model.n_layers = 12
  c.model.d_model = 768
  c.model.n_heads = 12
  c.model.n_kv_heads = 12
  c.model.d_ff = 3072
  # SentencePiece BPE vocabulary of 16384 pieces, trained on the corpus on first use.
  c.model.vocab_size = 16384
  c.data.source = "bundled"
  c.data.tokenizer = "sentencepiece"
  # Context of 1024 tokens (GPT-2's).
  c.model.seq_len = 1024
  # bfloat16 activations on GPU (params and optimizer state stay float32).
  c.model.dtype = "bfloat16"
  # A Python loop over the stacked blocks: the scan's stacked activations need 107 GiB at
  # this batch, more than an 80 GB H100 has (docs/performance.md).
  c.model.layer_loop = "unrolled"
  # 128 sequences x 1024 tokens = 131K tokens per step, split over the GPUs.
  c.train.global_batch_size = 128
  c.train.log_every = 20
  # Eval the main branch every 250 steps on 8 fixed validation batches.
  c.train.eval_every = 250
  c.train.eval_batches = 8
  # nanoGPT's AdamW: peak 6e-4, betas (0.9, 0.95), weight decay 0.1, clip 1.0.
  c.optimizer.weight_decay = 0.1
  c.schedule.peak_lr = 6e-4
  # WSD-S with budgets of 500, 1000, 2000 steps (decays of 10% of each), 100 warmup.
  c.schedule.name = "wsd_s"
  c.schedule.warmup_steps = 100
  c.schedule.budgets = (500, 1000, 2000)
  c.schedule.decay_fraction = 0.1
  c.checkpoint.every = 250
  # Data parallel over all GPUs of the host (params replicated: 124M fit easily).
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  return c
