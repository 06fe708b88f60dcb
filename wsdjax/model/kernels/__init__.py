"""The model's kernels: each fast path beside the plain computation it must equal.

  attention   causal attention: XLA's, query-blocked (CPU), cuDNN (GPU), Pallas splash (TPU)
  fast_dense  dense layers with a faster weight gradient on XLA:CPU
  fused_loss  the LM head and cross-entropy in chunks, no [B, T, V] logits
  swiglu      the SwiGLU gate's backward as one expression or one Pallas kernel

Each module owns its `IMPLS` (the choices of its `model.*_impl` field) and `resolve`, which
turns 'auto' into the choice for the platform the step is compiled for.
"""
