"""The WSD-S paper's 0.1B model (Wen et al. 2024, "Understanding Warmup-Stable-Decay
Learning Rates: A River Valley Loss Landscape Perspective"), for a TPU pod slice.

LLaMA-style decoder, 12 layers, d_model 768, 12 heads, d_ff 3072: 113M non-embedding parameters.
The rest of the setup (context 4096, 4M tokens per step, WSD-S at 12.5k/25k/50k steps,
FSDP, data) is the paper's, in `wsdjax.config.paper.paper_config`.
"""

from wsdjax.config.paper import paper_config


def get_config():
  # 12 blocks of width 768, 12 heads of 64, SwiGLU hidden 3072. Each chip processes 8
  # sequences at once (2 micro-batches a step on a v5e-64, 4 on a v4-64), remat 'dots':
  # the fastest that fits a v5e-64, the smaller chip (docs/scale_out.md).
  return paper_config("paper_0.1b", n_layers=12, d_model=768, n_heads=12, d_ff=3072,
                      chip_batch_size=8, remat="dots")
