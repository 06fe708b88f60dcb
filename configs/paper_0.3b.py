"""The WSD-S paper's 0.3B model (Wen et al. 2024, "Understanding Warmup-Stable-Decay
Learning Rates: A River Valley Loss Landscape Perspective"), for a TPU pod slice.

LLaMA-style decoder, 24 layers, d_model 1024, 16 heads, d_ff 2816: 308M non-embedding parameters.
d_ff follows LLaMA's 8/3 x d_model rounded up to 256 (4096 would make it 0.4B).
The rest of the setup (context 4096, 4M tokens per step, WSD-S at 12.5k/25k/50k steps,
FSDP, data) is the paper's, in `wsdjax.config.paper.paper_config`.
"""

from wsdjax.config.paper import paper_config


def get_config():
  # 24 blocks of width 1024, 16 heads of 64, SwiGLU hidden 2816. Each chip processes 2
  # sequences at once (8 micro-batches a step on a v5e-64, 16 on a v4-64), remat 'dots':
  # the fastest that fits a v5e-64, the smaller chip (docs/scale_out.md).
  return paper_config("paper_0.3b", n_layers=24, d_model=1024, n_heads=16, d_ff=2816,
                      chip_batch_size=2, remat="dots")
