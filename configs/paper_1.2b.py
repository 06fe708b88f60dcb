"""The WSD-S paper's 1.2B model (Wen et al. 2024, "Understanding Warmup-Stable-Decay
Learning Rates: A River Valley Loss Landscape Perspective"), for a TPU pod slice.

LLaMA-style decoder, 24 layers, d_model 2048, 32 heads, d_ff 5632: 1233M non-embedding parameters.
d_ff follows LLaMA's 8/3 x d_model rounded up to 256.
The rest of the setup (context 4096, 4M tokens per step, WSD-S at 12.5k/25k/50k steps,
FSDP, data) is the paper's, in `wsdjax.config.paper.paper_config`.
"""

from wsdjax.config.paper import paper_config


def get_config():
  # 24 blocks of width 2048, 32 heads of 64, SwiGLU hidden 5632. Each chip processes 1
  # sequence at once (16 micro-batches a step on a v5e-64, 32 on a v4-64), remat 'dots',
  # the bfloat16 weights gathered once a step: the fastest that fits a v5e-64 with
  # collectives well below compute (docs/scale_out.md).
  return paper_config("paper_1.2b", n_layers=24, d_model=2048, n_heads=32, d_ff=5632,
                      chip_batch_size=1, remat="dots", gather_weights="once_per_step")
