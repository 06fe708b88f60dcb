"""The WSD-S paper's 0.6B model (Wen et al. 2024, "Understanding Warmup-Stable-Decay
Learning Rates: A River Valley Loss Landscape Perspective"), for a TPU pod slice.

LLaMA-style decoder, 24 layers, d_model 1536, 32 heads, d_ff 4096: 680M non-embedding parameters.
d_ff 4096 = 8/3 x d_model: this SwiGLU MLP (3 matrices) has the parameters of the
paper's 6144-wide 2-matrix MLP (3 x 4096 = 2 x 6144); 6144 here would make it 0.9B.
The rest of the setup (context 4096, 4M tokens per step, WSD-S at 12.5k/25k/50k steps,
FSDP, data) is the paper's, in `wsdjax.config.paper.paper_config`.
"""

from wsdjax.config.paper import paper_config


def get_config():
  # 24 blocks of width 1536, 32 heads of 48, SwiGLU hidden 4096. Each chip processes 2
  # sequences at once (8 micro-batches a step on a v5e-64, 16 on a v4-64), remat 'dots':
  # the fastest that fits a v5e-64, the smaller chip (docs/scale_out.md).
  return paper_config("paper_0.6b", n_layers=24, d_model=1536, n_heads=32, d_ff=4096,
                      chip_batch_size=2, remat="dots")
