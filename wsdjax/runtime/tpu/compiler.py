"""XLA options every TPU program of wsdjax is compiled with (`StepCache` passes them to
`jax.jit(...).lower(...).compile(compiler_options=...)`, so `wsdjax.aot` measures what a run
on the slice gets); each is libtpu's flag of the same name.

  xla_tpu_prefer_async_allgather_to_allreduce   gather FSDP-sharded weights with an
      all-gather. Without it XLA moves some of them (the attention projections on a v5e
      slice, whose gathered dimension is not the major one in the layout) as an all-reduce
      of a zero-padded copy: twice the bytes of the gather (`wsdjax.aot` measured it).
  xla_tpu_enable_async_collective_fusion_fuse_all_reduce
  xla_tpu_enable_async_collective_fusion_fuse_reduce_scatter   run the gradients'
      reductions as asynchronous collective fusions, as libtpu already runs the gathers
      (its defaults: async collective fusion, the latency-hiding scheduler and
      compute/collective overlap on): a layer's gradient is reduced while the backward
      pass of the layer before it computes.
"""

from __future__ import annotations

TPU_OPTIONS = {
    "xla_tpu_prefer_async_allgather_to_allreduce": True,
    "xla_tpu_enable_async_collective_fusion_fuse_all_reduce": True,
    "xla_tpu_enable_async_collective_fusion_fuse_reduce_scatter": True,
}


def compiler_options(platform: str | None) -> dict:
  """The options for programs compiled for `platform` ('tpu': TPU_OPTIONS; else none)."""
  return dict(TPU_OPTIONS) if platform == "tpu" else {}
